"""Task partitioning and synchronisation: one step split across backends.

A group's flat space is cut into block-aligned shards, one per backend, sized
by weight (measured throughput). All shards of a step run concurrently; the
step commits only when every shard succeeded (the optimizer discards all of
them otherwise), so a failing or hung backend leaves parameters and state as
they were.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .backends.base import Backend, BackendError, Shard, StepHyper
from .layout import GroupLayout
from .numerics import FixedFormat


def split_sizes(size: int, weights: Sequence[float], block: int) -> list[int]:
    """Block-aligned shares of `size` elements in proportion to `weights`."""
    blocks = size // block
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must have a positive sum, got {list(weights)}")
    cuts = [round(blocks * sum(weights[: i + 1]) / total) for i in range(len(weights))]
    starts = [0, *cuts[:-1]]
    return [(c - s) * block for s, c in zip(starts, cuts, strict=True)]


@dataclass
class Partition:
    """The shards of one param group and the backends they run on."""

    shards: list[Shard]
    backend_names: list[str]
    layout: GroupLayout | None = None
    _pool: cf.ThreadPoolExecutor | None = field(default=None, repr=False)

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
            (s, name, self.layout.segments(params, steps, s.start, s.n))
            for s, name in zip(self.shards, self.backend_names, strict=True)
        ]
        jobs = [j for j in jobs if j[2]]
        if len(jobs) == 1 and timeout is None:
            shard, name, segments = jobs[0]
            shard.transactional = False
            stepped.append(shard)
            return _run(shard, name, segments, hyper)
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(max_workers=len(self.shards), thread_name_prefix="hetadam")
        futures = {}
        for shard, name, segments in jobs:
            shard.transactional = True
            stepped.append(shard)
            futures[self._pool.submit(_run, shard, name, segments, hyper)] = name
        done, pending = cf.wait(futures, timeout=timeout)
        if pending:
            names = ", ".join(sorted(futures[f] for f in pending))
            raise BackendError(f"backend {names} did not finish the step within {timeout} s; the step was not applied")
        return sum(f.result() for f in done)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        for shard in self.shards:
            shard.close()


def _run(shard: Shard, name: str, segments: list, hyper: StepHyper) -> int:
    try:
        return shard.step(segments, hyper)
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"backend {name!r} failed during the step, which was not applied: {exc}") from exc


def plan_partition(
    size: int,
    backends: dict[str, Backend],
    numerics: str,
    fmt: FixedFormat,
    weights: Sequence[float] | None = None,
) -> Partition:
    """Shards for a group of `size` elements over `backends`, sized by `weights`
    (equal when not given)."""
    names = list(backends)
    sizes = split_sizes(size, weights or [1.0] * len(names), fmt.block) if size else [0] * len(names)
    shards, shard_names, start = [], [], 0
    for name, n in zip(names, sizes, strict=True):
        if n or len(names) == 1:
            shards.append(backends[name].create_shard(start, n, numerics, fmt))
            shard_names.append(name)
        start += n
    return Partition(shards, shard_names)
