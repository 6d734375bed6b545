"""The backends under test, as data (like torch's OptimizerInfo).

`BACKENDS` lists each backend configuration once: its name, the numerics it
runs, how to make one and why it cannot run here (reason and remedy). A test
that holds for every backend takes `info` from `params_over_backends(...)` and
its backend from `backend_of(info)`:

    from backend_table import BackendInfo, backend_of, params_over_backends

    @pytest.mark.parametrize("info", params_over_backends("fixed"))
    def test_something(info: BackendInfo) -> None:
        shard = backend_of(info).create_shard(0, 100, "fixed", DEFAULT)

Backends are made once per session (per pytest-xdist worker); conftest.py
closes them at its end: an rtl-sim backend is a Verilator model and a
simulator process. (A module of its own, not conftest.py: test files import
it, and `import conftest` finds whichever conftest.py came first on sys.path.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hetadam import backends
from hetadam.backends.base import Availability, Backend, FixedShard, Shard
from hetadam.driver import AdamDriver
from hetadam.driver.fake import FakeTransport
from hetadam.driver.kernel import DriverKernel
from hetadam.numerics import FixedFormat

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_CACHE = ROOT / "build" / "golden"
"""Where the golden vectors are cached, keyed by the spec's hash (shared with sim/test_rtl.py)."""


class FakeDriverBackend(Backend):
    """The board's driver (hetadam.driver, as the pynq and rtl-sim backends use
    it) over FakeTransport, the golden-model double of the kernel's registers
    and memory: the driver's packing, chunking and ping-pong without a board."""

    name = "driver-fake"
    numerics = ("fixed",)

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self.transport = FakeTransport()
        self.driver = AdamDriver(self.transport, timeout=5.0)

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True)

    def create_shard(self, start: int, n: int, numerics: str, fmt: FixedFormat) -> Shard:
        if numerics != "fixed":
            raise ValueError(f"backend {self.name!r} runs numerics='fixed' only, not {numerics!r}")
        kernel = DriverKernel(self.driver, n, fmt, backend=self.name, chunk=self.chunk)
        return FixedShard(start, n, kernel, fmt)


def _registered(name: str) -> Callable[[], str | None]:
    """Why the registered backend `name` cannot run here, with its remedy (None: it can)."""

    def why() -> str | None:
        av = backends.availability(name)
        return None if av.usable else f"backend {name!r} is not usable here: {av.reason}. {av.remedy}".strip()

    return why


def _always() -> str | None:
    return None


@dataclass(frozen=True)
class BackendInfo:
    """One backend configuration under test.

    name: the test id (the registered name, or the name plus a variant).
    numerics: the numerics it runs.
    make: a new backend.
    skip_reason: why it cannot run here, with the remedy; None when it can.
    chunk: elements per kernel run at most (None: no chunking), so that a test
        can pick sizes that cross a chunk boundary.
    slow: each kernel run costs milliseconds or more (a simulator): keep its
        cases to a few hundred elements and a few steps.
    """

    name: str
    numerics: tuple[str, ...]
    make: Callable[[], Backend]
    skip_reason: Callable[[], str | None] = _always
    chunk: int | None = None
    slow: bool = False
    marks: tuple[pytest.MarkDecorator, ...] = field(default=())


def _opencl(**options: object) -> Backend:
    return backends.create("opencl", chunk=1000, **options)


BACKENDS: list[BackendInfo] = [
    BackendInfo("cpu", ("fp32", "fixed"), make=lambda: backends.create("cpu")),
    BackendInfo("opencl", ("fp32", "fixed"), make=_opencl, skip_reason=_registered("opencl"), chunk=1000),
    # the fixed kernel with integer arithmetic only, as on a device without fp64
    BackendInfo(
        "opencl-int", ("fixed",), make=lambda: _opencl(fp64=False), skip_reason=_registered("opencl"), chunk=1000
    ),
    BackendInfo("hls-csim", ("fixed",), make=lambda: backends.create("hls-csim"), skip_reason=_registered("hls-csim")),
    BackendInfo(
        "rtl-sim",
        ("fixed",),
        make=lambda: backends.create("rtl-sim", timeout=120.0, chunk=128),
        skip_reason=_registered("rtl-sim"),
        chunk=128,
    ),
    BackendInfo("driver-fake", ("fixed",), make=lambda: FakeDriverBackend(chunk=64), chunk=64),
]
BY_NAME = {info.name: info for info in BACKENDS}


_WHY: dict[str, str | None] = {}


def skip_reason(info: BackendInfo) -> str | None:
    """info.skip_reason(), asked once per process."""
    if info.name not in _WHY:
        _WHY[info.name] = info.skip_reason()
    return _WHY[info.name]


def params_over_backends(numerics: str | None = None, *, exclude: tuple[str, ...] = ()) -> list:
    """pytest.param(info) for every backend that runs `numerics` (None: any),
    skipped with its reason where it cannot run, with the backend's name as id."""
    out = []
    for info in BACKENDS:
        if info.name in exclude or (numerics is not None and numerics not in info.numerics):
            continue
        why = skip_reason(info)
        marks = [*info.marks, pytest.mark.skipif(why is not None, reason=why or "")]
        out.append(pytest.param(info, marks=marks, id=info.name))
    return out


def params_over_backends_and_numerics(*, exclude: tuple[str, ...] = ()) -> list:
    """pytest.param(info, numerics) for every backend and each numerics it runs, ids like 'opencl-fp32'."""
    return [
        pytest.param(p.values[0], numerics, marks=p.marks, id=f"{p.id}-{numerics}")
        for p in params_over_backends(exclude=exclude)
        for numerics in p.values[0].numerics
    ]


_MADE: dict[str, Backend] = {}


def backend_of(info: BackendInfo) -> Backend:
    """The session's backend of `info`, made on first use; closed at the end of the session."""
    if info.name not in _MADE:
        _MADE[info.name] = info.make()
    return _MADE[info.name]


def close_backends() -> None:
    """Close every backend backend_of made."""
    while _MADE:
        _, backend = _MADE.popitem()
        backend.close()
