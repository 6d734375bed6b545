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


@numba.njit(inline="always")
def _bit_length(x: int) -> int:
    n = 0
    while x:
        x >>= 1
        n += 1
    return n


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
    for c in numba.prange(n_chunks):
        m_tmp = np.empty(block, np.int64)
        s_tmp = np.empty(block, np.int64)
        um_tmp = np.empty(block, np.int64)
        us_tmp = np.empty(block, np.int64)
        sat_c = 0
        for b in range(c * _CHUNK_BLOCKS, min((c + 1) * _CHUNK_BLOCKS, nb)):
            lo = b * block
            hi = min(lo + block, n)
            e_g, e_m, e_s = np.int64(eg[b]), np.int64(em[b]), np.int64(es[b])
            ew = max(max(e_g, e_m), max(e_s, eps_e))
            ew_eps = _align(eps_m, WORK_FRAC - EPS_BITS, ew - eps_e) << EXTRA_FRAC
            d_g, d_m, d_s = ew - e_g, ew - e_m, ew - e_s
            m_peak = 0
            s_peak = 0
            for j in range(hi - lo):
                i = lo + j
                gw = _align(np.int64(G[i]), WORK_FRAC - g_mag, d_g)
                mw = _align(np.int64(M[i]), WORK_FRAC - m_mag, d_m)
                sw = _align(np.int64(S[i]), WORK_FRAC - s_bits, d_s)
                acc = beta1 * mw + (one - beta1) * gw
                m_new = (acc + (1 << (COEF_FRAC - EXTRA_FRAC - 1))) >> (COEF_FRAC - EXTRA_FRAC)
                v = beta2 * sw * sw + (one - beta2) * gw * gw
                s_new = np.int64(math.sqrt(np.float64(v)))
                if s_new * s_new > v:
                    s_new -= 1
                denom = s_new + ew_eps
                m_abs = abs(m_new)
                clamped = False
                if m_abs == 0:
                    ratio = 0
                elif denom == 0:
                    ratio = ratio_max
                    clamped = True
                else:
                    ratio = np.int64(math.floor(np.float64(m_abs << RATIO_FRAC) / np.float64(denom)))
                    if ratio > ratio_max:
                        ratio = ratio_max
                        clamped = True
                if m_new < 0:
                    ratio = -ratio
                u_p = 0
                if stochastic:
                    x = np.int64(seed) ^ (((idx0 + i) * INDEX_MUL) & MASK32)
                    u_p = _xorshift(x)
                    u_m = _xorshift(u_p)
                    um_tmp[j] = u_m
                    us_tmp[j] = _xorshift(u_m)
                p = np.int64(P[i])
                decay = (p * lwd + (1 << 31)) >> 32
                p_new = p - decay - _round(alpha_m * ratio, alpha_sh, stochastic, u_p)
                if p_new > p_max or p_new < -p_max:
                    p_new = min(max(p_new, -p_max), p_max)
                    clamped = True
                sat_c += clamped
                P_out[i] = p_new
                m_tmp[j] = m_new
                s_tmp[j] = s_new
                m_peak = max(m_peak, m_abs)
                s_peak = max(s_peak, s_new)
            em_out[b] = _store(m_tmp, hi - lo, m_peak, ew, m_mag, m_max, -m_max, stochastic, um_tmp, M_out, lo)
            es_out[b] = _store(s_tmp, hi - lo, s_peak, ew, s_bits, s_max, 0, stochastic, us_tmp, S_out, lo)
        sat[c] = sat_c
    return sat.sum()


@numba.njit(inline="always")
def _store(x, count, peak, ew, mag, hi_lim, lo_lim, stochastic, u, out, lo):
    length = _bit_length(peak)
    if length == 0:
        for j in range(count):
            out[lo + j] = 0
        return EXP_ZERO
    for j in range(count):
        if length <= mag:
            v = x[j] << (mag - length)
        else:
            v = _round(x[j], length - mag, stochastic, u[j])
        out[lo + j] = min(max(v, lo_lim), hi_lim)
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
