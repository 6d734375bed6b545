"""The reference for models in bfloat16 or float16: torch's fused AdamW on
float32 copies of the parameters, cast into them after each step (the recipe
of DeepSpeed ZeRO-Offload). A module of its own, as backend_table.py: test
files import it."""

from __future__ import annotations

from collections.abc import Iterable

import torch


class MasterAdamW(torch.optim.Optimizer):
    """torch.optim.AdamW(fused=True) over float32 masters of `params`.

    It takes torch.amp.GradScaler's contract of the fused optimizers: the loss
    scale and the found-inf flag GradScaler sets on it go to the fused kernel,
    which divides the (float32 copies of the) gradients by the scale and skips
    the step when an Inf was found."""

    _step_supports_amp_scaling = True

    def __init__(self, params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(list(params), {})
        self.params: list[torch.Tensor] = self.param_groups[0]["params"]
        self.masters = [p.detach().to("cpu", torch.float32).clone() for p in self.params]
        self.inner = torch.optim.AdamW(self.masters, lr=lr, weight_decay=weight_decay, fused=True)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for m, p in zip(self.masters, self.params, strict=True):
            m.grad = None if p.grad is None else p.grad.to("cpu", torch.float32)
        for key in ("grad_scale", "found_inf"):
            value = getattr(self, key, None)
            setattr(self.inner, key, None if value is None else value.to("cpu"))
        self.inner.step()
        for m, p in zip(self.masters, self.params, strict=True):
            p.copy_(m)
