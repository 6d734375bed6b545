"""Task partitioning and synchronisation: one step split across backends.

A group's flat space is cut into block-aligned shards, one per backend, sized
in proportion to each backend's throughput: measured at start on a probe, then
refined from the step timings (`rebalance` moves state with its elements).
All shards of a step run concurrently; the step commits only when every shard
succeeded (the optimizer discards all of them otherwise), so a failing or hung
backend leaves parameters and state as they were.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

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

    @property
    def bytes_per_param(self) -> float:
        return self.wire_bytes / self.elements if self.elements else 0.0


@dataclass
class Partition:
    """The shards of one param group and the backends they run on."""

    shards: list[Shard]
    backend_names: list[str]
    layout: GroupLayout | None = None
    stats: list[ShardStats] = field(default_factory=list)
    _pool: cf.ThreadPoolExecutor | None = field(default=None, repr=False)
    _seconds: list[list[float]] = field(default_factory=list, repr=False)

    def step(
        self,
        params: list[torch.Tensor],
        steps: list[int],
        hyper: StepHyper,
        stepped: list[Shard],
        timeout: float | None,
    ) -> int:
        """Run every shard's step (concurrently when there are several); append
        each started shard to `stepped` so the caller can commit or discard."""
        assert self.layout is not None
        jobs = [
            (shard, name, self.layout.segments(params, steps, shard.start, shard.n))
            for shard, name in zip(self.shards, self.backend_names, strict=True)
        ]
        jobs = [job for job in jobs if job[2]]
        if len(jobs) == 1 and timeout is None:
            shard, name, segments = jobs[0]
            shard.transactional = False
            stepped.append(shard)
            results = [(shard, name, _run(shard, name, segments, hyper))]
        else:
            if self._pool is None:
                self._pool = cf.ThreadPoolExecutor(max_workers=len(self.shards), thread_name_prefix="hetadam")
            futures = {}
            for shard, name, segments in jobs:
                shard.transactional = True
                stepped.append(shard)
                futures[self._pool.submit(_run, shard, name, segments, hyper)] = (shard, name)
            _, pending = cf.wait(futures, timeout=timeout)
            if pending:
                names = ", ".join(sorted(futures[f][1] for f in pending))
                raise BackendError(
                    f"backend {names} did not finish the step within {timeout} s; the step was not applied"
                )
            for f in futures:  # the first failure, in shard order
                if f.exception() is not None:
                    raise f.exception()
            results = [(*futures[f], f.result()) for f in futures]
        self.stats = [ShardStats(name, shard.n, seconds, shard.wire_bytes) for shard, name, (_, seconds) in results]
        if len(self.shards) > 1:
            self._seconds.append([s.seconds for s in self.stats])
        return sum(sat for _, _, (sat, _) in results)

    def measured_weights(self) -> list[float] | None:
        """Elements per second of each shard over the steps since the last
        re-size (None before a few steps were seen)."""
        if len(self._seconds) < 3 or len(self._seconds[0]) != len(self.shards):
            return None
        seconds = np.median(np.array(self._seconds[1:]), axis=0)
        return [shard.n / max(s, 1e-9) for shard, s in zip(self.shards, seconds, strict=True)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        for shard in self.shards:
            shard.close()


def _run(shard: Shard, name: str, segments: list[Segment], hyper: StepHyper) -> tuple[int, float]:
    t0 = time.perf_counter()
    try:
        sat = shard.step(segments, hyper)
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"backend {name!r} failed during the step, which was not applied: {exc}") from exc
    return sat, time.perf_counter() - t0


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
        return Partition([backends[names[0]].create_shard(0, size, numerics, fmt)], names)
    if weights is None:
        weights = [probe_throughput(name, backends[name], numerics, fmt) for name in names]
    sizes = split_sizes(size, weights, fmt.block) if size else [0] * len(names)
    shards, shard_names, start = [], [], 0
    for name, n in zip(names, sizes, strict=True):
        if n:
            shards.append(backends[name].create_shard(start, n, numerics, fmt))
            shard_names.append(name)
        start += n
    if not shards:  # an empty group still needs a home
        shards, shard_names = [backends[names[0]].create_shard(0, 0, numerics, fmt)], names[:1]
    return Partition(shards, shard_names)


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
    """A new partition sized by `weights` with the state moved along with its
    elements (exactly: fixed shards carry their exact arrays)."""
    layout = partition.layout
    assert layout is not None
    size = layout.size
    B = fmt.block
    merged: dict[str, np.ndarray] = {}
    for shard in partition.shards:
        for key, arr in shard.export_state().items():
            if key == "fixed_format":
                merged[key] = arr
                continue
            per_block = key in ("fixed_em", "fixed_es")
            total = -(-size // B) if per_block else size
            if key not in merged:
                merged[key] = np.zeros(total, arr.dtype)
            lo = shard.start // B if per_block else shard.start
            merged[key][lo : lo + arr.size] = arr
    names = partition.backend_names
    new = plan_partition(size, {n: backends[n] for n in names}, numerics, fmt, weights)
    new.layout = layout
    for shard in new.shards:
        lo, hi = shard.start, shard.start + shard.n
        part = {}
        for key, arr in merged.items():
            if key == "fixed_format":
                part[key] = arr
            elif key in ("fixed_em", "fixed_es"):
                part[key] = arr[lo // B : -(-hi // B)]
            else:
                part[key] = arr[lo:hi]
        shard.import_state(part, params_flat[lo:hi])
    partition.close()
    return new
