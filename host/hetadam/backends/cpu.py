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
    """torch.optim.Adam's fused CPU kernel, on flat moment buffers.

    In place (not `transactional`: no shard of the step can fail) the kernel
    updates the moments and the model's parameters themselves, as torch does.
    Transactional, it updates copies: the moments into a pending state, the
    parameters into clones that `commit` copies into the tensors; until then
    the committed state and the tensors are untouched, so a step that was given
    up (a timeout) changes nothing when it ends."""

    STATE_NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    infallible = True

    def __init__(self, start: int, n: int) -> None:
        super().__init__(start, n)
        self.state = {k: torch.zeros(n, dtype=torch.float32) for k in self.STATE_NAMES[:2]}
        self._pending: dict[str, torch.Tensor] | None = None
        self._new_params: list[tuple[torch.Tensor, torch.Tensor]] = []
        """(parameter view, its new value) of a transactional step, for commit."""

    def step(self, segments: list[Segment], hyper: StepHyper) -> int:
        self._pending, self._new_params = None, []
        live = [s for s in segments if s.grad is not None]
        if not live:  # nothing to step (and the fused kernel refuses empty lists)
            return 0
        state = dict(self.state)
        if hyper.amsgrad and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = torch.zeros(self.n, dtype=torch.float32)
        if self.transactional:
            state = {name: t.clone() for name, t in state.items()}
            params = [s.param.clone() for s in live]
        else:
            params = [s.param for s in live]

        def views(name: str) -> list[torch.Tensor]:
            return [state[name][s.offset : s.offset + s.param.numel()] for s in live]

        fused = torch._fused_adamw_ if hyper.decoupled_weight_decay else torch._fused_adam_
        fused(
            params,
            [s.grad for s in live],
            views("exp_avg"),
            views("exp_avg_sq"),
            views("max_exp_avg_sq") if hyper.amsgrad else [],
            [torch.tensor(float(s.step or hyper.step)) for s in live],
            lr=hyper.lr,
            beta1=hyper.beta1,
            beta2=hyper.beta2,
            weight_decay=hyper.weight_decay,
            eps=hyper.eps,
            amsgrad=hyper.amsgrad,
            maximize=hyper.maximize,
        )
        if self.transactional:
            self._pending = state
            self._new_params = [(s.param, p) for s, p in zip(live, params, strict=True)]
        else:
            self.state = state
        return 0

    def commit(self) -> None:
        if self._pending is not None:
            self.state = self._pending
            for param, new in self._new_params:
                param.copy_(new)
        self._pending, self._new_params = None, []

    def discard(self) -> None:
        self._pending, self._new_params = None, []

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
