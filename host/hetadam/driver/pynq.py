"""The transport on a PYNQ board: an overlay, its `hetadam_adam` IP, CMA buffers.

Import this module only on a board (it imports pynq, which finds no device
elsewhere). `HetAdamIP` is a `pynq.DefaultIP` driver bound to both kernels'
VLNVs, so `pynq.Overlay` hands it out for the HLS IP and for the RTL IP alike.
Works on PYNQ 3.x (PYNQ-Z2, ZCU104, KV260) and 4.x images.
"""

from __future__ import annotations

import asyncio
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


class PynqTransport(Transport):
    """Registers through the IP's MMIO, memory through `pynq.allocate`;
    interrupts when the IP's `interrupt` pin reaches the PS in the block design."""

    name = "pynq"

    def __init__(self, ip: HetAdamIP) -> None:
        self.ip = ip
        self.interrupts = ip.has_interrupt
        self.overlay: pynq.Overlay | None = None

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
        async def wait() -> None:
            await asyncio.wait_for(self.ip.interrupt.wait(), timeout)

        try:
            asyncio.run(wait())
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            return False
        return True

    def close(self) -> None:
        self.overlay = None
