"""The flat element space of a param group, and how a step's segments are cut.

Each parameter of a group gets a block-aligned range of a flat index space
(so a `fixed` block never mixes two parameters, and the stochastic-rounding
LFSR sees one global index per element). Shards cover contiguous,
block-aligned ranges of that space; `segments` cuts the parameters and their
gradients into the views that fall inside one shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .backends.base import Segment


def round_up(n: int, block: int) -> int:
    return -(-n // block) * block


@dataclass(frozen=True)
class GroupLayout:
    """Offsets of a group's parameters in its flat space of `size` elements."""

    offsets: tuple[int, ...]
    numels: tuple[int, ...]
    size: int
    block: int

    @classmethod
    def of(cls, params: list[torch.Tensor], block: int) -> GroupLayout:
        offsets, numels, at = [], [], 0
        for p in params:
            offsets.append(at)
            numels.append(p.numel())
            at += round_up(p.numel(), block)
        return cls(tuple(offsets), tuple(numels), at, block)

    def flatten(self, params: list[torch.Tensor]) -> np.ndarray:
        """The parameters' current values over the flat space (float32, 0 in the padding)."""
        flat = np.zeros(self.size, np.float32)
        for p, off, numel in zip(params, self.offsets, self.numels, strict=True):
            flat[off : off + numel] = p.detach().reshape(-1).numpy()
        return flat

    def segments(self, params: list[torch.Tensor], steps: list[int], start: int, n: int) -> list[Segment]:
        """Views of the parameters and their gradients inside [start, start + n),
        with each parameter's step count for this update."""
        out = []
        for p, step, off, numel in zip(params, steps, self.offsets, self.numels, strict=True):
            lo, hi = max(off, start), min(off + numel, start + n)
            if lo >= hi:
                continue
            grad = None if p.grad is None else p.grad.detach().reshape(-1)[lo - off : hi - off]
            out.append(Segment(lo - start, p.detach().view(-1)[lo - off : hi - off], grad, step))
        return out
