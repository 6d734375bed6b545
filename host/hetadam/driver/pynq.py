"""The transport on a PYNQ board: an overlay, its `hetadam_adam` IP, CMA buffers.

Import this module only on a board (it imports pynq, which finds no device
elsewhere). `HetAdamIP` is a `pynq.DefaultIP` driver bound to both kernels'
VLNVs, so `pynq.Overlay` hands it out for the HLS IP and for the RTL IP alike.
Works on PYNQ 3.x (PYNQ-Z2, ZCU104, KV260) and 4.x images.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pynq

from .. import regmap
from . import Buffer, DriverError, Transport

VLNVS = [
    "hetadam.org:hls:hetadam_adam:1.0",  # the HLS IP as hw/hls/run_hls.tcl exports it
    "hetadam.org:rtl:hetadam_adam:1.0",  # the RTL IP as hw/boards/package_rtl.tcl packages it
    "xilinx.com:hls:hetadam_adam:1.0",  # the HLS IP exported with Vitis HLS's default vendor
]


class HetAdamIP(pynq.DefaultIP):
    """The `hetadam_adam` kernel's AXI4-Lite registers (offsets in hetadam.regmap)."""

    bindto = VLNVS

    @property
    def has_interrupt(self) -> bool:
        return getattr(self, "interrupt", None) is not None


def _current_loop() -> asyncio.AbstractEventLoop | None:
    """`asyncio.get_event_loop()`, where pynq's UioController registers; None when this thread has none."""
    try:
        return asyncio.get_event_loop()
    except RuntimeError:
        return None


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class PynqTransport(Transport):
    """Registers through the IP's MMIO, memory through `pynq.allocate`;
    interrupts when the IP's `interrupt` pin reaches the PS in the block design."""

    name = "pynq"

    def __init__(self, ip: HetAdamIP) -> None:
        self.ip = ip
        self.interrupts = ip.has_interrupt
        self.overlay: pynq.Overlay | None = None
        self.loop = _current_loop() if self.interrupts else None
        """The loop pynq registered the interrupt's reader on: the one current when
        the IP was created, so create the transport right after the IP, in its thread."""

    @classmethod
    def from_overlay(cls, bitfile: str | Path, *, download: bool = True) -> PynqTransport:
        """Load `bitfile` (its .hwh beside it) and take its hetadam_adam IP."""
        overlay = pynq.Overlay(str(bitfile), download=download)
        names = [name for name, ip in overlay.ip_dict.items() if ip.get("type") in VLNVS]
        if len(names) != 1:
            raise DriverError(f"{bitfile}: expected one {regmap.KERNEL_NAME} IP ({' or '.join(VLNVS)}), found {names}")
        ip = getattr(overlay, names[0])
        transport = cls(ip)
        transport.overlay = overlay
        return transport

    def read32(self, offset: int) -> int:
        return int(self.ip.read(offset))

    def write32(self, offset: int, value: int) -> None:
        self.ip.write(offset, int(value))

    def allocate(self, n: int, dtype: np.dtype | type) -> Buffer:
        buf = pynq.allocate(shape=(n,), dtype=dtype)
        buf[:] = 0
        return Buffer(buf, int(buf.device_address), buf)

    def sync_to_device(self, buf: Buffer) -> None:
        buf.handle.sync_to_device()

    def sync_from_device(self, buf: Buffer) -> None:
        buf.handle.sync_from_device()

    def wait_interrupt(self, timeout: float) -> bool:
        """Wait for the IP's interrupt on the event loop pynq delivers it on;
        poll the status register where that loop cannot run.

        pynq delivers an interrupt through a reader on the UIO device that
        `pynq.uio.UioController` adds to `asyncio.get_event_loop()` when the
        IP's `Interrupt` is created (with the IP object), and `Interrupt.wait`
        awaits an `asyncio.Event` that binds to the first loop it waits on. So
        the wait runs on that loop, `self.loop`, as pynq's own drivers do
        (`get_event_loop().run_until_complete`); a new loop (`asyncio.run`)
        would never see the reader, and would leave no current loop behind.

        When that loop cannot be run here, the wait polls for the run's end
        (`_done`). That is the case inside a running loop: a Jupyter cell
        runs inside the kernel's loop, which is also where the IP was created,
        and this synchronous call blocks it; a helper thread cannot run the
        reader either, since a loop runs in one thread at a time and its own
        thread is the one waiting. Polling costs a core for the run's duration,
        no more than the driver's polling mode does. pynq's drivers get by in
        Jupyter with nest_asyncio re-entering the running loop; this does not
        rely on it.
        """
        loop = self.loop
        if loop is None or loop.is_closed() or loop.is_running() or _in_running_loop():
            return self._poll_done(timeout)
        task = loop.create_task(self._wait_on_loop(timeout))
        try:
            return loop.run_until_complete(task)
        except Exception as exc:
            raise DriverError(f"waiting for the interrupt failed: {exc}") from exc
        except BaseException:  # Ctrl-C: the loop finishes the cancellation when it next runs
            task.cancel()
            raise

    async def _wait_on_loop(self, timeout: float) -> bool:
        """Until the run is done. A wake is only a hint, as in pynq's own drivers
        (`while not self.idle: await self._interrupt.wait()` in pynq/lib/dma.py):
        pynq acknowledges the AXI interrupt controller while the kernel's line is
        still high, so the controller keeps that interrupt pending and the next
        wait wakes at once, before its run is done."""

        async def until_done() -> None:
            while not self._done():
                await self.ip.interrupt.wait()

        try:
            await asyncio.wait_for(until_done(), timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            return False  # pynq's Interrupt keeps its event registered: the next wait sees a late interrupt
        return True

    def _poll_done(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._done():
            if time.monotonic() > deadline:
                return False
        return True

    def _done(self) -> bool:
        """ap_done in the control register, set with ISR's done bit when a run
        ends. It is read here rather than ISR, which may be clear-on-read (some
        Vitis HLS releases): the driver reads and acknowledges ISR after the
        wait, and needs ap_done no more (reading it clears it)."""
        return bool(self.read32(regmap.CTRL) & regmap.CTRL_AP_DONE)

    def close(self) -> None:
        self.overlay = None
