"""The `pynq` backend: the kernel in the programmable logic of a PYNQ board.

The overlay (a .bit with its .hwh beside it, as `make deploy` installs it) is
given as `bitfile=` or in $HETADAM_BITFILE; the format it was built for
(`make bitstream FORMAT=...`, default DEFAULT) as `kernel_format=` or in
$HETADAM_KERNEL_FORMAT, and shards of any other format are refused. The driver is the one every
driver-based backend shares (hetadam.driver); pynq is imported only when the
backend is used, so this module imports anywhere.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

from ..driver import AdamDriver, DriverError
from ..driver.kernel import DriverKernel
from ..driver.state import DEFAULT_CHUNK
from ..numerics import DEFAULT, FixedFormat
from .base import Availability, Backend, BackendError, FixedShard, Shard

BITFILE_ENV = "HETADAM_BITFILE"
KERNEL_FORMAT_ENV = "HETADAM_KERNEL_FORMAT"
REMEDY = (
    "Run on a PYNQ board (PYNQ 3.x image on PYNQ-Z2; 3.x or 4.x on ZCU104 and KV260) "
    "with the overlay that `make deploy BOARD=<board> HOST=<board address>` installs (docs/pynq.md)"
)


class PynqBackend(Backend):
    """Options: `bitfile` (the overlay), `interrupt` (wait on the kernel's
    interrupt line; None: when the block design wires it), `timeout`
    (seconds per kernel run), `chunk` (elements per kernel run and buffer),
    `kernel_format` (the format the overlay was built for: a FixedFormat or its
    name, e.g. "b32-g16-m8-s8"; default $HETADAM_KERNEL_FORMAT, else DEFAULT)."""

    name = "pynq"
    numerics = ("fixed",)

    def __init__(
        self,
        *,
        bitfile: str | Path | None = None,
        interrupt: bool | None = None,
        timeout: float = 10.0,
        chunk: int = DEFAULT_CHUNK,
        download: bool = True,
        kernel_format: FixedFormat | str | None = None,
    ) -> None:
        kernel_format = kernel_format or os.environ.get(KERNEL_FORMAT_ENV) or DEFAULT
        self.kernel_format = FixedFormat.parse(kernel_format) if isinstance(kernel_format, str) else kernel_format
        bitfile = bitfile or os.environ.get(BITFILE_ENV)
        if not bitfile:
            raise BackendError(f"backend 'pynq': no overlay: pass bitfile= or set ${BITFILE_ENV}")
        from ..driver.pynq import PynqTransport

        try:
            self.transport = PynqTransport.from_overlay(bitfile, download=download)
            use_irq = self.transport.interrupts if interrupt is None else interrupt
            self.driver = AdamDriver(self.transport, interrupt=use_irq, timeout=timeout)
        except (DriverError, OSError, RuntimeError, ValueError) as exc:
            raise BackendError(f"backend 'pynq': cannot load the overlay {bitfile}: {exc}") from exc
        self.chunk = chunk

    @classmethod
    def availability(cls) -> Availability:
        if importlib.util.find_spec("pynq") is None:
            return Availability(False, "pynq is not installed", f"pip install 'hetadam[pynq]'. {REMEDY}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "No devices found, is the XRT environment sourced?"
                from pynq.pl_server import Device

                devices = Device.devices
        except Exception as exc:  # pynq raises a variety of errors off a board
            return Availability(False, f"pynq imports but cannot look for a device ({exc})", REMEDY)
        if not devices:
            return Availability(False, "pynq imports but finds no device (this is not a PYNQ board)", REMEDY)
        return Availability(True)

    def create_shard(self, start: int, n: int, numerics: str, fmt: FixedFormat) -> Shard:
        if numerics != "fixed":
            raise ValueError(f"backend {self.name!r} runs numerics='fixed' only, not {numerics!r}")
        if fmt.hardware_name != self.kernel_format.hardware_name:
            raise ValueError(
                f"backend {self.name!r}: the overlay implements the format {self.kernel_format.hardware_name}, not"
                f" {fmt.hardware_name}: build one with `make bitstream FORMAT={fmt.hardware_name}` and name it in"
                f" ${KERNEL_FORMAT_ENV}"
            )
        return FixedShard(start, n, DriverKernel(self.driver, n, fmt, backend=self.name, chunk=self.chunk), fmt)

    def close(self) -> None:
        self.transport.close()
