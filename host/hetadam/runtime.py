"""Task partitioning and synchronisation: one step split across backends, as
one transaction.

A group's flat space is cut into block-aligned shards, one per backend, sized
in proportion to each backend's throughput: measured at start on a probe, then
refined from the step timings (`rebalance` moves state with its elements).

`StepRunner.run` runs the shards of every param group of a step as one
transaction. Every shard computes its share beside its committed state
(`Shard.transactional`), concurrently, on worker threads; only when all of
them succeeded are they committed, and the commit cannot fail (`Shard.commit`).
On any failure, a timeout or Ctrl-C, every shard is discarded, so parameters,
moments and step counts stay as they were, then the error propagates:
`BackendError` and `ValueError` as they are, `KeyboardInterrupt` and
`SystemExit` unchanged, anything else as a `BackendError` naming the backend.

Two refinements keep that promise cheap and true:
- in place: when no shard of the step can fail (`Shard.infallible`: torch's
  fused CPU kernel on checked inputs) and no timeout is set, the shards run in
  place on the calling thread inside the commit, as torch.optim does, with
  nothing to undo;
- fences: a shard that did not finish (a timeout, Ctrl-C while waiting) cannot
  be stopped, only given up. It computes into its pending state, never its
  committed one or the parameters, so it changes nothing when it ends; it is
  discarded then, and its next step waits for it first (`fence`).

The commit is a critical section: a Ctrl-C that arrives during it is delivered
once the commit (and the caller's bookkeeping, `on_commit`) is done, so a step
is never half committed; the interrupted step then counts as applied.
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any

import numpy as np
import torch

from . import state_io
from .backends.base import Backend, BackendError, Segment, Shard, StepHyper
from .layout import GroupLayout
from .numerics import FixedFormat

PROBE_ELEMENTS = {"rtl-sim": 1 << 8}
"""Elements of the start-up probe per backend (default 1 << 16): simulated RTL is slow."""
REBALANCE_TOLERANCE = 0.1
"""Re-size the shards when a share is this far (relative) from its throughput-proportional size."""

_probe_cache: dict[tuple[str, str, FixedFormat], float] = {}


def split_sizes(size: int, weights: Sequence[float], block: int) -> list[int]:
    """Block-aligned shares of `size` elements in proportion to `weights`."""
    blocks = -(-size // block)
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must have a positive sum, got {list(weights)}")
    cuts = [round(blocks * sum(weights[: i + 1]) / total) for i in range(len(weights))]
    starts = [0, *cuts[:-1]]
    sizes = [(c - s) * block for s, c in zip(starts, cuts, strict=True)]
    sizes[-1] -= blocks * block - size  # the last share ends at `size`
    return sizes


@dataclass
class ShardStats:
    """What one shard did in the last step."""

    backend: str
    elements: int
    seconds: float = 0.0
    wire_bytes: int = 0
    link_rate: float | None = None
    """Bytes per second the shard's link carries, when its backend knows (tcp://...?link=BITS_PER_S)."""

    @property
    def bytes_per_param(self) -> float:
        return self.wire_bytes / self.elements if self.elements else 0.0

    @property
    def link_utilisation(self) -> float | None:
        """The step's wire bytes over what the link carries in the step's time (None: rate unknown)."""
        if not self.link_rate or not self.seconds:
            return None
        return self.wire_bytes / (self.seconds * self.link_rate)


@dataclass
class ShardJob:
    """One shard's share of a step."""

    shard: Shard
    backend: str
    segments: list[Segment]
    hyper: StepHyper


@dataclass
class JobResult:
    saturated: int
    seconds: float


@dataclass
class Partition:
    """The shards of one param group and the backends they run on."""

    shards: list[Shard]
    backend_names: list[str]
    layout: GroupLayout | None = None
    stats: list[ShardStats] = field(default_factory=list)
    _seconds: list[list[float]] = field(default_factory=list, repr=False)

    def jobs(self, params: list[torch.Tensor], steps: list[int], hyper: StepHyper) -> list[ShardJob]:
        """The step's work on each shard that holds a parameter of the group."""
        assert self.layout is not None
        jobs = [
            ShardJob(shard, name, self.layout.segments(params, steps, shard.start, shard.n), hyper)
            for shard, name in zip(self.shards, self.backend_names, strict=True)
        ]
        return [job for job in jobs if job.segments]

    def record(self, jobs: list[ShardJob], results: list[JobResult]) -> None:
        """Keep what the jobs of this partition did, for step_stats and re-balancing."""
        self.stats = [
            ShardStats(job.backend, job.shard.n, r.seconds, job.shard.wire_bytes, job.shard.link_rate)
            for job, r in zip(jobs, results, strict=True)
        ]
        if len(self.shards) > 1:
            self._seconds.append([s.seconds for s in self.stats])

    def _pieces(self, params: list[torch.Tensor], which: Iterable[int]) -> list[list[tuple[int, int, np.ndarray]]]:
        """For each shard: (parameter index, offset in the shard, the parameter's
        float32 values there) of the parameters `which`."""
        assert self.layout is not None
        out: list[list[tuple[int, int, np.ndarray]]] = [[] for _ in self.shards]
        for i in which:
            off, numel = self.layout.offsets[i], self.layout.numels[i]
            flat = params[i].detach().reshape(-1).numpy()
            for pieces, shard in zip(out, self.shards, strict=True):
                lo, hi = max(off, shard.start), min(off + numel, shard.start + shard.n)
                if lo < hi:
                    pieces.append((i, lo - shard.start, flat[lo - off : hi - off]))
        return out

    def changed_params(self, params: list[torch.Tensor], which: Iterable[int]) -> list[int]:
        """The indices among `which` of the parameters whose values differ from
        the shards' resident copy: changed outside the optimizer since its last step."""
        changed: set[int] = set()
        for shard, pieces in zip(self.shards, self._pieces(params, which), strict=True):
            if pieces:
                flags = shard.changed_params([(off, x) for _, off, x in pieces])
                changed.update(i for (i, _, _), flag in zip(pieces, flags, strict=True) if flag)
        return sorted(changed)

    def reimport_params(self, params: list[torch.Tensor], which: Iterable[int]) -> None:
        """Make the tensors' values of the parameters `which` the shards' resident copy (moments kept)."""
        for shard, pieces in zip(self.shards, self._pieces(params, which), strict=True):
            if pieces:
                shard.reimport_params([(off, x) for _, off, x in pieces])

    def measured_weights(self) -> list[float] | None:
        """Elements per second of each shard over the steps since the last
        re-size (None before a few steps were seen)."""
        if len(self._seconds) < 3 or len(self._seconds[0]) != len(self.shards):
            return None
        seconds = np.median(np.array(self._seconds[1:]), axis=0)
        return [shard.n / max(s, 1e-9) for shard, s in zip(self.shards, seconds, strict=True)]

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


# ---- the transaction -----------------------------------------------------------------------------


class _Workers:
    """Daemon threads that run shard steps, started as needed and reused. Not a
    ThreadPoolExecutor: the interpreter joins its threads at exit, so one
    backend that never answers would keep the process from exiting."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[cf.Future, Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                self._threads += 1
                threading.Thread(target=self._serve, name=f"hetadam-{self._threads}", daemon=True).start()
        self._queue.put((future, fn, args))
        return future

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # KeyboardInterrupt and SystemExit too: the caller re-raises them
                    future.set_exception(exc)
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        """Let the idle threads end (a thread still in a step ends after it)."""
        with self._lock:
            for _ in range(self._threads):
                self._queue.put(None)
            self._threads = self._idle = 0


class _HeldInterrupt:
    """Holds SIGINT (Ctrl-C) from entry to exit and delivers it at exit: what
    runs inside is not cut short half-way. Only the main thread receives
    signals; elsewhere this does nothing."""

    def __init__(self) -> None:
        self._previous: Any = None
        self._held: tuple[int, FrameType | None] | None = None

    def __enter__(self) -> _HeldInterrupt:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not None:  # None: a handler not installed from Python, which cannot be restored
                self._previous = signal.signal(signal.SIGINT, self._hold)
        return self

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        self._held = (signum, frame)

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._previous is None:
            return
        previous, self._previous = self._previous, None
        signal.signal(signal.SIGINT, previous)
        if self._held is not None:
            held, self._held = self._held, None
            if callable(previous):
                previous(*held)  # Python's default handler raises KeyboardInterrupt here
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)


def _run_job(job: ShardJob) -> JobResult:
    t0 = time.perf_counter()
    try:
        saturated = job.shard.step(job.segments, job.hyper)
    except (BackendError, ValueError):
        raise
    except Exception as exc:
        raise BackendError(f"backend {job.backend!r} failed during the step, which was not applied: {exc}") from exc
    return JobResult(saturated, time.perf_counter() - t0)


class StepRunner:
    """Runs steps as transactions (see the module docstring); one per optimizer."""

    def __init__(self) -> None:
        self._workers = _Workers()
        self._abandoned: dict[Shard, tuple[str, cf.Future]] = {}
        """Shards whose step was given up while it still ran, with their backend and that step."""

    def busy(self, shards: Iterable[Shard]) -> bool:
        """Whether one of `shards` still runs a step that was given up."""
        return any(not self._abandoned[s][1].done() for s in shards if s in self._abandoned)

    def fence(self, shards: Iterable[Shard], timeout: float | None) -> None:
        """Wait (up to `timeout` each) for the given-up steps of `shards` to end,
        then discard them. Raises BackendError when one is still running."""
        for shard in shards:
            if shard not in self._abandoned:
                continue
            backend, future = self._abandoned[shard]
            done, _ = cf.wait([future], timeout)
            if not done:
                raise BackendError(
                    f"backend {backend!r} is still running an earlier step that timed out or was interrupted; "
                    "this step was not applied (retry once the backend answers, or close the optimizer)"
                )
            del self._abandoned[shard]
            shard.discard()

    def run(
        self, jobs: list[ShardJob], timeout: float | None, on_commit: Callable[[], None] | None = None
    ) -> list[JobResult]:
        """Run `jobs` as one transaction: every shard commits, then `on_commit()`
        runs (the caller's bookkeeping, inside the critical section), or nothing
        changes and the error propagates. `timeout`: seconds the shards may take."""
        self.fence((job.shard for job in jobs), timeout)
        in_place = timeout is None and all(job.shard.infallible for job in jobs)
        for job in jobs:
            job.shard.transactional = not in_place
        futures: list[cf.Future] = []
        held = _HeldInterrupt()
        try:
            if not in_place:
                for job in jobs:  # one by one: a Ctrl-C in between knows what it must give up
                    futures.append(self._workers.submit(_run_job, job))
                _, pending = cf.wait(futures, timeout)
                if pending:
                    late = sorted({j.backend for j, f in zip(jobs, futures, strict=True) if f in pending})
                    raise BackendError(
                        f"backend {', '.join(map(repr, late))} did not finish the step within {timeout} s; "
                        "the step was not applied"
                    )
                for future in futures:  # the first failure, in shard order
                    if future.exception() is not None:
                        raise future.exception()
            held.__enter__()
        except BaseException as exc:
            self._abort(jobs, futures)
            if isinstance(exc, Exception) and not isinstance(exc, (BackendError, ValueError)):
                raise BackendError(f"the step failed and was not applied: {exc}") from exc
            raise
        try:  # the commit: nothing here can fail, and Ctrl-C waits for its end
            results = [_run_job(job) for job in jobs] if in_place else [f.result() for f in futures]
            for job in jobs:
                job.shard.commit()
            if on_commit is not None:
                on_commit()
        finally:
            held.__exit__(None, None, None)
        return results

    def _abort(self, jobs: list[ShardJob], futures: list[cf.Future]) -> None:
        """Discard every shard of a failed step; give up those still running."""
        for i, job in enumerate(jobs):
            future = futures[i] if i < len(futures) else None
            if future is not None and not future.done() and not future.cancel():
                self._abandoned[job.shard] = (job.backend, future)
            else:
                job.shard.discard()

    def close(self) -> None:
        self._workers.close()


# ---- planning and re-balancing -------------------------------------------------------------------


def probe_throughput(name: str, backend: Backend, numerics: str, fmt: FixedFormat) -> float:
    """Elements per second of one step of `backend` on a probe (cached per process)."""
    key = (name, numerics, fmt)
    if key not in _probe_cache:
        n = PROBE_ELEMENTS.get(name, 1 << 16)
        param = torch.zeros(n)
        grad = torch.randn(n, generator=torch.Generator().manual_seed(0)) * 1e-3
        shard = backend.create_shard(0, n, numerics, fmt)
        try:
            shard.import_state({}, param.numpy())
            hyper = StepHyper(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
            seconds = []
            for _ in range(3):
                t0 = time.perf_counter()
                shard.step([Segment(0, param, grad)], hyper)
                seconds.append(time.perf_counter() - t0)
                shard.discard()
        finally:
            shard.close()
        _probe_cache[key] = n / max(min(seconds[1:]), 1e-9)
    return _probe_cache[key]


def _make_partition(
    sizes: Sequence[int], names: Sequence[str], backends: dict[str, Backend], numerics: str, fmt: FixedFormat
) -> Partition:
    """Shards of `sizes` elements, in order, on the backends `names`; an empty
    group still gets one. A shard that cannot be made closes the others."""
    shards: list[Shard] = []
    shard_names: list[str] = []
    start = 0
    try:
        for name, n in zip(names, sizes, strict=True):
            if n:
                shards.append(backends[name].create_shard(start, n, numerics, fmt))
                shard_names.append(name)
            start += n
        if not shards:
            shards, shard_names = [backends[names[0]].create_shard(0, 0, numerics, fmt)], list(names[:1])
    except BaseException:
        for shard in shards:
            shard.close()
        raise
    return Partition(shards, shard_names)


def plan_partition(
    size: int,
    backends: dict[str, Backend],
    numerics: str,
    fmt: FixedFormat,
    weights: Sequence[float] | None = None,
) -> Partition:
    """Shards for a group of `size` elements over `backends`, sized by `weights`
    (measured throughput when not given)."""
    names = list(backends)
    if len(names) == 1:
        return _make_partition([size], names, backends, numerics, fmt)
    if weights is None:
        weights = [probe_throughput(name, backends[name], numerics, fmt) for name in names]
    sizes = split_sizes(size, weights, fmt.block) if size else [0] * len(names)
    return _make_partition(sizes, names, backends, numerics, fmt)


def needs_rebalance(partition: Partition, weights: Sequence[float], block: int) -> bool:
    target = split_sizes(sum(s.n for s in partition.shards), weights, block)
    return any(
        abs(t - s.n) > REBALANCE_TOLERANCE * max(s.n, block) for t, s in zip(target, partition.shards, strict=True)
    )


def rebalance(
    partition: Partition,
    params_flat: np.ndarray,
    backends: dict[str, Backend],
    numerics: str,
    fmt: FixedFormat,
    weights: Sequence[float],
) -> Partition:
    """A partition sized by `weights` with the state moved along with its
    elements (exactly: fixed shards carry their exact arrays).

    The state goes to the host and the old shards are freed before the new ones
    are made, so a device never holds both. A re-balance that fails warns and
    returns the old partition (made again from the same state when it was
    already freed); it raises only when that fails too, as the backend is then gone.
    """
    layout = partition.layout
    assert layout is not None
    names = partition.backend_names
    try:
        merged = state_io.gather(partition.shards, layout.size, fmt.block)
    except Exception as exc:
        warnings.warn(f"re-balancing the shards failed ({exc}); they keep their sizes", RuntimeWarning, stacklevel=3)
        return partition
    old_sizes = [s.n for s in partition.shards]
    partition.close()
    chosen = {n: backends[n] for n in names}
    try:
        new = plan_partition(layout.size, chosen, numerics, fmt, weights)
        new.layout = layout
        try:
            state_io.import_group(new.shards, merged, params_flat, fmt.block)
        except BaseException:
            new.close()
            raise
    except Exception as exc:
        try:
            new = _make_partition(old_sizes, names, backends, numerics, fmt)
            new.layout = layout
            state_io.import_group(new.shards, merged, params_flat, fmt.block)
        except Exception as again:
            raise BackendError(
                f"the step was applied, but re-balancing its shards failed ({exc}) and the old shards could not "
                f"be made again ({again}): the optimizer state on {', '.join(names)} is lost; restore it from a "
                "state_dict() checkpoint into a new optimizer"
            ) from again
        warnings.warn(f"re-balancing the shards failed ({exc}); they keep their sizes", RuntimeWarning, stacklevel=3)
    return new
