"""The random bits of stochastic rounding: an index-seeded xorshift32 LFSR.

Each element draws its own bits, so the result does not depend on how the
elements are split into lanes, work-items, chunks or backends:

    x0    = seed_t ^ (i * 0x9E3779B9 mod 2**32)      i: the element's global index
    u_p   = xs(x0)     rounds the parameter update
    u_m   = xs(u_p)    rounds the stored first moment
    u_s   = xs(u_m)    rounds the stored root second moment

xs is Marsaglia's xorshift32 with shifts (13, 17, 5): x ^= x << 13;
x ^= x >> 17; x ^= x << 5 (mod 2**32), a maximal-length LFSR over GF(2)^32
(period 2**32 - 1; 0 maps to 0). In hardware it is three XOR layers of wiring;
the index product is an accumulator that adds 0x9E3779B9 per element.
seed_t = seed ^ (t * 0x85EBCA6B mod 2**32) is computed by the host per step.
"""

from __future__ import annotations

import numpy as np

INDEX_MUL = 0x9E3779B9
STEP_MUL = 0x85EBCA6B
MASK32 = 0xFFFFFFFF


def step_seed(seed: int, step: int) -> int:
    return (seed ^ (step * STEP_MUL)) & MASK32


def xorshift32(x: np.ndarray) -> np.ndarray:
    """One clock of the LFSR on uint64 arrays holding 32-bit values."""
    x = x ^ ((x << 13) & MASK32)
    x = x ^ (x >> 17)
    return x ^ ((x << 5) & MASK32)


def element_random(seed_t: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u_p, u_m, u_s) for elements with global indices `index`, as uint64 arrays."""
    x0 = np.uint64(seed_t) ^ ((index.astype(np.uint64) * np.uint64(INDEX_MUL)) & np.uint64(MASK32))
    u_p = xorshift32(x0)
    u_m = xorshift32(u_p)
    return u_p, u_m, xorshift32(u_m)
