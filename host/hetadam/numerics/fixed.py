"""The golden model of the `fixed` Adam update: the executable specification.

Integer arithmetic on NumPy int64 arrays, vectorised over blocks, bit-exact.
The HLS C++, the OpenCL C and the RTL implement exactly this. Formats are in
formats.py, the register scalars in scalars.py, the random bits in lfsr.py.

One step of one block (all values integers; ``>>`` is an arithmetic shift;
``rshr(x, k) = (x + 2**(k-1)) >> k`` rounds half up, ``rshr(x, 0) = x``):

 1. Working exponent  ew = max(eg, em, es, EPS_E).
 2. Align each mantissa to ew with WORK_FRAC = 16 bits:
        align(X, w, e) = rshr(X << (16 - w), min(ew - e, 31))
    Gw = align(G, g_bits-1, eg), Mw = align(M, m_bits-1, em),
    Sw = align(S, s_bits, es), Ew = align(EPS_M, 15, EPS_E); all below 2**16.
 3. First moment        m' = rshr(B1*Mw + (2**20 - B1)*Gw, 10)
 4. Root second moment  s' = isqrt(B2*Sw**2 + (2**20 - B2)*Gw**2)
    (isqrt: the exact floor of the square root). m' and s' carry EXTRA_FRAC = 10
    more fraction bits than the aligned inputs: 26 bits relative to ew.
 5. Ratio               r = sign(m') * min(floor(|m'| * 2**20 / (s' + (Ew << 10))), RMAX),
                        RMAX when s' + (Ew << 10) = 0 and m' != 0; r = 0 when m' = 0.
                        RMAX (the ratio_max register) is the bound that exact Adam
                        guarantees, (1-b1)/sqrt((1-b2)(1-b1**2/b2)): an element whose
                        moments underflowed cannot step further than exact Adam could.
 6. Parameter           P' = sat(P - rshr(P * LWD, 32) - round(ALPHA_M * r, ALPHA_SH, u_p))
 7. Storage             L = bit length of the block's max |m'| (resp. s');
                        em' = ew - 26 + L (EXP_ZERO when L = 0);
                        M' = m' << (m_bits-1 - L) when L <= m_bits-1,
                        else round(m', L - (m_bits-1), u_m), clamped to +-m_max; same for S'.

round(x, k, u) is round-to-nearest-even, or with stochastic rounding
(x + (k <= 32 ? u mod 2**k : u << (k - 32))) >> k. sat() clamps to +-(2**31-1).
An element is counted as saturated when its ratio or its parameter clamps.

Every product and sum above stays below 2**53 (the isqrt operand below
2**52, the quotient's dividend below 2**46), so IEEE double arithmetic computes steps 3-5 exactly; the CPU fast
path uses this (the floor of a correctly rounded double sqrt/division of such
integers is the exact integer floor). Error bounds of the whole update against
float64 Adam are derived and tested in docs/numerics.md and tests/.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .formats import (
    COEF_FRAC,
    DEFAULT,
    EPS_BITS,
    EXP_ZERO,
    EXTRA_FRAC,
    RATIO_FRAC,
    WORK_FRAC,
    FixedFormat,
    n_blocks,
)
from .lfsr import element_random
from .scalars import StepScalars


@dataclass
class FixedState:
    """The resident arrays of n elements: parameter, moments, block exponents."""

    P: np.ndarray  # int32[n]
    M: np.ndarray  # int16[n]
    em: np.ndarray  # int8[nb]
    S: np.ndarray  # uint16[n]
    es: np.ndarray  # int8[nb]

    @classmethod
    def zeros(cls, n: int, fmt: FixedFormat = DEFAULT) -> FixedState:
        nb = n_blocks(n, fmt.block)
        return cls(
            P=np.zeros(n, np.int32),
            M=np.zeros(n, np.int16),
            em=np.full(nb, EXP_ZERO, np.int8),
            S=np.zeros(n, np.uint16),
            es=np.full(nb, EXP_ZERO, np.int8),
        )

    def copy(self) -> FixedState:
        return FixedState(*(a.copy() for a in (self.P, self.M, self.em, self.S, self.es)))

    def equals(self, other: FixedState) -> bool:
        return all(
            np.array_equal(a, b)
            for a, b in zip(
                (self.P, self.M, self.em, self.S, self.es),
                (other.P, other.M, other.em, other.S, other.es),
                strict=True,
            )
        )


def rshr(x: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Shift right by k >= 0 rounding half up."""
    k = np.asarray(k, np.int64)
    half = np.where(k > 0, np.left_shift(np.int64(1), np.maximum(k - 1, 0)), 0)
    return (x + half) >> k


def round_shift(x: np.ndarray, k: np.ndarray | int, u: np.ndarray | None) -> np.ndarray:
    """Shift right by k >= 0: round to nearest even (u is None) or stochastically."""
    k = np.asarray(k, np.int64)
    one = np.int64(1)
    if u is None:
        half_m1 = np.where(k > 0, np.left_shift(one, np.maximum(k - 1, 0)) - 1, 0)
        odd = np.where(k > 0, (x >> k) & 1, 0)
        return (x + half_m1 + odd) >> k
    u = u.astype(np.int64)
    low = u & (np.left_shift(one, np.minimum(k, 32)) - 1)
    high = np.left_shift(u, np.maximum(k - 32, 0))
    return (x + np.where(k <= 32, low, high)) >> k


def isqrt(x: np.ndarray) -> np.ndarray:
    """Exact floor(sqrt(x)) of non-negative int64 values below 2**52."""
    r = np.floor(np.sqrt(x.astype(np.float64))).astype(np.int64)
    r = np.where(r * r > x, r - 1, r)
    return np.where((r + 1) * (r + 1) <= x, r + 1, r)


def bit_length(x: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values below 2**53."""
    frac_exp = np.frexp(x.astype(np.float64))[1]  # x = f * 2**e, f in [0.5, 1); 0 -> 0
    return frac_exp.astype(np.int64)


def _align(mant: np.ndarray, mag_bits: int, exp: np.ndarray, ew: np.ndarray) -> np.ndarray:
    d = np.minimum(ew - exp, 31)[:, None]
    return rshr(mant << (WORK_FRAC - mag_bits), d)


def _store(
    x: np.ndarray, ew: np.ndarray, mag_bits: int, lo: int, hi: int, u: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Block-quantise working values x[nb, B] to mantissas and exponents (step 7)."""
    length = bit_length(np.abs(x).max(axis=1))
    exp = np.where(length == 0, EXP_ZERO, ew - WORK_FRAC - EXTRA_FRAC + length)
    left = np.maximum(mag_bits - length, 0)[:, None]
    right = np.maximum(length - mag_bits, 0)[:, None]
    mant = np.where(right > 0, round_shift(x, right, u), x << left)
    return np.clip(mant, lo, hi), exp


def _blocks(a: np.ndarray, nb: int, block: int) -> np.ndarray:
    out = np.zeros(nb * block, np.int64)
    out[: a.size] = a
    return out.reshape(nb, block)


def adam_step(
    state: FixedState,
    G: np.ndarray,
    eg: np.ndarray,
    sc: StepScalars,
    idx0: int = 0,
    fmt: FixedFormat = DEFAULT,
) -> tuple[FixedState, int]:
    """One fixed-point Adam step over n elements whose first has global index idx0
    (a multiple of the block size). Returns the new state and the number of
    saturated elements; the input state is not modified."""
    n, B = state.P.size, fmt.block
    nb = n_blocks(n, B)
    if G.shape != (n,) or eg.shape != (nb,) or state.em.shape != (nb,) or state.es.shape != (nb,):
        raise ValueError(f"array shapes do not match n={n} elements in {nb} blocks of {B}")
    if idx0 % B:
        raise ValueError(f"idx0={idx0} must be a multiple of the block size {B}")

    P, Gi, Mi, Si = (_blocks(a, nb, B) for a in (state.P, G, state.M, state.S))
    egi, emi, esi = (a.astype(np.int64) for a in (eg, state.em, state.es))
    ew = np.maximum(np.maximum(egi, emi), np.maximum(esi, sc.eps_e))

    Gw = _align(Gi, fmt.g_bits - 1, egi, ew)
    Mw = _align(Mi, fmt.m_bits - 1, emi, ew)
    Sw = _align(Si, fmt.s_bits, esi, ew)
    Ew = _align(np.full((nb, 1), sc.eps_m, np.int64), EPS_BITS, np.full(nb, sc.eps_e, np.int64), ew)

    one = 1 << COEF_FRAC
    m_new = rshr(sc.beta1 * Mw + (one - sc.beta1) * Gw, COEF_FRAC - EXTRA_FRAC)
    s_new = isqrt(sc.beta2 * Sw * Sw + (one - sc.beta2) * Gw * Gw)

    denom = s_new + (Ew << EXTRA_FRAC)
    quot = (np.abs(m_new) << RATIO_FRAC) // np.maximum(denom, 1)
    ratio_sat = (m_new != 0) & ((denom == 0) | (quot > sc.ratio_max))
    quot = np.where(denom == 0, sc.ratio_max, np.minimum(quot, sc.ratio_max))
    ratio = np.sign(m_new) * quot

    if sc.stochastic:
        index = np.arange(idx0, idx0 + nb * B, dtype=np.uint64).reshape(nb, B)
        u_p, u_m, u_s = element_random(sc.seed, index)
    else:
        u_p = u_m = u_s = None

    decay = rshr(P * sc.lwd, 32)
    step = round_shift(sc.alpha_m * ratio, sc.alpha_sh, u_p)
    p_new = P - decay - step
    p_sat = np.abs(p_new) > fmt.p_max
    p_new = np.clip(p_new, -fmt.p_max, fmt.p_max)

    M_new, em_new = _store(m_new, ew, fmt.m_bits - 1, -fmt.m_max, fmt.m_max, u_m)
    S_new, es_new = _store(s_new, ew, fmt.s_bits, 0, fmt.s_max, u_s)

    saturated = int((ratio_sat | p_sat).reshape(-1)[:n].sum())
    new = FixedState(
        P=p_new.reshape(-1)[:n].astype(np.int32),
        M=M_new.reshape(-1)[:n].astype(np.int16),
        em=em_new.astype(np.int8),
        S=S_new.reshape(-1)[:n].astype(np.uint16),
        es=es_new.astype(np.int8),
    )
    return new, saturated
