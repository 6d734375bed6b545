"""The `cpu` backend: `fp32` through torch's fused CPU Adam kernel, `fixed`
through the compiled golden model (numerics/fast.py, in kernels.HostKernel).
State lives in flat contiguous buffers."""

from __future__ import annotations

import numpy as np
import torch

from ..kernels import HostKernel
from ..numerics import FixedFormat
from .base import Availability, Backend, FixedShard, Segment, Shard, StepHyper


class CpuFp32Shard(Shard):
    """torch.optim.Adam's fused CPU kernel, on the model's own parameter memory.

    The moments live in flat buffers; the kernel updates them and the parameters
    in place. When `transactional` is set (the step is shared with shards that
    may fail) the previous values are kept until commit."""

    STATE_NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, start: int, n: int) -> None:
        super().__init__(start, n)
        self.state = {k: torch.zeros(n, dtype=torch.float32) for k in self.STATE_NAMES[:2]}
        self._backup: list[tuple[torch.Tensor, torch.Tensor]] = []

    def step(self, segments: list[Segment], hyper: StepHyper) -> int:
        if hyper.amsgrad and "max_exp_avg_sq" not in self.state:
            self.state["max_exp_avg_sq"] = torch.zeros(self.n, dtype=torch.float32)
        live = [s for s in segments if s.grad is not None]

        def views(name: str) -> list[torch.Tensor]:
            return [self.state[name][s.offset : s.offset + s.param.numel()] for s in live]

        params = [s.param for s in live]
        moments = {name: views(name) for name in self.state}
        if self.transactional:
            touched = params + [t for ts in moments.values() for t in ts]
            self._backup = [(t, t.clone()) for t in touched]
        fused = torch._fused_adamw_ if hyper.decoupled_weight_decay else torch._fused_adam_
        fused(
            params,
            [s.grad for s in live],
            moments["exp_avg"],
            moments["exp_avg_sq"],
            moments.get("max_exp_avg_sq", []) if hyper.amsgrad else [],
            [torch.tensor(float(s.step or hyper.step)) for s in live],
            lr=hyper.lr,
            beta1=hyper.beta1,
            beta2=hyper.beta2,
            weight_decay=hyper.weight_decay,
            eps=hyper.eps,
            amsgrad=hyper.amsgrad,
            maximize=hyper.maximize,
        )
        return 0

    def commit(self) -> None:
        self._backup = []

    def discard(self) -> None:
        for t, saved in self._backup:
            t.copy_(saved)
        self._backup = []

    def export_state(self) -> dict[str, np.ndarray]:
        return {k: t.numpy().copy() for k, t in self.state.items()}

    def import_state(self, state: dict[str, np.ndarray], params: np.ndarray) -> None:
        for name in self.STATE_NAMES:
            if name in state:
                self.state[name] = torch.from_numpy(np.array(state[name], np.float32).reshape(self.n))
            elif name != "max_exp_avg_sq":
                self.state[name] = torch.zeros(self.n, dtype=torch.float32)


class CpuBackend(Backend):
    name = "cpu"
    numerics = ("fp32", "fixed")

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True)

    def create_shard(self, start: int, n: int, numerics: str, fmt: FixedFormat) -> Shard:
        if numerics == "fp32":
            return CpuFp32Shard(start, n)
        return FixedShard(start, n, HostKernel(n, fmt), fmt)
