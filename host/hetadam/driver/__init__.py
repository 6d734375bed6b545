"""One driver for the `hetadam_adam` kernel, on a board or in simulation.

The kernel (the HLS IP or the RTL IP: they share the interface) is programmed
through its AXI4-Lite registers (offsets from `hetadam.regmap`, the one source
of truth) and reads and writes four arrays in memory through AXI4 masters:

    p   int32[n]    ms  uint32[n] (M | S << 16)
    g   int16[n]    ex  uint32[nb] (eg | em << 8 | es << 16)

The driver only speaks to a `Transport`: 32-bit register reads and writes,
memory buffers that have a host view (a NumPy array) and a device address, and
cache maintenance between the two. A transport is PYNQ on a board
(driver/pynq.py), a socket to the RTL under Verilator and cocotb
(driver/sim.py), or a pure-Python double that applies the golden model
(driver/fake.py). Everything above the transport is the same code on all three.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .. import regmap
from ..numerics.scalars import StepScalars

U32 = 0xFFFF_FFFF


class DriverError(RuntimeError):
    """The kernel or its transport failed: a timeout, a lost connection, a protocol violation."""


@dataclass
class Buffer:
    """Memory the kernel can reach: `array` is the host view, `address` the bus
    address the kernel uses; `handle` is the transport's own object."""

    array: np.ndarray
    address: int
    handle: object = None


class Transport(ABC):
    """How the driver reaches the kernel. `interrupts` tells whether
    `wait_interrupt` works (the kernel's interrupt line is wired to us)."""

    name: str = ""
    interrupts: bool = False

    @abstractmethod
    def read32(self, offset: int) -> int:
        """Read the AXI4-Lite register at byte `offset`."""

    @abstractmethod
    def write32(self, offset: int, value: int) -> None:
        """Write the AXI4-Lite register at byte `offset`."""

    @abstractmethod
    def allocate(self, n: int, dtype: np.dtype | type) -> Buffer:
        """A zeroed buffer of n elements, physically contiguous on a board."""

    @abstractmethod
    def sync_to_device(self, buf: Buffer) -> None:
        """Make the host view's content visible to the kernel."""

    @abstractmethod
    def sync_from_device(self, buf: Buffer) -> None:
        """Make what the kernel wrote visible in the host view."""

    def wait_interrupt(self, timeout: float) -> bool:
        """Wait until the kernel's interrupt line is raised; False on timeout."""
        raise DriverError(f"transport {self.name!r} has no interrupt line: use polling")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection to the kernel."""


class AdamDriver:
    """Register-level control of one kernel: program, start, wait, read status.

    `interrupt=True` waits for ap_done on the interrupt line (GIE, IER, ISR as
    in Vitis HLS; ISR toggle-on-write or clear-on-read, see `_acknowledge`);
    otherwise ap_done is polled (it is clear-on-read). `timeout` bounds every
    wait, in seconds.
    """

    def __init__(self, transport: Transport, *, interrupt: bool = False, timeout: float = 30.0) -> None:
        if interrupt and not transport.interrupts:
            raise DriverError(f"transport {transport.name!r} has no interrupt line: use polling")
        self.transport = transport
        self.interrupt = interrupt
        self.timeout = timeout
        self.runs = 0
        transport.write32(regmap.GIE, 1 if interrupt else 0)
        transport.write32(regmap.IER, regmap.ISR_DONE if interrupt else 0)
        if interrupt:
            self._acknowledge(transport.read32(regmap.ISR))

    def write_args(self, n: int, idx0: int, sc: StepScalars, addresses: dict[str, int]) -> None:
        """Write the element count, the scalars and the four array addresses."""
        t = self.transport
        for name in regmap.POINTERS:
            if addresses[name] % regmap.BASE_ALIGN:
                raise DriverError(
                    f"the {name} buffer at 0x{addresses[name]:x} is not {regmap.BASE_ALIGN}-byte aligned: "
                    "the kernel's AXI masters read and write whole, aligned bus words"
                )
        values = {"n": n, "idx0": idx0, **sc.as_dict()}
        for name in regmap.SCALARS:
            t.write32(regmap.offset(name), values[name] & U32)
        for name in regmap.POINTERS:
            address = addresses[name]
            t.write32(regmap.offset(name), address & U32)
            t.write32(regmap.offset(name) + 4, (address >> 32) & U32)

    def start(self) -> None:
        ctrl = self.transport.read32(regmap.CTRL)
        if not ctrl & regmap.CTRL_AP_IDLE:
            raise DriverError(f"kernel is not idle (control register 0x{ctrl:02x}): a previous run did not finish")
        self.transport.write32(regmap.CTRL, regmap.CTRL_AP_START)

    def wait(self) -> None:
        """Wait for ap_done; raise DriverError after `timeout` seconds."""
        if self.interrupt:
            if not self.transport.wait_interrupt(self.timeout):
                raise DriverError(f"no interrupt from the kernel within {self.timeout:g} s")
            isr = self.transport.read32(regmap.ISR)
            if not isr & regmap.ISR_DONE:
                raise DriverError(f"interrupt raised without ap_done in the status register (ISR 0x{isr:x})")
            self._acknowledge(isr)
            self.transport.read32(regmap.CTRL)  # ap_done is clear-on-read
            return
        deadline = time.monotonic() + self.timeout
        while not self.transport.read32(regmap.CTRL) & regmap.CTRL_AP_DONE:
            if time.monotonic() > deadline:
                raise DriverError(f"kernel did not finish within {self.timeout:g} s (ap_done never set)")

    def sat_count(self) -> int:
        """Elements saturated in the last run (its valid bit is clear-on-read)."""
        sat = regmap.offset("sat_count")
        if not self.transport.read32(sat + 4) & 1:
            raise DriverError("sat_count is not valid after the run (its ap_vld bit is clear)")
        return self.transport.read32(sat)

    def run(self, n: int, idx0: int, sc: StepScalars, addresses: dict[str, int]) -> int:
        """One kernel run over n elements at `addresses`; returns sat_count."""
        self.write_args(n, idx0, sc, addresses)
        self.start()
        self.wait()
        self.runs += 1
        return self.sat_count()

    def _acknowledge(self, isr: int) -> None:
        """Clear the ISR bits `isr` just read, whichever mode the IP's ISR has (regmap.ISR_MODE):
        a clear-on-read ISR was cleared by that read, a toggle-on-write one still shows them and
        is cleared by writing them back. Only bits a second read still shows are written: a
        toggle would set a bit that is clear."""
        still = self.transport.read32(regmap.ISR) & isr if isr else 0
        if still:
            self.transport.write32(regmap.ISR, still)
