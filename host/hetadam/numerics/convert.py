"""Host-side conversions between float tensors and the `fixed` formats.

These run on the host, in float64, before data enters a kernel or after it
leaves; they are shared by every backend, so all backends see the same bits.
Also: packing the resident state into the kernel's memory layout (regmap.py).
"""

from __future__ import annotations

import numpy as np

from .fixed import FixedState
from .formats import DEFAULT, EXP_MAX, EXP_MIN, EXP_ZERO, FixedFormat, n_blocks


def quantize_blocks(
    x: np.ndarray, mag_bits: int, block: int, signed: bool = True
) -> tuple[np.ndarray, np.ndarray, int]:
    """Round finite floats to block mantissas (round to nearest even) and int8
    exponents with |x| < 2**e. Returns (mantissas int64, exponents int8,
    saturated count); values beyond 2**127 saturate."""
    n = x.size
    nb = n_blocks(n, block)
    xb = np.zeros(nb * block, np.float64)
    xb[:n] = x.reshape(-1)
    xb = xb.reshape(nb, block)
    peak = np.abs(xb).max(axis=1)
    exp = np.frexp(peak)[1].astype(np.int64)  # peak = f * 2**exp, f in [0.5, 1)
    exp = np.where(peak == 0, EXP_ZERO, np.clip(exp, EXP_MIN, EXP_MAX))
    scale = np.ldexp(1.0, (mag_bits - exp).clip(-1100, 1100))[:, None]
    mant = np.rint(xb * scale)
    limit = (1 << mag_bits) - 1
    lo = -limit if signed else 0
    saturated = int(((mant > limit) & (peak > 2.0**EXP_MAX)[:, None]).sum())
    mant = np.clip(mant, lo, limit).astype(np.int64)
    return mant.reshape(-1)[:n], exp.astype(np.int8), saturated


def dequantize_blocks(mant: np.ndarray, exp: np.ndarray, mag_bits: int, block: int) -> np.ndarray:
    """Float64 values of block mantissas."""
    n = mant.size
    e = np.repeat(exp.astype(np.int64), block)[:n]
    scale = np.where(e == EXP_ZERO, 0.0, np.ldexp(1.0, e - mag_bits))
    return mant.astype(np.float64) * scale


def quantize_grad(g: np.ndarray, fmt: FixedFormat = DEFAULT) -> tuple[np.ndarray, np.ndarray, int]:
    """Gradient -> (G int16, eg int8, saturated)."""
    mant, exp, sat = quantize_blocks(g, fmt.g_bits - 1, fmt.block)
    return mant.astype(np.int16), exp, sat


def params_to_fixed(x: np.ndarray, fmt: FixedFormat = DEFAULT) -> tuple[np.ndarray, int]:
    """Float parameters -> int32 fixed point (round to nearest even, saturating)."""
    scaled = np.rint(x.astype(np.float64) * 2.0**fmt.p_frac)
    saturated = int((np.abs(scaled) > fmt.p_max).sum())
    return np.clip(scaled, -fmt.p_max, fmt.p_max).astype(np.int32), saturated


def params_from_fixed(P: np.ndarray, fmt: FixedFormat = DEFAULT) -> np.ndarray:
    return P.astype(np.float64) * 2.0**-fmt.p_frac


def state_from_float(p: np.ndarray, m: np.ndarray, v: np.ndarray, fmt: FixedFormat = DEFAULT) -> FixedState:
    """Fixed state from float parameters, first and second moments (as torch keeps them)."""
    P, _ = params_to_fixed(p, fmt)
    M, em, _ = quantize_blocks(m, fmt.m_bits - 1, fmt.block)
    S, es, _ = quantize_blocks(np.sqrt(np.maximum(v.astype(np.float64), 0.0)), fmt.s_bits, fmt.block, signed=False)
    return FixedState(P=P, M=M.astype(np.int16), em=em, S=S.astype(np.uint16), es=es)


def state_to_float(st: FixedState, fmt: FixedFormat = DEFAULT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, m, v) as float64 from the fixed state: what torch's state_dict holds."""
    m = dequantize_blocks(st.M, st.em, fmt.m_bits - 1, fmt.block)
    s = dequantize_blocks(st.S, st.es, fmt.s_bits, fmt.block)
    return params_from_fixed(st.P, fmt), m, s * s


def pack_ms(M: np.ndarray, S: np.ndarray) -> np.ndarray:
    """The kernel's `ms` array: M in bits 15:0, S in bits 31:16."""
    return M.astype(np.uint16).astype(np.uint32) | (S.astype(np.uint32) << 16)


def unpack_ms(ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (ms & 0xFFFF).astype(np.uint16).view(np.int16), (ms >> 16).astype(np.uint16)


def pack_ex(eg: np.ndarray, em: np.ndarray, es: np.ndarray) -> np.ndarray:
    """The kernel's `ex` array: eg in bits 7:0, em in 15:8, es in 23:16."""

    def byte(e: np.ndarray) -> np.ndarray:
        return e.astype(np.int8).view(np.uint8).astype(np.uint32)

    return byte(eg) | (byte(em) << 8) | (byte(es) << 16)


def unpack_ex(ex: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    def field(shift: int) -> np.ndarray:
        return ((ex >> shift) & 0xFF).astype(np.uint8).view(np.int8)

    return field(0), field(8), field(16)
