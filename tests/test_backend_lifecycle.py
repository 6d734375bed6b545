"""Backends from start-up to close: a device or compiler that cannot build is
refused before it is used, with the reason and a remedy; `hetadam info` shows
every row however one backend's check fails; `auto` skips what it cannot
create; close() lets every device resource go."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest
import torch

from hetadam import HetAdam, backends
from hetadam.backends import Availability, Backend, BackendError, BackendUnavailable, opencl
from hetadam.cli import main

OPENCL = opencl.OpenCLBackend.availability()
needs_opencl = pytest.mark.skipif(not OPENCL.usable, reason=f"{OPENCL.reason}. {OPENCL.remedy}".strip())

BROKEN_PROBE = "__kernel void hetadam_probe(__global int *x) { x[0] = no_such_name; }"


@pytest.fixture
def broken_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every OpenCL device fails to build the probe, as PoCL 3.0 does on a CPU its LLVM does not know."""
    monkeypatch.setattr(opencl, "PROBE", BROKEN_PROBE)
    monkeypatch.setattr(opencl, "_BUILD_PROBLEMS", {})
    monkeypatch.delenv(opencl.ENV_PLATFORM, raising=False)
    monkeypatch.delenv(opencl.ENV_DEVICE, raising=False)


@needs_opencl
def test_a_device_that_builds_the_probe_has_no_build_problem() -> None:
    assert opencl.build_problem(opencl.select_device()) is None


@needs_opencl
@pytest.mark.usefixtures("broken_compiler")
def test_an_opencl_device_that_cannot_build_is_unusable_with_the_first_error_line_and_a_remedy() -> None:
    problem = opencl.build_problem(opencl.cl.get_platforms()[0].get_devices()[0])
    assert problem is not None and "no_such_name" in problem and "error" in problem.lower()
    assert "\n" not in problem
    availability = opencl.OpenCLBackend.availability()
    assert not availability.usable
    assert "can build a program" in availability.reason and problem in availability.reason
    assert availability.remedy == opencl.BUILD_REMEDY and "pocl-opencl-icd" in availability.remedy
    with pytest.raises(BackendUnavailable, match="no_such_name") as raised:
        opencl.OpenCLBackend()
    assert opencl.ENV_DEVICE in str(raised.value)
    with pytest.raises(opencl.DeviceCannotBuild):
        opencl.select_device(platform=0, device=0)


@needs_opencl
def test_an_opencl_device_that_cannot_be_opened_is_a_backend_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_context(device: object, fp64: object) -> None:
        raise opencl.cl.RuntimeError("clCreateContext failed: OUT_OF_HOST_MEMORY")

    monkeypatch.setattr(opencl, "_Device", no_context)
    with pytest.raises(BackendError, match=r"backend 'opencl' cannot open .*OUT_OF_HOST_MEMORY.*HETADAM_OPENCL_DEVICE"):
        opencl.OpenCLBackend()


@needs_opencl
@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
def test_closing_an_opencl_optimizer_releases_its_context(numerics: str) -> None:
    """The context's reference count, held by this test alone once the optimizer
    has closed: no queue, program, kernel or buffer of the optimizer keeps it."""
    model = torch.nn.Linear(50, 30)
    opt = HetAdam(model.parameters(), backend="opencl", numerics=numerics)
    model(torch.randn(4, 50)).sum().backward()
    opt.step()
    context = opt.backends["opencl"].dev.context
    held = opencl.cl.Context.from_int_ptr(context.int_ptr, retain=True)
    del context
    assert held.reference_count > 2  # the optimizer's queues, programs and buffers
    opt.close()
    gc.collect()
    assert held.reference_count == 1
    opt.close()  # closing twice does nothing


# ---- hls-csim: a compiler that cannot compile --------------------------------------------------------


def fake_compiler(directory: Path, script: str) -> str:
    path = directory / "fake-c++"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ('echo "fatal error: this compiler is broken" >&2; exit 1', "fatal error: this compiler is broken"),
        ("exit 0", "no library written"),
    ],
    ids=["fails", "writes nothing"],
)
def test_hls_csim_is_unusable_when_cxx_cannot_build_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, reason: str
) -> None:
    monkeypatch.setenv("CXX", fake_compiler(tmp_path, script))
    availability = backends.availability("hls-csim")
    assert not availability.usable
    assert "cannot build the HLS kernel" in availability.reason and reason in availability.reason
    assert "$CXX" in availability.remedy
    with pytest.raises(BackendUnavailable, match="cannot build the HLS kernel"):
        backends.create("hls-csim")


def test_an_unbalanced_quote_in_cxx_fails_the_hls_csim_row_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CXX", 'g++ "-O2')
    availability = backends.availability("hls-csim")
    assert not availability.usable and "not a valid command line" in availability.reason
    assert main(["info"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == set(backends.NAMES)
    assert rows["hls-csim"].split()[2] == "no" and "$CXX" in rows["hls-csim"]
    assert rows["cpu"].split()[2] == "yes"


def test_a_backend_whose_availability_check_raises_is_one_unusable_row(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> Availability:
        raise OSError("the driver crashed")

    monkeypatch.setattr(opencl.OpenCLBackend, "availability", classmethod(lambda cls: broken()))
    assert main(["info"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == set(backends.NAMES)
    assert rows["opencl"].split()[2] == "no" and "OSError: the driver crashed" in rows["opencl"]


# ---- auto ------------------------------------------------------------------------------------------


class FailingToStart(Backend):
    """Says it is usable, then fails to start, as a device that goes away between the two."""

    name = "failing"
    numerics = ("fp32", "fixed")

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True)

    def __init__(self) -> None:
        raise BackendError("backend 'failing': the device went away")

    def create_shard(self, start: int, n: int, numerics: str, fmt: object) -> None:
        raise AssertionError("never created")


@pytest.fixture
def failing_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backends._REGISTRY, "failing", (__name__, "FailingToStart"))
    monkeypatch.setattr(backends, "_SKIPPED", set())
    monkeypatch.setattr(backends, "NAMES", (*backends.NAMES, "failing"))
    for name in ("hls-csim", "rtl-sim", "opencl"):  # keep the test fast: cpu stands in for the usable ones
        monkeypatch.setitem(backends._REGISTRY, name, (__name__, "Unusable"))


class Unusable(FailingToStart):
    @classmethod
    def availability(cls) -> Availability:
        return Availability(False, "not under test")


@pytest.mark.usefixtures("failing_backend")
def test_create_usable_skips_a_backend_that_fails_to_start_and_says_why_once() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            created = backends.create_usable("fixed")
            assert list(created) == ["cpu"]
    skipped = [w for w in caught if "'failing'" in str(w.message)]
    assert len(skipped) == 1 and skipped[0].category is RuntimeWarning
    assert "the device went away" in str(skipped[0].message)


@pytest.mark.usefixtures("failing_backend")
def test_create_usable_keeps_only_backends_that_run_the_numerics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backends._REGISTRY, "cpu", (__name__, "Unusable"))
    with pytest.warns(RuntimeWarning, match="failing"), pytest.raises(BackendUnavailable, match="hetadam info"):
        backends.create_usable("fp32")
