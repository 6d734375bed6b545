"""Per-step scalars of the `fixed` update, as the host writes them to registers.

The host folds Adam's bias corrections into two scalars per step (float64 on
the host, never in the datapath):

    alpha_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)
    eps_t   = eps * sqrt(1 - beta2**t)

so that p -= alpha_t * m / (sqrt(v) + eps_t) equals torch's
p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps). Each scalar then becomes an
integer register value:

    beta1, beta2   Q0.20: B = min(round(beta * 2**20), 2**20 - 1); 1 - beta is 2**20 - B
    eps_t          EPS_M * 2**(EPS_E - 15), EPS_M in [2**14, 2**15), EPS_E in [-100, 127]
    alpha_t        ALPHA_M * 2**-ALPHA_SH * 2**(RATIO_FRAC - p_frac), ALPHA_M < 2**24,
                   ALPHA_SH in [1, 62] (normalised to [2**23, 2**24) unless ALPHA_SH = 62)
    ratio bound    RMAX = min(ceil(2**20 * (1-beta1) / sqrt((1-beta2)(1-beta1**2/beta2))), 2**27-1)
                   (2**27-1 when beta1**2 >= beta2)
    lr * wd        LWD = round(lr * wd * 2**32) < 2**32 (decoupled weight decay, AdamW)
    seed_t         seed ^ (t * 0x85EBCA6B) mod 2**32 (see lfsr.py)
    mode           bit 0: stochastic rounding (else round to nearest even)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .formats import ALPHA_BITS, ALPHA_SHIFT_MAX, COEF_FRAC, DEFAULT, EPS_BITS, RATIO_FRAC, RATIO_MAX, FixedFormat
from .lfsr import step_seed

EPS_EXP_MIN = -100
MODE_STOCHASTIC = 1


@dataclass(frozen=True)
class StepScalars:
    """Register values of one step (one param group); see the module docstring."""

    beta1: int
    beta2: int
    eps_m: int
    eps_e: int
    alpha_m: int
    alpha_sh: int
    ratio_max: int
    lwd: int
    seed: int
    mode: int

    @property
    def stochastic(self) -> bool:
        return bool(self.mode & MODE_STOCHASTIC)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def encode_coef(beta: float) -> int:
    return min(round(beta * (1 << COEF_FRAC)), (1 << COEF_FRAC) - 1)


def encode_eps(eps_t: float) -> tuple[int, int]:
    if not eps_t > 0 or not math.isfinite(eps_t):
        raise ValueError(f"eps must be a positive finite number, got {eps_t}")
    frac, exp = math.frexp(eps_t)  # eps_t = frac * 2**exp, frac in [0.5, 1)
    mant = round(frac * (1 << EPS_BITS))
    if mant == 1 << EPS_BITS:
        mant, exp = mant >> 1, exp + 1
    if not EPS_EXP_MIN <= exp <= 127:
        raise ValueError(
            f"eps={eps_t:g} (bias-corrected) is outside the fixed format's range "
            f"[2**{EPS_EXP_MIN - 1}, 2**127]: choose a larger eps"
        )
    return mant, exp


def encode_alpha(alpha_t: float, fmt: FixedFormat = DEFAULT) -> tuple[int, int]:
    if alpha_t < 0 or not math.isfinite(alpha_t):
        raise ValueError(f"lr must be a non-negative finite number, got step size {alpha_t}")
    target = alpha_t * 2.0 ** (fmt.p_frac - RATIO_FRAC)
    if target == 0.0:
        return 0, 1
    frac, exp = math.frexp(target)
    mant = round(frac * (1 << ALPHA_BITS))
    shift = ALPHA_BITS - exp
    if mant == 1 << ALPHA_BITS:
        mant, shift = mant >> 1, shift - 1
    if shift < 1:
        raise ValueError(
            f"lr={alpha_t:g} (bias-corrected) is too large for the fixed format "
            f"(at most {2.0 ** (ALPHA_BITS - 1 - fmt.p_frac + RATIO_FRAC):g})"
        )
    if shift > ALPHA_SHIFT_MAX:
        mant, shift = round(target * 2.0**ALPHA_SHIFT_MAX), ALPHA_SHIFT_MAX
    return mant, shift


def ratio_bound(beta1: float, beta2: float) -> int:
    """Q7.20 bound on |m| / sqrt(v) that exact (uncorrected) Adam guarantees."""
    if beta1 * beta1 >= beta2:
        return RATIO_MAX
    bound = (1.0 - beta1) / math.sqrt((1.0 - beta2) * (1.0 - beta1 * beta1 / beta2))
    return min(math.ceil(bound * (1 << RATIO_FRAC)), RATIO_MAX)


def encode_decay(lr_wd: float) -> int:
    lwd = round(lr_wd * 2.0**32)
    if not 0 <= lwd < 1 << 32:
        raise ValueError(f"lr * weight_decay must lie in [0, 1) for the fixed format, got {lr_wd:g}")
    return lwd


def encode_step(
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    seed: int = 0,
    stochastic: bool = False,
    fmt: FixedFormat = DEFAULT,
) -> StepScalars:
    """Encode the scalars of step `step` (1-based). Coupled (Adam) weight decay is
    added to the gradient by the host before quantisation, so only decoupled
    (AdamW) weight decay reaches the kernel."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    bc1 = 1.0 - beta1**step
    bc2_sqrt = math.sqrt(1.0 - beta2**step)
    alpha_m, alpha_sh = encode_alpha(lr * bc2_sqrt / bc1, fmt)
    eps_m, eps_e = encode_eps(eps * bc2_sqrt)
    lwd = encode_decay(lr * weight_decay) if decoupled_weight_decay else 0
    return StepScalars(
        beta1=encode_coef(beta1),
        beta2=encode_coef(beta2),
        eps_m=eps_m,
        eps_e=eps_e,
        alpha_m=alpha_m,
        alpha_sh=alpha_sh,
        ratio_max=ratio_bound(beta1, beta2),
        lwd=lwd,
        seed=step_seed(seed, step),
        mode=MODE_STOCHASTIC if stochastic else 0,
    )
