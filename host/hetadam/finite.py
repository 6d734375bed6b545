"""A fast test for NaN and Inf in float32 gradients.

One parallel pass over the bits: a float32 is NaN or Inf exactly when its
exponent field is all ones. Integer max-reductions vectorise, where a float
sum or `torch.isfinite(g).all()` costs more passes or temporaries.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

_EXPONENT = 0x7F800000


_PARALLEL_FROM = 1 << 18
"""Below this many elements one thread is faster than waking the others."""


def _max_exponent(bits: np.ndarray) -> int:
    acc = 0
    for i in numba.prange(bits.size):
        acc = max(acc, bits[i] & _EXPONENT)
    return acc


_max_exponent_serial = numba.njit(cache=True)(_max_exponent)
_max_exponent_parallel = numba.njit(parallel=True, cache=True)(_max_exponent)


def all_finite(t: torch.Tensor) -> bool:
    """True when the float32 tensor `t` holds no NaN and no Inf."""
    if not t.is_contiguous() or t.dtype != torch.float32:
        return bool(torch.isfinite(t).all())
    bits = t.detach().reshape(-1).numpy().view(np.int32)
    kernel = _max_exponent_parallel if bits.size >= _PARALLEL_FROM else _max_exponent_serial
    return kernel(bits) != _EXPONENT
