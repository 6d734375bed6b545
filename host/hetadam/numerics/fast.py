"""Compiled fast paths of the `fixed` numerics (numba), bit-exact with the model.

fixed.py stays the specification; tests hold these to it bit for bit. The step
runs one fused loop per block on all cores: double-precision sqrt and division
give the exact integer floors (see fixed.py for why), and the state is read
once and written once.
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


@numba.njit(inline="always")
def _align(x: int, up: int, d: int) -> int:
    x = x << up
    if d > 31:
        d = 31
    if d > 0:
        x = (x + (1 << (d - 1))) >> d
    return x


@numba.njit(inline="always")
def _half(d: int) -> int:
    """The rounding half of rshr(x, d): 2**(d-1), or 0 when d = 0."""
    return (1 << (d - 1)) if d > 0 else 0


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


@numba.njit(parallel=True, cache=True)
def _step_kernel(P, G, eg, M, em, S, es, P_out, M_out, em_out, S_out, es_out, fmt_v, sc_v, idx0):
    block, g_mag, m_mag, s_bits, p_max, m_max, s_max = fmt_v
    beta1, beta2, eps_m, eps_e, alpha_m, alpha_sh, ratio_max, lwd, seed, mode = sc_v
    stochastic = (mode & 1) == 1
    n = P.size
    nb = (n + block - 1) // block
    n_chunks = (nb + _CHUNK_BLOCKS - 1) // _CHUNK_BLOCKS
    sat = np.zeros(n_chunks, np.int64)
    one = 1 << COEF_FRAC
    m_shift = COEF_FRAC - EXTRA_FRAC
    m_half = 1 << (m_shift - 1)
    a_half = 1 << (alpha_sh - 1)
    for c in numba.prange(n_chunks):
        m_new = np.empty(block, np.int64)
        s_new = np.empty(block, np.int64)
        step = np.empty(block, np.int64)
        clamped = np.empty(block, np.bool_)
        sat_c = 0
        for b in range(c * _CHUNK_BLOCKS, min((c + 1) * _CHUNK_BLOCKS, nb)):
            lo = b * block
            count = min(lo + block, n) - lo
            e_g, e_m, e_s = np.int64(eg[b]), np.int64(em[b]), np.int64(es[b])
            ew = max(max(e_g, e_m), max(e_s, eps_e))
            ew_eps = _align(eps_m, WORK_FRAC - EPS_BITS, ew - eps_e) << EXTRA_FRAC
            # Per block: the alignment shifts and their rounding halves (rshr).
            d_g, d_m, d_s = min(ew - e_g, 31), min(ew - e_m, 31), min(ew - e_s, 31)
            h_g, h_m, h_s = _half(d_g), _half(d_m), _half(d_s)
            up_g, up_m, up_s = WORK_FRAC - g_mag, WORK_FRAC - m_mag, WORK_FRAC - s_bits
            # Short loops over few arrays, free of branches, so that they vectorise.
            for j in range(count):
                gw = ((np.int64(G[lo + j]) << up_g) + h_g) >> d_g
                mw = ((np.int64(M[lo + j]) << up_m) + h_m) >> d_m
                m_new[j] = (beta1 * mw + (one - beta1) * gw + m_half) >> m_shift
            for j in range(count):
                gw = ((np.int64(G[lo + j]) << up_g) + h_g) >> d_g
                sw = ((np.int64(S[lo + j]) << up_s) + h_s) >> d_s
                v = beta2 * sw * sw + (one - beta2) * gw * gw
                r = int(math.sqrt(float(v)))  # int(): np.int64(float) is a slow checked path
                s_new[j] = r - (r * r > v)
            for j in range(count):
                m = m_new[j]
                m_abs = abs(m)
                denom = s_new[j] + ew_eps
                quot = int(float(m_abs << RATIO_FRAC) / float(max(denom, 1)))  # positive: truncation is the floor
                over = (denom == 0) | (quot > ratio_max)
                quot = ratio_max if over else quot
                quot = 0 if m_abs == 0 else quot
                step[j] = alpha_m * (-quot if m < 0 else quot)
                clamped[j] = over & (m_abs != 0)
            if stochastic:
                for j in range(count):
                    u = _xorshift(seed ^ (((idx0 + lo + j) * INDEX_MUL) & MASK32))
                    step[j] = _round(step[j], alpha_sh, True, u)
            else:
                for j in range(count):
                    step[j] = (step[j] + a_half - 1 + ((step[j] >> alpha_sh) & 1)) >> alpha_sh
            for j in range(count):
                p = np.int64(P[lo + j])
                p_new = p - ((p * lwd + (1 << 31)) >> 32) - step[j]
                p_sat = min(max(p_new, -p_max), p_max)
                sat_c += clamped[j] | (p_sat != p_new)
                P_out[lo + j] = p_sat
            em_out[b] = _store(m_new, count, ew, m_mag, m_max, -m_max, stochastic, seed, idx0 + lo, 2, M_out, lo)
            es_out[b] = _store(s_new, count, ew, s_bits, s_max, 0, stochastic, seed, idx0 + lo, 3, S_out, lo)
        sat[c] = sat_c
    return sat.sum()


@numba.njit(inline="always")
def _store(x, count, ew, mag, hi_lim, lo_lim, stochastic, seed, index0, clocks, out, lo):
    """Step 7 of the spec for one block: quantise x[:count] with the exponent of its peak.
    With stochastic rounding the bits are the element's LFSR after `clocks` clocks."""
    peak = 0
    for j in range(count):
        peak = max(peak, abs(x[j]))
    if peak == 0:
        for j in range(count):
            out[lo + j] = 0
        return EXP_ZERO
    length = math.frexp(float(peak))[1]  # bit length: peak < 2**53
    if length <= mag:
        for j in range(count):
            out[lo + j] = x[j] << (mag - length)
    else:
        k = length - mag
        if stochastic:
            for j in range(count):
                u = seed ^ (((index0 + j) * INDEX_MUL) & MASK32)
                for _ in range(clocks):
                    u = _xorshift(u)
                out[lo + j] = min(max(_round(x[j], k, True, u), lo_lim), hi_lim)
        else:
            half = (1 << (k - 1)) - 1
            for j in range(count):
                out[lo + j] = min(max((x[j] + half + ((x[j] >> k) & 1)) >> k, lo_lim), hi_lim)
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


@numba.njit(parallel=True, cache=True)
def _quantize_kernel(x, block, mag, G, eg, offset):
    """Quantise x into G[offset:] and eg[offset // block:] (offset block-aligned)."""
    n = x.size
    nb = (n + block - 1) // block
    limit = (1 << mag) - 1
    b0 = offset // block
    for b in numba.prange(nb):
        lo = b * block
        hi = min(lo + block, n)
        peak = 0.0
        for i in range(lo, hi):
            peak = max(peak, abs(np.float64(x[i])))
        if peak == 0.0:
            eg[b0 + b] = EXP_ZERO
            for i in range(lo, hi):
                G[offset + i] = 0
            continue
        e = min(max(math.frexp(peak)[1], EXP_MIN), EXP_MAX)
        eg[b0 + b] = e
        scale = math.ldexp(1.0, mag - e)
        for i in range(lo, hi):
            q = np.rint(np.float64(x[i]) * scale)
            G[offset + i] = min(max(q, -limit), limit)


def quantize_grad_into(g: np.ndarray, G: np.ndarray, eg: np.ndarray, offset: int, fmt: FixedFormat = DEFAULT) -> None:
    """convert.quantize_grad of g, compiled, written into G and eg at `offset`
    (a multiple of the block size)."""
    _quantize_kernel(np.ascontiguousarray(g).reshape(-1), fmt.block, fmt.g_bits - 1, G, eg, offset)


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
