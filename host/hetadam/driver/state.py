"""`ResidentState`: the fixed state of n elements, resident in the kernel's buffers.

Layout. The shard's n elements are cut into pieces of at most `chunk`
elements (a multiple of the block size, so every piece starts on a block and
its ex words are its own); each piece has its own buffers, so arrays larger
than one buffer work, and each run of the kernel covers one piece with
idx0 = the piece's global index (the stochastic-rounding bits depend on it).

Two-phase steps. The kernel reads and writes p, ms and ex at the same address,
so every piece keeps two sets of state buffers, A and B: one holds the
committed state, the kernel runs on the other. A run first copies the
committed set into the pending one (8 bytes and 4/32 bytes an element, a
memcpy between two mapped buffers: on a Zynq the same DDR the kernel reads)
with this step's gradient exponents in the ex words, then runs the kernel on
the pending set. `commit` swaps the roles of the sets, `discard` forgets the
pending one. The kernel never writes the committed set, so a run that fails or
is killed mid-way leaves it intact. That copy is the price of the in-place
interface; it is the cheapest correct scheme short of separate output
pointers in the register map. The host views are the reference copy: they
are synced to the device before each run and back after it.

This module needs only NumPy (no torch): the board's smoke test uses it as
is; backends use it through `DriverKernel` (driver/kernel.py).
"""

from __future__ import annotations

import numpy as np

from ..numerics import DEFAULT, FixedFormat, FixedState
from ..numerics.convert import pack_ex, pack_ms, unpack_ex, unpack_ms
from ..numerics.formats import hardware_problem, n_blocks
from ..numerics.scalars import StepScalars
from . import AdamDriver, Buffer

DEFAULT_CHUNK = 1 << 20
"""Elements a piece holds at most by default: 18 MiB of buffers (two state sets and g)."""


class _StateSet:
    """The three state buffers of one piece."""

    def __init__(self, driver: AdamDriver, n: int, block: int) -> None:
        t = driver.transport
        self.p = t.allocate(n, np.int32)
        self.ms = t.allocate(n, np.uint32)
        self.ex = t.allocate(n_blocks(n, block), np.uint32)

    @property
    def buffers(self) -> tuple[Buffer, Buffer, Buffer]:
        return self.p, self.ms, self.ex


class _Piece:
    def __init__(self, driver: AdamDriver, lo: int, hi: int, block: int) -> None:
        self.lo, self.hi = lo, hi
        self.blo, self.bhi = lo // block, n_blocks(hi, block)
        self.sets = (_StateSet(driver, hi - lo, block), _StateSet(driver, hi - lo, block))


class ResidentState:
    """Upload, run (two-phase), commit, discard, download; see the module docstring.
    Methods follow `hetadam.backends.base.FixedKernel`; failures raise DriverError."""

    def __init__(self, driver: AdamDriver, n: int, fmt: FixedFormat = DEFAULT, *, chunk: int = DEFAULT_CHUNK) -> None:
        problem = hardware_problem(fmt)  # which format the kernel was built for, its backend knows
        if problem is not None:
            raise ValueError(f"no kernel implements the format {fmt.name}: {problem}")
        if chunk < fmt.block or chunk % fmt.block:
            raise ValueError(f"chunk={chunk} must be a positive multiple of the block size {fmt.block}")
        self.driver = driver
        self.n = n
        self.fmt = fmt
        self.pieces = [_Piece(driver, lo, min(lo + chunk, n), fmt.block) for lo in range(0, n, chunk)]
        self.g = driver.transport.allocate(max(min(n, chunk), 1), np.int16)
        self.cur = 0
        self.has_pending = False

    def _write(self, which: int, state: FixedState) -> None:
        for pc in self.pieces:
            s = pc.sets[which]
            s.p.array[:] = state.P[pc.lo : pc.hi]
            s.ms.array[:] = pack_ms(state.M[pc.lo : pc.hi], state.S[pc.lo : pc.hi])
            blocks = slice(pc.blo, pc.bhi)
            s.ex.array[:] = pack_ex(np.zeros(pc.bhi - pc.blo, np.int8), state.em[blocks], state.es[blocks])

    def upload(self, state: FixedState) -> None:
        self._write(self.cur, state)
        self.has_pending = False

    def download(self) -> FixedState:
        st = FixedState.zeros(self.n, self.fmt)
        for pc in self.pieces:
            s = pc.sets[self.cur]
            st.P[pc.lo : pc.hi] = s.p.array
            st.M[pc.lo : pc.hi], st.S[pc.lo : pc.hi] = unpack_ms(s.ms.array)
            _, st.em[pc.blo : pc.bhi], st.es[pc.blo : pc.bhi] = unpack_ex(s.ex.array)
        return st

    def run(self, G: np.ndarray, eg: np.ndarray, sc: StepScalars, idx0: int) -> int:
        self.has_pending = False
        t = self.driver.transport
        egb = eg.astype(np.int8).view(np.uint8).astype(np.uint32)
        sat = 0
        for pc in self.pieces:
            old, new = pc.sets[self.cur], pc.sets[1 - self.cur]
            new.p.array[:] = old.p.array
            new.ms.array[:] = old.ms.array
            new.ex.array[:] = (old.ex.array & 0x00FF_FF00) | egb[pc.blo : pc.bhi]
            self.g.array[: pc.hi - pc.lo] = G[pc.lo : pc.hi]
            for buf in (*new.buffers, self.g):
                t.sync_to_device(buf)
            addresses = {"p": new.p.address, "g": self.g.address, "ms": new.ms.address, "ex": new.ex.address}
            sat += self.driver.run(pc.hi - pc.lo, idx0 + pc.lo, sc, addresses)
            for buf in new.buffers:
                t.sync_from_device(buf)
        self.has_pending = True
        return sat

    def stage(self, state: FixedState) -> None:
        self._write(1 - self.cur, state)
        self.has_pending = True

    def commit(self) -> None:
        if self.has_pending:
            self.cur = 1 - self.cur
            self.has_pending = False

    def discard(self) -> None:
        self.has_pending = False

    def params(self) -> np.ndarray:
        return self._p_of(self.cur)

    def pending_params(self) -> np.ndarray:
        return self._p_of(1 - self.cur)

    def _p_of(self, which: int) -> np.ndarray:
        parts = [pc.sets[which].p.array for pc in self.pieces]
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)
