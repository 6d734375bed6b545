"""`HetAdam`: a drop-in `torch.optim.Optimizer` that runs Adam on a backend.

It takes what torch.optim.Adam and AdamW take. The optimizer state stays
resident on the backend between steps (a shard per param group, or several
when a step is split across backends); `state_dict()` gathers it into torch's
per-parameter layout, so it loads into torch.optim.Adam and back, and moves
between backends and numerics.

Deviations from torch.optim.Adam, by design:
- parameters must be contiguous float32 CPU tensors (the runtime streams them);
- a non-finite gradient raises `NonFiniteGradientError` before anything
  changes (torch would write NaN into the parameters; `check_finite=False`
  does as torch does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from . import backends
from .backends.base import Backend, BackendError, Shard, StepHyper, encode_hyper
from .finite import all_finite
from .layout import GroupLayout
from .numerics import DEFAULT, FixedFormat
from .runtime import Partition, ShardStats, needs_rebalance, plan_partition, rebalance

NUMERICS = ("fp32", "fixed")
FIXED_STATE_KEY = "fixed"
FIXED_ARRAYS = ("P", "M", "em", "S", "es")


class NonFiniteGradientError(ValueError):
    """A gradient holds NaN or Inf; the step was not applied."""


def _float(x: float | torch.Tensor) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


class HetAdam(torch.optim.Optimizer):
    """Adam / AdamW on a heterogeneous backend.

    Args (beyond torch.optim.Adam's):
        backend: a backend name (``hetadam.backends.NAMES``), a list of names
            to split every step across, or ``"auto"`` (every usable backend).
        numerics: ``"fp32"`` (torch's arithmetic) or ``"fixed"`` (the
            block fixed-point spec, bit-exact on every backend).
        fixed_format: widths of the fixed format (the default is what the
            hardware implements).
        stochastic_rounding: round fixed-point results stochastically with
            the spec's LFSR (seeded by `seed`) instead of to nearest even.
        step_timeout: seconds a backend may take for one step before the step
            fails (None: no limit).
        split: with several backends, their initial shares (weights in the
            order of `backend`; default: each backend's throughput on a probe).
        rebalance_every: with several backends, re-size their shares from the
            measured step timings every this many steps (0: never).
        check_finite: refuse a step whose gradients hold NaN or Inf before
            anything changes. It costs one read of the gradients (4 of the 28
            bytes per parameter that fp32 Adam moves); with False, non-finite
            gradients flow into the update as in torch.optim.Adam.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
        backend: str | Sequence[str] = "cpu",
        numerics: str = "fp32",
        fixed_format: FixedFormat = DEFAULT,
        stochastic_rounding: bool = False,
        seed: int = 0,
        step_timeout: float | None = None,
        split: Sequence[float] | None = None,
        rebalance_every: int = 16,
        check_finite: bool = True,
    ) -> None:
        _check_hyper(lr, betas, eps, weight_decay)
        if numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
        if numerics == "fixed" and amsgrad:
            raise ValueError("amsgrad=True is not supported by numerics='fixed'; use numerics='fp32'")
        self.numerics = numerics
        self.fixed_format = fixed_format
        self.stochastic_rounding = stochastic_rounding
        self.seed = seed
        self.step_timeout = step_timeout
        self.rebalance_every = rebalance_every
        self.check_finite = check_finite
        self._steps_taken = 0
        self.backend_names = _backend_names(backend, numerics)
        if split is not None and len(split) != len(self.backend_names):
            raise ValueError(f"split gives {len(split)} weights for {len(self.backend_names)} backends")
        self.split = split
        self.backends: dict[str, Backend] = {}
        for name in self.backend_names:
            cls = backends.backend_class(name)
            if numerics not in cls.numerics:
                raise ValueError(f"backend {name!r} does not support numerics={numerics!r} (it runs {cls.numerics})")
            self.backends[name] = backends.create(name)
        self._partitions: list[Partition] = []
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)
        self.saturated = 0
        """Elements saturated by the fixed format in the last step."""
        self.register_load_state_dict_pre_hook(_take_fixed_arrays)
        self.register_load_state_dict_post_hook(_push_state_to_shards)

    # -- param groups ------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_hyper(group["lr"], group["betas"], group["eps"], group["weight_decay"])
        if self.numerics == "fixed" and group["amsgrad"]:
            raise ValueError("amsgrad=True is not supported by numerics='fixed'; use numerics='fp32'")
        for p in group["params"]:
            _check_param(p)
        layout = GroupLayout.of(group["params"], self.fixed_format.block)
        partition = plan_partition(layout.size, self.backends, self.numerics, self.fixed_format, self.split)
        partition.layout = layout
        self._partitions.append(partition)
        params_flat = _flat_params(group["params"], layout)
        for shard in partition.shards:
            shard.import_state({}, params_flat[shard.start : shard.start + shard.n])

    # -- the step ----------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for group, partition in zip(self.param_groups, self._partitions, strict=True):
            params = group["params"]
            if any(p.grad is not None for p in params):
                _check_grads(params, self.check_finite)
                work.append((group, partition))
        if self.numerics == "fixed":  # encoding fails for hyper-parameters the format cannot hold
            for group, _ in work:
                encode_hyper(self._hyper(group, 1), self.fixed_format)
        stepped: list[Shard] = []
        saturated = 0
        try:
            for group, partition in work:
                steps = [self._param_step(p) + 1 for p in group["params"]]
                live = [s for s, p in zip(steps, group["params"], strict=True) if p.grad is not None]
                hyper = self._hyper(group, max(live))
                saturated += partition.step(group["params"], steps, hyper, stepped, self.step_timeout)
        except BaseException as exc:
            for shard in stepped:
                shard.discard()
            if isinstance(exc, (BackendError, ValueError, TypeError)):
                raise
            raise BackendError(f"the step failed and was not applied: {exc}") from exc
        for shard in stepped:
            shard.commit()
        for group, _ in work:
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]["step"] = torch.tensor(float(self._param_step(p) + 1))
        self.saturated = saturated
        self._steps_taken += 1
        if self.rebalance_every and self._steps_taken % self.rebalance_every == 0:
            self._rebalance()
        return loss

    @property
    def step_stats(self) -> list[ShardStats]:
        """Per shard of the last step: backend, elements, seconds, bytes on the wire."""
        return [s for partition in self._partitions for s in partition.stats]

    def _rebalance(self) -> None:
        """Re-size multi-backend shares to the throughput the steps measured."""
        for i, (group, partition) in enumerate(zip(self.param_groups, self._partitions, strict=True)):
            weights = partition.measured_weights()
            if weights is None or not needs_rebalance(partition, weights, self.fixed_format.block):
                continue
            params_flat = _flat_params(group["params"], partition.layout)
            self._partitions[i] = rebalance(
                partition, params_flat, self.backends, self.numerics, self.fixed_format, weights
            )

    def _param_step(self, p: torch.Tensor) -> int:
        step = self.state.get(p, {}).get("step")
        return 0 if step is None else int(step)

    def _hyper(self, group: dict[str, Any], step: int) -> StepHyper:
        beta1, beta2 = group["betas"]
        return StepHyper(
            lr=_float(group["lr"]),
            beta1=_float(beta1),
            beta2=_float(beta2),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            step=step,
            decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)),
            amsgrad=bool(group["amsgrad"]),
            maximize=bool(group["maximize"]),
            seed=self.seed,
            stochastic=self.stochastic_rounding,
        )

    # -- state -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        self._pull_state_from_shards()
        return super().state_dict()

    def _pull_state_from_shards(self) -> None:
        """Copy each shard's resident state into torch's per-parameter layout."""
        for group, partition in zip(self.param_groups, self._partitions, strict=True):
            layout = partition.layout
            exported = [(shard, shard.export_state()) for shard in partition.shards]
            for p, off, numel in zip(group["params"], layout.offsets, layout.numels, strict=True):
                step = self._param_step(p)
                state: dict[str, Any] = {"step": torch.tensor(float(step))}
                pieces: dict[str, list[np.ndarray]] = {}
                for shard, st in exported:
                    lo, hi = max(off, shard.start), min(off + numel, shard.start + shard.n)
                    if lo >= hi:
                        continue
                    for key, arr in st.items():
                        if key == "fixed_format":
                            continue
                        if key in ("fixed_em", "fixed_es"):
                            B = layout.block
                            blo, bhi = (lo - shard.start) // B, -(-(hi - shard.start) // B)
                            pieces.setdefault(key, []).append(arr[blo:bhi])
                        else:
                            pieces.setdefault(key, []).append(arr[lo - shard.start : hi - shard.start])
                for key, parts in pieces.items():
                    arr = np.concatenate(parts)
                    if key.startswith("fixed_"):
                        continue
                    state[key] = torch.from_numpy(arr.astype(np.float32)).reshape(p.shape)
                if "fixed_P" in pieces:
                    fmt = self.fixed_format
                    state[FIXED_STATE_KEY] = {
                        name: torch.from_numpy(np.concatenate(pieces[f"fixed_{name}"]).view(_signed(name)).copy())
                        for name in FIXED_ARRAYS
                    }
                    state[FIXED_STATE_KEY]["format"] = torch.tensor(
                        [fmt.block, fmt.g_bits, fmt.m_bits, fmt.s_bits, fmt.p_frac], dtype=torch.int64
                    )
                if numel and step:
                    self.state[p] = state

    def close(self) -> None:
        """Release the backends (device contexts, simulator processes)."""
        for partition in self._partitions:
            partition.close()
        for backend in self.backends.values():
            backend.close()
        self.backends = {}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        inner = super().__repr__()
        return inner.replace(
            self.__class__.__name__, f"{self.__class__.__name__}[{'+'.join(self.backend_names)}, {self.numerics}]", 1
        )


def _signed(name: str) -> np.dtype:
    """Dtypes that torch can hold: S (uint16) travels as int16 bits."""
    return {"P": np.int32, "M": np.int16, "em": np.int8, "S": np.int16, "es": np.int8}[name]


_NATIVE = {"P": np.int32, "M": np.int16, "em": np.int8, "S": np.uint16, "es": np.int8}


def _take_fixed_arrays(optimizer: HetAdam, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Before torch casts every state tensor to the parameter's float dtype, set
    the exact fixed-point arrays aside (keyed by the saved parameter id)."""
    state_dict = dict(state_dict)
    state = {}
    fixed = {}
    for pid, st in state_dict["state"].items():
        st = dict(st)
        if FIXED_STATE_KEY in st:
            fixed[pid] = {k: v.clone() for k, v in st.pop(FIXED_STATE_KEY).items()}
        state[pid] = st
    state_dict["state"] = state
    optimizer._loaded_fixed = fixed
    optimizer._loaded_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
    return state_dict


def _push_state_to_shards(optimizer: HetAdam) -> None:
    """After torch loaded the per-parameter state, rebuild every shard from it."""
    fixed_by_id = getattr(optimizer, "_loaded_fixed", {})
    ids = iter(getattr(optimizer, "_loaded_ids", []))
    fmt = optimizer.fixed_format
    fmt_tag = np.array([fmt.block, fmt.g_bits, fmt.m_bits, fmt.s_bits, fmt.p_frac])
    for group, partition in zip(optimizer.param_groups, optimizer._partitions, strict=True):
        layout = partition.layout
        B = layout.block
        flat: dict[str, np.ndarray] = {
            "exp_avg": np.zeros(layout.size, np.float32),
            "exp_avg_sq": np.zeros(layout.size, np.float32),
        }
        fixed_flat = {
            "fixed_P": np.zeros(layout.size, np.int32),
            "fixed_M": np.zeros(layout.size, np.int16),
            "fixed_em": np.full(layout.size // B, -128, np.int8),
            "fixed_S": np.zeros(layout.size, np.uint16),
            "fixed_es": np.full(layout.size // B, -128, np.int8),
        }
        all_fixed = True
        for p, off, numel in zip(group["params"], layout.offsets, layout.numels, strict=True):
            pid = next(ids, None)
            st = optimizer.state.get(p, {})
            if "step" in st:  # torch keeps the loaded tensor itself: don't share it
                st["step"] = torch.tensor(float(st["step"]))
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if key in st:
                    flat.setdefault(key, np.zeros(layout.size, np.float32))[off : off + numel] = (
                        st[key].detach().reshape(-1).float().numpy()
                    )
            fx = fixed_by_id.get(pid)
            if fx is not None and np.array_equal(fx["format"].numpy(), fmt_tag):
                for name in FIXED_ARRAYS:
                    arr = fx[name].numpy().view(_NATIVE[name])
                    if name in ("em", "es"):
                        fixed_flat[f"fixed_{name}"][off // B : off // B + arr.size] = arr
                    else:
                        fixed_flat[f"fixed_{name}"][off : off + numel] = arr
            elif numel:
                all_fixed = False
            st.pop(FIXED_STATE_KEY, None)
        params_flat = _flat_params(group["params"], layout)
        for shard in partition.shards:
            sl = slice(shard.start, shard.start + shard.n)
            bl = slice(shard.start // B, (shard.start + shard.n) // B)
            shard_state = {k: v[sl] for k, v in flat.items()}
            if all_fixed and fixed_by_id:
                for key, arr in fixed_flat.items():
                    shard_state[key] = arr[bl] if key in ("fixed_em", "fixed_es") else arr[sl]
                shard_state["fixed_format"] = fmt_tag
            shard.import_state(shard_state, params_flat[sl])
    optimizer._loaded_fixed = {}


def _flat_params(params: list[torch.Tensor], layout: GroupLayout) -> np.ndarray:
    flat = np.zeros(layout.size, np.float32)
    for p, off, numel in zip(params, layout.offsets, layout.numels, strict=True):
        flat[off : off + numel] = p.detach().reshape(-1).numpy()
    return flat


def _backend_names(backend: str | Sequence[str], numerics: str) -> list[str]:
    if isinstance(backend, str):
        if backend == "auto":
            names = [
                n
                for n in backends.NAMES
                if backends.availability(n).usable and numerics in backends.backend_class(n).numerics
            ]
            return names or ["cpu"]
        return [backend]
    names = list(backend)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"backend must name distinct backends, got {names}")
    return names


def _check_hyper(lr: float | torch.Tensor, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    lr_v = _float(lr)
    if not (lr_v >= 0.0 and math.isfinite(lr_v)):
        raise ValueError(f"Invalid learning rate: {lr_v} (lr must be a finite number >= 0)")
    if not (isinstance(eps, (int, float)) and eps > 0.0):
        raise ValueError(f"Invalid epsilon value: {eps} (eps must be > 0)")
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas} (betas must be a pair)")
    for i, b in enumerate(betas):
        b_v = _float(b)
        if not 0.0 <= b_v < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b_v} (betas must lie in [0, 1))")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay} (weight_decay must be >= 0)")


def _check_param(p: torch.Tensor) -> None:
    if p.is_complex():
        raise ValueError("complex parameters are not supported by HetAdam (view them as real with torch.view_as_real)")
    if p.dtype != torch.float32:
        raise ValueError(f"HetAdam streams float32 parameters; got a {p.dtype} parameter of shape {tuple(p.shape)}")
    if p.device.type != "cpu":
        raise ValueError(f"HetAdam takes CPU parameters; got one on {p.device} (move the model to the CPU)")
    if not p.is_contiguous():
        raise ValueError(f"HetAdam needs contiguous parameters; got a strided one of shape {tuple(p.shape)}")


def _check_grads(params: list[torch.Tensor], check_finite: bool) -> None:
    """Every check that can fail, before anything changes."""
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
    for p in params:
        if check_finite and p.grad is not None and not all_finite(p.grad):
            raise NonFiniteGradientError(
                f"a gradient of shape {tuple(p.shape)} holds NaN or Inf; the step was not applied "
                "(unscale or clip gradients first, or skip this step)"
            )
