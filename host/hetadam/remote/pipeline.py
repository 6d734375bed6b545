"""One slot's state on the server and its pipelined step.

A slot holds a client shard's n elements as one kernel per chunk (block-aligned,
`chunk` elements at most), so that a step runs chunk by chunk: the connection's
thread receives chunk k+1's gradient while the kernel thread runs chunk k and a
writer thread sends chunk k-1's parameters back. The pipeline holds at most
PIPELINE_DEPTH gradient chunks at once.
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
from dataclasses import dataclass

import numpy as np

from ..kernels import FixedKernel
from ..numerics import FixedFormat, StepScalars
from . import protocol as P

PIPELINE_DEPTH = 4
"""Gradient chunks a step holds at once on the server: one arriving, one
running, one whose parameters are leaving, one spare."""


@dataclass
class Slot:
    """The state of one client shard: a kernel per chunk."""

    n: int
    fmt: FixedFormat
    bounds: list[tuple[int, int]]
    kernels: list[FixedKernel]
    valid: bool = True
    """False after an upload failed part-way: only a new upload makes it usable."""
    last_step: int = 0
    """The highest step id seen: a new step must be above it."""
    pending: int | None = None
    committed: int = 0


class StepPipeline:
    """One step of one slot, pipelined: this thread receives GRAD frames, the
    kernel thread runs each chunk as it arrives, a writer thread sends each
    chunk's PARAMS as it is done. Any failure discards every chunk."""

    def __init__(
        self,
        ch: P.Channel,
        index: int,
        slot: Slot,
        sc: StepScalars,
        idx0: int,
        *,
        kernel_thread: cf.Executor,
        frame_timeout: float,
        backend: str,
    ) -> None:
        self.ch, self.index, self.slot, self.sc, self.idx0 = ch, index, slot, sc, idx0
        self.kernel_thread, self.frame_timeout, self.backend = kernel_thread, frame_timeout, backend
        size = P.grad_bytes(max((hi - lo for lo, hi in slot.bounds), default=0), slot.fmt.block)
        self.free: queue.Queue[np.ndarray] = queue.Queue()
        for _ in range(min(PIPELINE_DEPTH, len(slot.bounds))):
            self.free.put(np.empty(size, np.uint8))
        self.done: queue.Queue[tuple[int, cf.Future, np.ndarray] | None] = queue.Queue()
        self.failed: Exception | None = None
        """The first kernel failure (sent as ERROR)."""
        self.broken: BaseException | None = None
        """The first failure of the connection (ends it)."""

    def run(self) -> bool:
        """True when every chunk ran and its parameters were sent (then OK)."""
        writer = threading.Thread(target=self._write, name="hetadam-params", daemon=True)
        writer.start()
        try:
            for i, (lo, hi) in enumerate(self.slot.bounds):
                length = P.grad_bytes(hi - lo, self.slot.fmt.block)
                buf = self.free.get()  # before the frame begins: a slow kernel is not a stalled peer
                self.ch.expect({P.Kind.GRAD: -length}, idle=self.frame_timeout)
                self.ch.recv_into(buf[:length])
                slot_index, chunk = P.CHUNK.unpack(buf[: P.CHUNK.size].tobytes())
                if (slot_index, chunk) != (self.index, i):
                    raise P.ProtocolError(f"GRAD for slot {slot_index} chunk {chunk}, expected {self.index} chunk {i}")
                G = buf[P.CHUNK.size : P.CHUNK.size + 2 * (hi - lo)].view("<i2")
                eg = buf[P.CHUNK.size + 2 * (hi - lo) : length].view(np.int8)
                future = self.kernel_thread.submit(self._run_chunk, i, G, eg, lo)
                self.done.put((i, future, buf))
        except BaseException as exc:
            self.broken = exc
        self.done.put(None)
        writer.join()
        ok = self.failed is None and self.broken is None
        if not ok:
            for k in self.slot.kernels:
                self.kernel_thread.submit(k.discard).result()
        if self.broken is not None:
            raise self.broken
        return ok

    def _run_chunk(self, i: int, G: np.ndarray, eg: np.ndarray, lo: int) -> tuple[int, np.ndarray] | None:
        if self.failed is not None or self.broken is not None:
            return None
        kernel = self.slot.kernels[i]
        sat = kernel.run(G, eg, self.sc, self.idx0 + lo)
        return sat, kernel.pending_params()

    def _write(self) -> None:
        while (item := self.done.get()) is not None:
            i, future, buf = item
            try:
                result = future.result()
            except Exception as exc:
                if self.failed is None:
                    self.failed = exc
                    self._send_error(exc)
                result = None
            self.free.put(buf)
            if result is None or self.failed is not None or self.broken is not None:
                continue
            sat, params = result
            try:
                self.ch.send(P.Kind.PARAMS, P.PARAMS.pack(i, sat), params)
            except BaseException as exc:
                self.broken = self.broken or exc
                self.ch.shutdown()  # unblocks the reader
        if self.failed is None and self.broken is None:
            try:
                self.ch.send(P.Kind.OK, P.OK.pack(0))
            except BaseException as exc:
                self.broken = exc

    def _send_error(self, exc: Exception) -> None:
        try:
            self.ch.send_error(P.Code.KERNEL, f"{self.backend}: the step failed: {type(exc).__name__}: {exc}")
        except BaseException as err:
            self.broken = self.broken or err


def drain_grads(ch: P.Channel, index: int, slot: Slot, timeout: float) -> None:
    """Read and drop the GRAD frames of a step that was refused."""
    for lo, hi in slot.bounds:
        length = P.grad_bytes(hi - lo, slot.fmt.block)
        ch.expect({P.Kind.GRAD: -length}, idle=timeout)
        ch.recv_into(np.empty(length, np.uint8))
