"""Compiled fast paths of the `fixed` numerics (numba), bit-exact with the model.

fixed.py stays the specification; tests hold these to it bit for bit. The step
runs one fused, vectorised loop per block on all cores, in doubles: every value
is an integer below 2**53 (see fixed.py), so products, sums and power-of-two
scalings are exact, a round-half-up shift by k is floor(x * 2**-k + 1/2), a
round-to-nearest-even one is rint(x * 2**-k), and the floors of the correctly
rounded sqrt and division are the exact integer floors. The state is read once
and written once.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .fixed import FixedState
from .formats import (
    COEF_FRAC,
    DEFAULT,
    EPS_BITS,
    EXP_MAX,
    EXP_MIN,
    EXP_ZERO,
    EXTRA_FRAC,
    RATIO_FRAC,
    WORK_FRAC,
    FixedFormat,
    n_blocks,
)
from .lfsr import INDEX_MUL, MASK32
from .scalars import StepScalars

_CHUNK_BLOCKS = 64


# Every value of the step is an exact integer held in a double (below 2**53, see
# fixed.py) and no NaN or infinity occurs, so these flags change no result: they
# let the peak reductions vectorise and products fuse into (exact) FMAs.
_FAST = {"nnan", "ninf", "nsz", "contract"}

_POW2_MAX = 160
_POW2 = np.ldexp(1.0, np.arange(-_POW2_MAX, _POW2_MAX + 1))
"""2**k at index k + _POW2_MAX: exact scalings by table look-up, no libm call per block."""


@numba.njit(inline="always")
def _pow2(k: int) -> float:
    return _POW2[k + _POW2_MAX]


@numba.njit(inline="always")
def _align_scale(mag: int, d: int) -> float:
    """rshr(X << (16 - mag), min(d, 31)) = floor(X * scale + 1/2)."""
    return _pow2(WORK_FRAC - mag - min(d, 31))


@numba.njit(inline="always")
def _round(x: int, k: int, stochastic: bool, u: int) -> int:
    if k == 0:
        return x
    if stochastic:
        if k <= 32:
            return (x + (u & ((1 << k) - 1))) >> k
        return (x + (u << (k - 32))) >> k
    return (x + (1 << (k - 1)) - 1 + ((x >> k) & 1)) >> k


@numba.njit(inline="always")
def _xorshift(x: int) -> int:
    x ^= (x << 13) & MASK32
    x ^= x >> 17
    return x ^ ((x << 5) & MASK32)


@numba.njit(inline="always", fastmath=_FAST)
def _block(P, G, M, S, P_out, scales, sc_v, p_max, m_new, s_new, stochastic, index0):
    """Steps 2-6 of the spec for one block in doubles (the arrays are the block's
    slices: an index that numba knows to be non-negative keeps loads contiguous);
    m' and s' into m_new and s_new. Returns the saturated count and the bits of
    the peaks of |m'| and s' (as doubles)."""
    m_raw, s_raw = m_new.view(np.int64), s_new.view(np.int64)
    beta1, beta2, _, _, alpha_m, alpha_sh, ratio_max, lwd, seed, _ = sc_v
    sg, sm, ss, ew_eps = scales
    b1, c1 = float(beta1), float((1 << COEF_FRAC) - beta1)
    b2, c2 = float(beta2), float((1 << COEF_FRAC) - beta2)
    m_scale = _pow2(EXTRA_FRAC - COEF_FRAC)
    a_scale = _pow2(-alpha_sh)
    rmax = float(ratio_max)
    alpha = float(alpha_m)
    sat = 0
    peak_m = 0
    peak_s = 0
    for j in range(P.size):
        gw = np.floor(G[j] * sg + 0.5)
        mw = np.floor(M[j] * sm + 0.5)
        sw = np.floor(S[j] * ss + 0.5)
        m = np.floor((b1 * mw + c1 * gw) * m_scale + 0.5)
        s = np.floor(np.sqrt(b2 * sw * sw + c2 * gw * gw))
        m_new[j] = m
        s_new[j] = s
        # The peaks as integer maxima of the doubles' bits (a float maximum does
        # not vectorise; s' >= 0 has no sign bit).
        peak_m = max(peak_m, m_raw[j] & 0x7FFF_FFFF_FFFF_FFFF)
        peak_s = max(peak_s, s_raw[j])
        m_abs = abs(m)
        denom = s + ew_eps
        quot = np.floor(m_abs * float(1 << RATIO_FRAC) / max(denom, 1.0))  # 0 when m' = 0
        over = ((denom == 0.0) & (m_abs != 0.0)) | (quot > rmax)
        quot = rmax if over else quot
        x = np.copysign(alpha * quot, m)
        if stochastic:
            u = _xorshift(seed ^ (((index0 + j) * INDEX_MUL) & MASK32))
            step = _round(int(x), alpha_sh, True, u)
        else:
            step = int(np.rint(x * a_scale))  # round to nearest even; x * 2**-sh is exact
        p = np.int64(P[j])
        p_new = p - ((p * lwd + (1 << 31)) >> 32) - step
        p_sat = min(max(p_new, -p_max), p_max)
        sat += over | (p_sat != p_new)
        P_out[j] = p_sat
    return sat, peak_m, peak_s


@numba.njit(parallel=True, cache=True, fastmath=_FAST, error_model="numpy")
def _step_kernel(P, G, eg, M, em, S, es, P_out, M_out, em_out, S_out, es_out, fmt_v, sc_v, idx0):
    block, g_mag, m_mag, s_bits, p_max, m_max, s_max = fmt_v
    eps_m, eps_e, seed, mode = sc_v[2], sc_v[3], sc_v[8], sc_v[9]
    stochastic = (mode & 1) == 1
    n = P.size
    nb = (n + block - 1) // block
    n_chunks = (nb + _CHUNK_BLOCKS - 1) // _CHUNK_BLOCKS
    sat = np.zeros(n_chunks, np.int64)
    for c in numba.prange(n_chunks):
        m_new = np.empty(block, np.float64)
        s_new = np.empty(block, np.float64)
        sat_c = 0
        for b in range(c * _CHUNK_BLOCKS, min((c + 1) * _CHUNK_BLOCKS, nb)):
            lo = b * block
            hi = min(lo + block, n)
            e_g, e_m, e_s = np.int64(eg[b]), np.int64(em[b]), np.int64(es[b])
            ew = max(max(e_g, e_m), max(e_s, eps_e))
            sg, sm, ss = _align_scale(g_mag, ew - e_g), _align_scale(m_mag, ew - e_m), _align_scale(s_bits, ew - e_s)
            ew_eps = np.floor(eps_m * _align_scale(EPS_BITS, ew - eps_e) + 0.5) * (1 << EXTRA_FRAC)
            index0 = idx0 + lo
            Pb, Gb, Mb, Sb, Qb = P[lo:hi], G[lo:hi], M[lo:hi], S[lo:hi], P_out[lo:hi]
            scales = (sg, sm, ss, ew_eps)
            # The same loop twice, specialised by inlining to one rounding mode.
            if stochastic:
                s, peak_m, peak_s = _block(Pb, Gb, Mb, Sb, Qb, scales, sc_v, p_max, m_new, s_new, True, index0)
            else:
                s, peak_m, peak_s = _block(Pb, Gb, Mb, Sb, Qb, scales, sc_v, p_max, m_new, s_new, False, 0)
            sat_c += s
            em_out[b] = _store(m_new, peak_m, ew, m_mag, m_max, -m_max, stochastic, seed, index0, 2, M_out[lo:hi])
            es_out[b] = _store(s_new, peak_s, ew, s_bits, s_max, 0, stochastic, seed, index0, 3, S_out[lo:hi])
        sat[c] = sat_c
    return sat.sum()


@numba.njit(inline="always", fastmath=_FAST)
def _store(x, peak, ew, mag, hi_lim, lo_lim, stochastic, seed, index0, clocks, out):
    """Step 7 of the spec for one block: quantise x into out (the block's slice) with
    the exponent of its peak (given as the bits of the double). With stochastic rounding the bits are the element's
    LFSR after `clocks` clocks."""
    count = out.size
    if peak == 0:
        for j in range(count):
            out[j] = 0
        return EXP_ZERO
    length = (peak >> 52) - 1022  # bit length of the integer-valued double whose bits are peak
    k = length - mag
    if stochastic and k > 0:
        for j in range(count):
            u = seed ^ (((index0 + j) * INDEX_MUL) & MASK32)
            for _ in range(clocks):
                u = _xorshift(u)
            out[j] = min(max(_round(int(x[j]), k, True, u), lo_lim), hi_lim)
    else:
        # x << -k, or x rounded to nearest even by k bits: x * 2**-k is exact either way
        scale = _pow2(-k)
        for j in range(count):
            out[j] = int(min(max(np.rint(x[j] * scale), lo_lim), hi_lim))
    return ew - WORK_FRAC - EXTRA_FRAC + length


def _fmt_vector(fmt: FixedFormat) -> np.ndarray:
    return np.array([fmt.block, fmt.g_bits - 1, fmt.m_bits - 1, fmt.s_bits, fmt.p_max, fmt.m_max, fmt.s_max], np.int64)


def _scalar_vector(sc: StepScalars) -> np.ndarray:
    return np.array(
        [sc.beta1, sc.beta2, sc.eps_m, sc.eps_e, sc.alpha_m, sc.alpha_sh, sc.ratio_max, sc.lwd, sc.seed, sc.mode],
        np.int64,
    )


def adam_step_into(
    state: FixedState,
    G: np.ndarray,
    eg: np.ndarray,
    sc: StepScalars,
    idx0: int,
    out: FixedState,
    fmt: FixedFormat = DEFAULT,
) -> int:
    """The model's adam_step, writing the new state into `out`; returns the saturated count."""
    return int(
        _step_kernel(
            state.P, G, eg, state.M, state.em, state.S, state.es,
            out.P, out.M, out.em, out.S, out.es,
            _fmt_vector(fmt), _scalar_vector(sc), np.int64(idx0),
        )
    )  # fmt: skip


@numba.njit(parallel=True, cache=True, error_model="numpy")
def _quantize_kernel(x, bits, block, mag, G, eg, offset):
    """Quantise x into G[offset:] and eg[offset // block:] (offset block-aligned).
    bits: x (float32 or float64) viewed as integers; the block's peak is found on
    them, as an integer maximum (a float maximum does not vectorise)."""
    if bits.itemsize == 4:
        mant_bits, bias, magnitude = 23, 127, 0x7FFF_FFFF
    else:
        mant_bits, bias, magnitude = 52, 1023, 0x7FFF_FFFF_FFFF_FFFF
    n = x.size
    nb = (n + block - 1) // block
    n_chunks = (nb + _CHUNK_BLOCKS - 1) // _CHUNK_BLOCKS
    limit = float((1 << mag) - 1)
    b0 = offset // block
    for c in numba.prange(n_chunks):
        for b in range(c * _CHUNK_BLOCKS, min((c + 1) * _CHUNK_BLOCKS, nb)):
            lo = b * block
            hi = min(lo + block, n)
            xb, bb, Gb = x[lo:hi], bits[lo:hi], G[offset + lo : offset + hi]
            peak = 0
            for i in range(bb.size):
                peak = max(peak, bb[i] & magnitude)
            if peak == 0:
                eg[b0 + b] = EXP_ZERO
                Gb[:] = 0
                continue
            # The frexp exponent of the peak: from its exponent field, or for a
            # subnormal from the bit length of its mantissa (0 for inf and NaN, as frexp).
            biased = peak >> mant_bits
            if biased == 2 * bias + 1:
                e = 0
            elif biased > 0:
                e = min(max(biased + 1 - bias, EXP_MIN), EXP_MAX)
            else:
                e = max(math.frexp(float(peak))[1] + 1 - bias - mant_bits, EXP_MIN)
            eg[b0 + b] = e
            scale = _pow2(mag - e)
            for i in range(xb.size):
                Gb[i] = int(min(max(np.rint(xb[i] * scale), -limit), limit))


def quantize_grad_into(g: np.ndarray, G: np.ndarray, eg: np.ndarray, offset: int, fmt: FixedFormat = DEFAULT) -> None:
    """convert.quantize_grad of g, compiled, written into G and eg at `offset`
    (a multiple of the block size)."""
    x = np.ascontiguousarray(g).reshape(-1)
    if x.dtype != np.float32:
        x = x.astype(np.float64, copy=False)
    bits = x.view(np.int32 if x.dtype == np.float32 else np.int64)
    _quantize_kernel(x, bits, fmt.block, fmt.g_bits - 1, G, eg, offset)


def quantize_grad_fast(g: np.ndarray, fmt: FixedFormat = DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """convert.quantize_grad without the saturation count, compiled: (G int16, eg int8)."""
    G = np.empty(g.size, np.int16)
    eg = np.empty(n_blocks(g.size, fmt.block), np.int8)
    quantize_grad_into(g, G, eg, 0, fmt)
    return G, eg


@numba.njit(parallel=True, cache=True)
def _to_float_kernel(P, out, scale):
    for i in numba.prange(P.size):
        out[i] = np.float32(np.float64(P[i]) * scale)


def params_to_float_into(P: np.ndarray, out: np.ndarray, fmt: FixedFormat = DEFAULT) -> None:
    """convert.params_from_fixed rounded to float32, compiled, into `out`."""
    _to_float_kernel(P, out, 2.0**-fmt.p_frac)


def _count_differ(P: np.ndarray, x: np.ndarray, scale: float) -> int:
    count = 0
    for i in numba.prange(P.size):
        count += np.float32(np.float64(P[i]) * scale) != x[i]  # the float32 that params_to_float_into writes
    return count


def _count_unequal(a: np.ndarray, b: np.ndarray) -> int:
    count = 0
    for i in numba.prange(a.size):
        count += a[i] != b[i]
    return count


_PARALLEL_FROM = 1 << 18
"""Below this many elements one thread is faster than waking the others."""
_count_differ_kernels = (numba.njit(cache=True)(_count_differ), numba.njit(parallel=True, cache=True)(_count_differ))
_count_unequal_kernels = (numba.njit(cache=True)(_count_unequal), numba.njit(parallel=True, cache=True)(_count_unequal))


def params_differ(P: np.ndarray, x: np.ndarray, fmt: FixedFormat = DEFAULT) -> bool:
    """Whether the float32 parameters `x` differ anywhere from the float32 values
    of the fixed parameters P (NaN always differs): one fused pass, no temporaries."""
    return _count_differ_kernels[P.size >= _PARALLEL_FROM](P, x, 2.0**-fmt.p_frac) > 0


def floats_differ(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two float32 arrays differ anywhere, bit for bit (a NaN equals
    the same NaN; -0.0 differs from 0.0): one pass, no temporaries."""
    return _count_unequal_kernels[a.size >= _PARALLEL_FROM](a.view(np.int32), b.view(np.int32)) > 0
