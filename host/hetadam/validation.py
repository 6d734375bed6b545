"""Every check of what a user hands `HetAdam`, before anything changes.

Hyper-parameters follow torch.optim.Adam's rules and keep its message prefixes
(`Invalid learning rate: ...`), each followed by the rule. Under `fixed` the
hyper-parameters must also fit the format's registers at every step, and the
parameters the format's range. Parameters must be what the runtime can stream;
gradients must match their parameters and, unless the user opts out, be finite.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from . import backends
from .backends.base import NonFiniteGradientError as NonFiniteGradientError
from .finite import all_finite
from .numerics import FixedFormat
from .numerics.scalars import encode_alpha, encode_eps, encode_step

NUMERICS = ("fp32", "fixed")


def scalar(x: float | torch.Tensor) -> float:
    """A hyper-parameter (a number or a 1-element tensor) as a float."""
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


# -- hyper-parameters ---------------------------------------------------------


def check_hyper(lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
    """torch.optim.Adam's checks, with the rule after torch's message."""
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError(f"Tensor lr must be 1-element, got one of shape {tuple(lr.shape)}")
    lr_v = scalar(lr)
    if not (lr_v >= 0.0 and math.isfinite(lr_v)):
        raise ValueError(f"Invalid learning rate: {lr_v} (lr must be a finite number >= 0)")
    if isinstance(eps, torch.Tensor) or not (isinstance(eps, (int, float)) and eps > 0.0):
        raise ValueError(f"Invalid epsilon value: {eps} (eps must be a number > 0)")
    if isinstance(betas, torch.Tensor) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas} (betas must be a pair)")
    if isinstance(betas[0], torch.Tensor) != isinstance(betas[1], torch.Tensor):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, b in enumerate(betas):
        if isinstance(b, torch.Tensor) and b.numel() != 1:
            raise ValueError(f"Tensor betas[{i}] must be 1-element, got one of shape {tuple(b.shape)}")
        b_v = scalar(b)
        if not 0.0 <= b_v < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b_v} (betas must lie in [0, 1))")
    if isinstance(weight_decay, torch.Tensor) or not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay} (weight_decay must be a number >= 0)")


def check_fixed_hyper(
    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool, fmt: FixedFormat
) -> None:
    """The `fixed` registers must hold the step scalars of every step t >= 1.

    alpha_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t) and eps_t = eps * sqrt(1 - beta2**t)
    vary with t; what fails is alpha_t too large or eps_t out of the exponent
    range, both monotone in the value. eps_t grows with t from its step-1 value
    towards eps. alpha_t has no maximum inside the steps: with
    a = -ln beta1, c = -ln beta2, d/dt ln alpha_t has the sign of
    c / (2 (e^{ct} - 1)) - a / (e^{at} - 1), which changes sign at most once,
    from - to + when beta1 < beta2 (alpha_t falls, then rises towards lr) and
    never otherwise (alpha_t falls from step 1). So the extremes of both are at
    step 1 and in the limit (alpha_t -> lr, eps_t -> eps): checking those two
    checks every step.
    """
    encode_step(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        step=1,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled,
        fmt=fmt,
    )
    try:
        encode_alpha(lr, fmt)
    except ValueError as exc:
        raise ValueError(
            f"lr={lr:g} is too large for the fixed format at later steps (the bias-corrected step size "
            f"tends to lr): {exc}"
        ) from exc
    try:
        encode_eps(eps)
    except ValueError as exc:
        raise ValueError(
            f"eps={eps:g} is too large for the fixed format at later steps (the bias-corrected eps "
            f"eps * sqrt(1 - beta2**t) tends to eps; the format holds at most 2**127): choose a smaller eps"
        ) from exc


def check_group(group: dict[str, Any], numerics: str, fmt: FixedFormat) -> None:
    """A param group's hyper-parameters, as the constructor and a loaded state dict must have them."""
    check_hyper(group["lr"], group["betas"], group["eps"], group["weight_decay"])
    if numerics == "fixed":
        if group["amsgrad"]:
            raise ValueError("amsgrad=True is not supported by numerics='fixed'; use numerics='fp32'")
        beta1, beta2 = group["betas"]
        check_fixed_hyper(
            scalar(group["lr"]),
            scalar(beta1),
            scalar(beta2),
            float(group["eps"]),
            float(group["weight_decay"]),
            bool(group["decoupled_weight_decay"]),
            fmt,
        )


def check_numerics(numerics: str, amsgrad: bool) -> None:
    if numerics not in NUMERICS:
        raise ValueError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
    if numerics == "fixed" and amsgrad:
        raise ValueError("amsgrad=True is not supported by numerics='fixed'; use numerics='fp32'")


# -- backends -----------------------------------------------------------------


def check_backends(backend: str | Sequence[str], numerics: str) -> list[str]:
    """The names `backend` gives (one name or a list of distinct names), each
    of a backend that runs `numerics`. "auto" is resolved by creating the
    usable backends (backends.create_usable)."""
    names = [backend] if isinstance(backend, str) else list(backend)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"backend must name distinct backends, got {names}")
    for name in names:
        cls = backends.backend_class(name)
        if numerics not in cls.numerics:
            raise ValueError(f"backend {name!r} does not support numerics={numerics!r} (it runs {cls.numerics})")
    return names


def check_split(split: Sequence[float] | None, n_backends: int) -> None:
    """`split=` weights: one finite, non-negative weight per backend, not all zero."""
    if split is None:
        return
    weights = list(split)
    if len(weights) != n_backends:
        raise ValueError(f"split gives {len(weights)} weights for {n_backends} backends")
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
            raise ValueError(f"split weight {i} is {w!r}: each weight must be a finite number >= 0")
    if not sum(weights) > 0:
        raise ValueError(f"split weights {weights} are all zero: give at least one backend a positive share")


# -- parameters ---------------------------------------------------------------


def param_label(group_index: int, param_index: int, param: Any, names: Sequence[str] | None) -> str:
    """How an error names a parameter: its name from named_parameters() when the
    user passed names, else its place and shape."""
    if names is not None:
        return f"parameter {names[param_index]!r}"
    shape = f" (shape {tuple(param.shape)})" if isinstance(param, torch.Tensor) else ""
    return f"param group {group_index}, parameter {param_index}{shape}"


PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""The dtypes of the parameters HetAdam steps (the others through a float32 master)."""


def check_param(p: Any, label: str) -> None:
    """A parameter HetAdam can step: a dense tensor of PARAM_DTYPES that holds values."""
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"optimizer can only optimize Tensors, but {label} is a {type(p).__name__}")
    if p.is_complex():
        raise ValueError(
            f"{label} is complex: HetAdam does not support complex parameters (view them as real with "
            "torch.view_as_real)"
        )
    if p.dtype not in PARAM_DTYPES:
        raise ValueError(
            f"HetAdam steps float32, bfloat16 and float16 parameters; {label} is {p.dtype} "
            "(convert the model, e.g. model.float())"
        )
    if p.layout != torch.strided:
        raise ValueError(f"HetAdam steps dense parameters; {label} is a {p.layout} tensor (make it dense)")
    if p.device.type == "meta":
        raise ValueError(
            f"{label} is on the meta device and holds no values: materialise the model first "
            "(module.to_empty(device=...), then initialise it)"
        )


def check_distinct(params: Sequence[torch.Tensor], labels: Sequence[str], others: Sequence[torch.Tensor]) -> None:
    """No parameter twice, in the group or in another group (`others`)."""
    seen: dict[int, str] = {}
    taken = {id(p) for p in others}
    for p, label in zip(params, labels, strict=True):
        if id(p) in taken:
            raise ValueError(
                f"some parameters appear in more than one parameter group: {label} is already in another group "
                "(list each parameter once)"
            )
        if id(p) in seen:
            raise ValueError(
                f"a parameter group with duplicate parameters: {label} is the same tensor as {seen[id(p)]} "
                "(list each parameter once: torch.optim would step it twice per step)"
            )
        seen[id(p)] = label


def fixed_range(fmt: FixedFormat) -> float:
    """Parameters of the fixed format lie in (-range, range); float32 values below it never saturate."""
    return 2.0 ** (31 - fmt.p_frac)


def check_fixed_range(values: torch.Tensor | np.ndarray, label: str, fmt: FixedFormat) -> None:
    """Refuse parameter values the fixed format cannot hold (it would clamp them).

    `label` names the parameter in the message (see `param_label`). Every
    float32 value of magnitude below `fixed_range(fmt)` converts exactly to the
    nearest representable value; NaN, Inf and anything at or beyond the range
    would saturate.
    """
    x = values.detach().to("cpu", torch.float32).numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if x.size == 0:
        return
    peak = float(np.max(np.abs(x)))
    limit = fixed_range(fmt)
    if peak < limit:  # False for NaN
        return
    if not math.isfinite(peak):
        raise ValueError(f"{label} holds NaN or Inf, which the fixed format cannot hold: use numerics='fp32'")
    integer_bits = math.floor(math.log2(peak)) + 1
    if integer_bits <= 31:
        remedy = (
            f"choose a format with fewer fraction bits, e.g. fixed_format=FixedFormat(p_frac={31 - integer_bits}) "
            f"(range ±{2.0**integer_bits:g}; the hardware kernels implement only the default format), "
            "or use numerics='fp32'"
        )
    else:
        remedy = "no fixed format holds it: use numerics='fp32'"
    raise ValueError(
        f"{label} has a value of magnitude {peak:g}, outside the fixed format's parameter range "
        f"(-{limit:g}, {limit:g}) (p_frac={fmt.p_frac}), which would clamp it: {remedy}"
    )


# -- gradients ----------------------------------------------------------------


def check_grads(params: list[torch.Tensor]) -> None:
    """Every check of a group's gradients but their values: each must match its parameter."""
    for p in params:
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            raise RuntimeError("HetAdam does not support sparse gradients")
        if g.shape != p.shape:
            raise ValueError(f"gradient of shape {tuple(g.shape)} does not match its parameter {tuple(p.shape)}")
        if g.dtype != p.dtype or g.device != p.device:
            raise ValueError(f"gradient is {g.dtype} on {g.device}; its parameter is {p.dtype} on {p.device}")


def check_finite_grads(grads: Iterable[torch.Tensor | None]) -> None:
    """Refuse NaN and Inf in the gradients the update reads (None: no gradient)."""
    for g in grads:
        if g is not None and not all_finite(g):
            raise NonFiniteGradientError(
                f"a gradient of shape {tuple(g.shape)} holds NaN or Inf; the step was not applied "
                "(unscale or clip gradients first, or skip this step)"
            )
