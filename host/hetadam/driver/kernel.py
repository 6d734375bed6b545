"""`DriverKernel`: the `FixedKernel` of the driver-based backends (`pynq`, `rtl-sim`)."""

from __future__ import annotations

import numpy as np

from ..kernels import BackendError, FixedKernel
from ..numerics import FixedFormat
from ..numerics.scalars import StepScalars
from . import AdamDriver, DriverError
from .state import DEFAULT_CHUNK, ResidentState


class DriverKernel(ResidentState, FixedKernel):
    """State resident in the kernel's buffers (driver/state.py); a failure of
    the kernel or its transport raises BackendError naming the backend, and
    leaves the committed state as it was."""

    def __init__(
        self, driver: AdamDriver, n: int, fmt: FixedFormat, *, backend: str, chunk: int = DEFAULT_CHUNK
    ) -> None:
        self.backend = backend
        try:
            super().__init__(driver, n, fmt, chunk=chunk)
        except DriverError as exc:
            raise BackendError(f"backend {backend!r}: {exc}") from exc

    def run(self, G: np.ndarray, eg: np.ndarray, sc: StepScalars, idx0: int) -> int:
        try:
            return super().run(G, eg, sc, idx0)
        except DriverError as exc:
            raise BackendError(f"backend {self.backend!r}: {exc}") from exc


class OwningDriverKernel(DriverKernel):
    """A DriverKernel over a device of its own (a simulated kernel of `rtl-sim`): close() frees the device."""

    def close(self) -> None:
        self.driver.transport.close()
