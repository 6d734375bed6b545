"""The `fixed` kernel contract, importable without torch or numba.

A `FixedKernel` keeps the `fixed` state of n elements resident and runs the
golden-model update on it in two phases: `run` (or `stage`) computes a pending
state beside the committed one, `commit` makes it current, `discard` drops it.
Every `fixed` backend implements it; `FixedShard` does the host-side
conversions around it. The backend errors live here too, so that a command
that needs no torch (`hetadam serve`) can name them; backends/base.py
re-exports all of these.

This module and everything it imports (numerics, and the driver that builds on
it) must import without torch and numba: a PYNQ-Z2 (armv7) can install
neither, and `hetadam serve` (remote/server.py) runs these kernels there.
`HostKernel` is the golden model in host memory: compiled by numba where numba
imports (numerics/fast.py), else the NumPy specification itself (numerics/
fixed.py), bit for bit the same.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from .numerics import FixedFormat, FixedState, adam_step
from .numerics.scalars import StepScalars


class BackendUnavailable(RuntimeError):
    """A backend cannot run here; the message says why and how to get it."""


class BackendError(RuntimeError):
    """A backend failed during a step; the step was not applied."""


class FixedKernel(ABC):
    """A `fixed` kernel with resident state: what a fixed backend implements."""

    host_resident = False
    """True when the state lives in host memory (nothing crosses a wire)."""

    @abstractmethod
    def upload(self, state: FixedState) -> None:
        """Make `state` the committed state."""

    @abstractmethod
    def download(self) -> FixedState:
        """The committed state."""

    @abstractmethod
    def run(self, G: np.ndarray, eg: np.ndarray, sc: StepScalars, idx0: int) -> int:
        """One update into pending buffers (committed state untouched); returns sat_count."""

    @abstractmethod
    def stage(self, state: FixedState) -> None:
        """Make `state` the pending state, as if `run` had computed it."""

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def discard(self) -> None: ...

    @abstractmethod
    def params(self) -> np.ndarray:
        """The committed P as int32[n]."""

    @abstractmethod
    def pending_params(self) -> np.ndarray:
        """The P of the pending state (after `run` or `stage`, before `commit`) as
        int32[n]. FixedShard reads it in its step, so that its commit only swaps
        and writes floats and cannot fail; `hetadam serve` sends it back before
        the commit."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


StepInto = Callable[[FixedState, np.ndarray, np.ndarray, StepScalars, int, FixedState, FixedFormat], int]


def _spec_step_into(
    state: FixedState, G: np.ndarray, eg: np.ndarray, sc: StepScalars, idx0: int, out: FixedState, fmt: FixedFormat
) -> int:
    """numerics.fixed.adam_step writing into `out`, as numerics.fast.adam_step_into does."""
    new, sat = adam_step(state, G, eg, sc, idx0, fmt)
    for dst, src in zip((out.P, out.M, out.em, out.S, out.es), (new.P, new.M, new.em, new.S, new.es), strict=True):
        dst[:] = src
    return sat


@functools.cache
def step_into() -> StepInto:
    """The fastest bit-exact update this machine has: numba's, else the NumPy spec."""
    try:
        from .numerics.fast import adam_step_into
    except ImportError:  # no numba (a PYNQ board): the specification, slower, same bits
        return _spec_step_into
    return adam_step_into


class HostKernel(FixedKernel):
    """The golden model on host memory, double-buffered: `run` writes the
    pending buffers, `commit` swaps them with the committed ones."""

    host_resident = True

    def __init__(self, n: int, fmt: FixedFormat) -> None:
        self.fmt = fmt
        self.state = FixedState.zeros(n, fmt)
        self.pending = FixedState.zeros(n, fmt)
        self.has_pending = False

    def upload(self, state: FixedState) -> None:
        self.state = state.copy()
        self.has_pending = False

    def download(self) -> FixedState:
        return self.state.copy()

    def run(self, G: np.ndarray, eg: np.ndarray, sc: StepScalars, idx0: int) -> int:
        sat = step_into()(self.state, G, eg, sc, idx0, self.pending, self.fmt)
        self.has_pending = True
        return sat

    def stage(self, state: FixedState) -> None:
        self.pending = state.copy()
        self.has_pending = True

    def commit(self) -> None:
        if self.has_pending:
            self.state, self.pending = self.pending, self.state
            self.has_pending = False

    def discard(self) -> None:
        self.has_pending = False

    def params(self) -> np.ndarray:
        return self.state.P

    def pending_params(self) -> np.ndarray:
        return self.pending.P
