"""What `hetadam serve` runs its kernels on: one `KernelSource` per backend.

`cpu` (the golden model, compiled where numba imports), `pynq` (the
bitstream, through the driver) and `rtl-sim` (the RTL under Verilator, through
the same driver) import neither torch nor numba: a board serves the first two,
a development machine without torch the simulated RTL. `hls-csim` comes
through the host package's registered backend, which needs torch.

Every call into a source and its kernels happens on the server's one kernel
thread (server.py), so a driver's state, and pynq's event loop for interrupts,
belong to one thread.
"""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from ..driver import AdamDriver, DriverError
from ..driver.kernel import DriverKernel, OwningDriverKernel
from ..driver.sim import SimTransport
from ..hdl import verilator
from ..kernels import BackendError, FixedKernel, HostKernel
from ..numerics import DEFAULT, FixedFormat
from ..numerics.formats import hardware_problem, kernel_generics

SERVABLE = ("cpu", "pynq", "rtl-sim", "hls-csim")
BITFILE_ENV = "HETADAM_BITFILE"
"""The pynq backend's overlay variable (backends/pynq.py reads the same one)."""


class KernelSource(ABC):
    """Makes the kernels of one backend."""

    name: str = ""

    def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire the device (on the kernel thread, before the first kernel)."""

    @abstractmethod
    def new(self, n: int, fmt: FixedFormat) -> FixedKernel:
        """A kernel for n elements (its state is not yet defined: upload one)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device."""


class HostSource(KernelSource):
    name = "cpu"

    def new(self, n: int, fmt: FixedFormat) -> FixedKernel:
        return HostKernel(n, fmt)


class PynqSource(KernelSource):
    """The overlay's kernel through the board's driver (hetadam.driver)."""

    name = "pynq"

    def __init__(self, bitfile: str | None = None, *, interrupt: bool | None = None, timeout: float = 10.0) -> None:
        self.bitfile = bitfile or os.environ.get(BITFILE_ENV)
        if not self.bitfile:
            raise ValueError(f"serving 'pynq' needs the overlay: pass --bitfile or set ${BITFILE_ENV}")
        self.interrupt = interrupt
        self.timeout = timeout
        self.transport: Any = None
        self.driver: Any = None

    def open(self) -> None:
        from ..driver.pynq import PynqTransport  # pynq: only on a board

        # pynq registers the interrupt's reader on this thread's event loop
        asyncio.set_event_loop(asyncio.new_event_loop())
        self.transport = PynqTransport.from_overlay(self.bitfile)
        use_irq = self.transport.interrupts if self.interrupt is None else self.interrupt
        self.driver = AdamDriver(self.transport, interrupt=use_irq, timeout=self.timeout)

    def new(self, n: int, fmt: FixedFormat) -> FixedKernel:
        return DriverKernel(self.driver, n, fmt, backend=self.name)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class RtlSimSource(KernelSource):
    """The RTL kernel under Verilator, in-process (driver/sim.py), through the
    board's driver: what the `rtl-sim` backend runs, without torch. Every chunk
    of a slot gets a simulated kernel of its own, freed with its kernel. The
    library is built (or found in build/verilator/) when the server starts, so
    a missing Verilator or a build that fails stops it there."""

    name = "rtl-sim"
    lanes = 1
    """The RTL's LANES, as the boards build it (results do not depend on it)."""

    def __init__(self, *, timeout: float = 120.0) -> None:
        self.timeout = timeout

    def open(self) -> None:
        why = verilator.verilator_missing()
        if why is not None:
            raise BackendError(f"cannot serve {self.name!r}: {why}")
        self.library(DEFAULT)

    def library(self, fmt: FixedFormat) -> Path:
        """The simulated kernel's shared library for `fmt`'s widths, built on first use."""
        problem = hardware_problem(fmt)
        if problem is not None:
            raise ValueError(f"the RTL kernel cannot be built for the format {fmt.name}: {problem}")
        try:
            return verilator.device_library({"LANES": self.lanes, **kernel_generics(fmt)})
        except verilator.BuildError as exc:
            raise BackendError(f"backend {self.name!r} could not build the simulated kernel: {exc}") from exc

    def new(self, n: int, fmt: FixedFormat) -> FixedKernel:
        try:
            transport = SimTransport(self.library(fmt), timeout=self.timeout)
        except (DriverError, OSError) as exc:
            raise BackendError(f"backend {self.name!r} could not start the simulated kernel: {exc}") from exc
        try:
            return OwningDriverKernel(AdamDriver(transport, timeout=self.timeout), n, fmt, backend=self.name)
        except BaseException:
            transport.close()
            raise


class BackendSource(KernelSource):
    """A registered `fixed` backend of the host package (needs torch): the
    kernel of the shard it creates."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.backend: Any = None

    def open(self) -> None:
        from .. import backends

        self.backend = backends.create(self.name)

    def new(self, n: int, fmt: FixedFormat) -> FixedKernel:
        return self.backend.create_shard(0, n, "fixed", fmt).kernel

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def kernel_source(name: str, *, bitfile: str | None = None) -> KernelSource:
    """The source for `hetadam serve --backend NAME`."""
    if name == "cpu":
        return HostSource()
    if name == "pynq":
        return PynqSource(bitfile)
    if name == "rtl-sim":
        return RtlSimSource()
    if name in SERVABLE:
        return BackendSource(name)
    raise ValueError(f"cannot serve backend {name!r}: choose one of {', '.join(SERVABLE)}")
