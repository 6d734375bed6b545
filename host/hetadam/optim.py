"""`HetAdam`: a drop-in `torch.optim.Optimizer` that runs Adam on a backend.

It takes what torch.optim.Adam and AdamW take. The optimizer state stays
resident on the backend between steps (a shard per param group, or several
when a step is split across backends); `state_dict()` gathers it into torch's
per-parameter layout, so it loads into torch.optim.Adam and back, and moves
between backends and numerics.

Arguments are checked as torch checks them (validation.py), and a state dict
before it is loaded (state_io.py): what is refused changes nothing. Copies
(`copy.deepcopy`) and pickles carry the state and start their own backends.

Parameters may be float32, bfloat16 or float16, on any device, with any
strides. A contiguous float32 CPU tensor is stepped in place; any other gets a
float32 master on the host (masters.py) that the backends step, and the step
writes it back cast to the parameter's dtype, on its device, in its commit:
a bf16 model steps as torch.optim.Adam(W) on an fp32 master copy would, cast
to bf16 after each step.

Mixed precision: HetAdam takes torch.amp.GradScaler's contract of torch's
fused optimizers (`_step_supports_amp_scaling`): `scaler.step(opt)` hands it
the loss scale and the found-inf flag, the update divides the gradients by
the scale, and a step with an Inf or NaN gradient is skipped (nothing
changes, step counts included). `scaler.unscale_(opt)` before clipping works
as with any optimizer.

Deviations from torch.optim.Adam, by design:
- a parameter listed twice is refused (torch warns, then steps it twice), and
  so is eps=0;
- `fixed` refuses parameters outside its range (±128 in the default Q8.24)
  and hyper-parameters its registers cannot hold at some step, up front;
- a non-finite gradient raises `NonFiniteGradientError` before anything
  changes (torch would write NaN into the parameters; `check_finite=False`
  does as torch does);
- a step given a loss scale leaves the gradients in `.grad` as they were
  (torch's fused kernel writes them back unscaled): the update divides
  copies, so that a step that fails has changed nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from . import backends, state_io
from .backends.base import Backend, StepHyper
from .layout import GroupLayout
from .masters import GroupMasters, Master
from .numerics import DEFAULT, FixedFormat
from .overlap import GradStreams
from .runtime import Partition, ShardJob, ShardStats, StepRunner, needs_rebalance, plan_partition, rebalance
from .validation import (
    NonFiniteGradientError,
    check_backends,
    check_distinct,
    check_finite_grads,
    check_fixed_range,
    check_grads,
    check_group,
    check_hyper,
    check_numerics,
    check_param,
    check_split,
    param_label,
    scalar,
)

__all__ = ["HetAdam", "NonFiniteGradientError"]


class HetAdam(torch.optim.Optimizer):
    """Adam / AdamW on a heterogeneous backend.

    Args (beyond torch.optim.Adam's):
        backend: a backend name (``hetadam.backends.NAMES``), a list of names
            to split every step across, or ``"auto"`` (every backend that is
            usable here and starts; one that fails to start is skipped with a
            warning).
        numerics: ``"fp32"`` (torch's arithmetic) or ``"fixed"`` (the
            block fixed-point spec, bit-exact on every backend).
        fixed_format: widths of the fixed format (the default is what the
            hardware implements).
        stochastic_rounding: round fixed-point results stochastically with
            the spec's LFSR (seeded by `seed`) instead of to nearest even.
        step_timeout: seconds a backend may take for one step before the step
            fails (None: no limit).
        split: with several backends, their initial shares (finite weights
            >= 0, not all 0, in the order of `backend`; default: each
            backend's throughput on a probe).
        rebalance_every: with several backends, re-size their shares from the
            measured step timings every this many steps (0: never).
        check_finite: refuse a step whose gradients hold NaN or Inf before
            anything changes. It costs one read of the gradients (4 of the 28
            bytes per parameter that fp32 Adam moves); with False, non-finite
            gradients flow into the update as in torch.optim.Adam.
        overlap: copy each gradient towards its float32 master from a hook
            as soon as backward has made it, so that `step` waits only for
            what is left (overlap.py; bit for bit the same result).
    """

    _step_supports_amp_scaling = True
    """GradScaler passes the loss scale and the found-inf flag to `step` (see there)."""

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
        overlap: bool = False,
    ) -> None:
        check_hyper(lr, betas, eps, weight_decay)
        check_numerics(numerics, amsgrad)
        self.numerics = numerics
        self.fixed_format = fixed_format
        self.stochastic_rounding = stochastic_rounding
        self.seed = seed
        self.step_timeout = step_timeout
        self.rebalance_every = rebalance_every
        self.check_finite = check_finite
        self.overlap = overlap
        self.split = None if split is None else list(split)
        self.saturated = 0
        """Elements saturated by the fixed format in the last step."""
        self._steps_taken = 0
        self.backend_names: list[str] = []
        self.backends: dict[str, Backend] = {}
        self._partitions: list[Partition] = []
        self._masters: list[GroupMasters] = []
        """Per param group, the float32 masters of the parameters not stepped in place."""
        self._runner = StepRunner()
        self._streams = GradStreams() if overlap else None
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        try:
            if backend == "auto":
                self.backends = backends.create_usable(numerics)
                check_split(self.split, len(self.backends))
            else:
                names = check_backends(backend, numerics)
                check_split(self.split, len(names))  # before any backend starts
                for name in names:
                    self.backends[name] = backends.create(name)
            self.backend_names = list(self.backends)
            super().__init__(params, defaults)
        except BaseException:
            self.close()
            raise

    # -- param groups ------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's add_param_group, with every check first: a refused group
        leaves the optimizer as it was."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        params = param_group["params"]
        if not isinstance(params, (torch.Tensor, set)):  # a set: torch refuses it
            param_group["params"] = params = list(params)
        entries = [params] if isinstance(params, torch.Tensor) else list(params)
        tensors = [e[1] if isinstance(e, tuple) else e for e in entries]
        names = [e[0] for e in entries] if entries and all(isinstance(e, tuple) for e in entries) else None
        labels = [param_label(len(self.param_groups), i, p, names) for i, p in enumerate(tensors)]
        for p, label in zip(tensors, labels, strict=True):
            check_param(p, label)
        check_distinct(tensors, labels, [p for group in self.param_groups for p in group["params"]])
        check_group({**self.defaults, **param_group}, self.numerics, self.fixed_format)
        if self.numerics == "fixed":
            for p, label in zip(tensors, labels, strict=True):
                check_fixed_range(p, label, self.fixed_format)
        super().add_param_group(param_group)
        try:
            partition, masters = self._plan(len(self.param_groups) - 1, None)
        except BaseException:
            self.param_groups.pop()
            raise
        self._partitions.append(partition)
        self._masters.append(masters)
        self._watch(len(self.param_groups) - 1)

    def _watch(self, index: int) -> None:
        """With overlap, hook the parameters of param group `index` (overlap.py)."""
        if self._streams is None:
            return
        ref = weakref.ref(self)
        for k, p in enumerate(self.param_groups[index]["params"]):

            def lookup(k: int = k) -> Master | None:
                opt = ref()
                return None if opt is None else opt._masters[index].masters.get(k)

            self._streams.watch(p, lookup)

    def _plan(self, index: int, saved: list[Any] | None) -> tuple[Partition, GroupMasters]:
        """Shards and masters for param group `index`, holding the per-parameter
        states `saved` (torch's layout, checked by state_io; None: a fresh state)."""
        group = self.param_groups[index]
        params = group["params"]
        layout = GroupLayout.of(params, self.fixed_format.block)
        masters = GroupMasters()
        masters.sync(params, lambda: self._labels(index, group))
        flat: dict[str, Any] = {}
        if saved is not None:
            labels = self._labels(index, group)
            fmt = self.fixed_format
            decoded = state_io.decode_group(saved, params, labels, layout, fmt, self.numerics == "fixed")
            flat = decoded.flat
            masters.load(params, decoded.masters)
        partition = plan_partition(layout.size, self.backends, self.numerics, self.fixed_format, self.split)
        partition.layout = layout
        try:
            state_io.import_group(partition.shards, flat, layout.flatten(masters.hosts(params)), layout.block)
        except BaseException:
            partition.close()
            raise
        return partition, masters

    def _plan_new_groups(self) -> None:
        """Plan the groups appended to `param_groups` directly (not through
        add_param_group) as add_param_group would; refuse other changes of the
        list, which the resident state cannot follow."""
        if len(self.param_groups) < len(self._partitions):
            raise ValueError(
                f"param_groups holds {len(self.param_groups)} groups, but the optimizer planned "
                f"{len(self._partitions)}: groups cannot be removed; create a new optimizer instead"
            )
        for i, (group, partition) in enumerate(zip(self.param_groups, self._partitions, strict=False)):
            if tuple(p.numel() for p in group["params"]) != partition.layout.numels:
                raise ValueError(
                    f"the parameters of param group {i} changed after it was added: the optimizer keeps their "
                    "state in place, so add new parameters with add_param_group instead"
                )
        new = self.param_groups[len(self._partitions) :]
        del self.param_groups[len(self._partitions) :]
        for k, group in enumerate(new):
            index = len(self.param_groups)
            try:
                self.add_param_group(group)
            except BaseException as exc:
                self.param_groups.extend(new[k:])  # left as the user put them: the next call refuses again
                if isinstance(exc, (ValueError, TypeError)):
                    raise type(exc)(
                        f"param group {index}, appended to param_groups directly, is refused: {exc} "
                        "(fix or remove it; add_param_group checks a group as it is added)"
                    ) from exc
                raise

    # -- the step ----------------------------------------------------------

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        closure: Callable[[], float] | None = None,
        *,
        grad_scale: torch.Tensor | None = None,
        found_inf: torch.Tensor | None = None,
    ) -> float | None:
        """One Adam step of every param group, as one transaction (runtime.py):
        checks, then every shard's share, then the commit; on any failure
        nothing changed and the error propagates.

        grad_scale, found_inf: the AMP contract of torch's fused optimizers
        (GradScaler sets them as attributes of the optimizer, which this reads
        when they are not given): the gradients are divided by `grad_scale`
        for the update (the tensors in `.grad` stay as they are), and a
        nonzero `found_inf` skips the step: nothing changes, step counts included."""
        self._plan_new_groups()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._streams is not None:
            self._streams.wait()
        grad_scale = getattr(self, "grad_scale", None) if grad_scale is None else grad_scale
        found_inf = getattr(self, "found_inf", None) if found_inf is None else found_inf
        if found_inf is not None and bool(found_inf.ne(0).any()):
            return loss
        scale = None if grad_scale is None else grad_scale.detach().to("cpu", torch.float32)
        work: list[tuple[int, dict[str, Any], Partition, GroupMasters, list[int]]] = []
        for i, (group, partition, masters) in enumerate(
            zip(self.param_groups, self._partitions, self._masters, strict=True)
        ):
            params = group["params"]
            live = [k for k, p in enumerate(params) if p.grad is not None]
            if live:
                check_grads(params)
                masters.sync(params, lambda i=i, group=group: self._labels(i, group))
                work.append((i, group, partition, masters, live))
        if self.numerics == "fixed":  # the registers must hold every step's scalars
            for _, group, _, _, _ in work:
                check_group(group, self.numerics, self.fixed_format)
        self._runner.fence([s for _, _, partition, _, _ in work for s in partition.shards], self.step_timeout)
        hosts = [masters.stage_grads(group["params"], scale) for _, group, _, masters, _ in work]
        if self.check_finite:
            check_finite_grads(h.grad for host in hosts for h in host)
        if self._detect_param_changes:
            self._take_changed_params(work, hosts)
        planned: list[tuple[Partition, list[ShardJob]]] = []
        for (_, group, partition, _, live), host in zip(work, hosts, strict=True):
            params = group["params"]
            steps = [self._param_step(p) + 1 for p in params]
            hyper = self._hyper(group, max(steps[k] for k in live))
            planned.append((partition, partition.jobs(host, steps, hyper)))

        def on_commit() -> None:  # inside the commit: step counts and parameters move with the state
            for _, group, _, masters, live in work:
                params = group["params"]
                for k in live:
                    self.state[params[k]]["step"] = torch.tensor(float(self._param_step(params[k]) + 1))
                masters.write_back(params, live)

        results = self._runner.run([job for _, jobs in planned for job in jobs], self.step_timeout, on_commit)
        at = 0
        for partition, jobs in planned:
            partition.record(jobs, results[at : at + len(jobs)])
            at += len(jobs)
        self.saturated = sum(r.saturated for r in results)
        self._steps_taken += 1
        if self.rebalance_every and self._steps_taken % self.rebalance_every == 0:
            self._rebalance()
        return loss

    _detect_param_changes = True
    """Compare the parameters with the resident copy at each step (the bench
    turns it off to measure what it costs)."""

    def _take_changed_params(
        self,
        work: list[tuple[int, dict[str, Any], Partition, GroupMasters, list[int]]],
        hosts: list[list[torch.Tensor]],
    ) -> None:
        """Parameters changed outside the optimizer since its last step (an
        in-place op, `.data`, `model.load_state_dict`) are where this step
        starts, as in torch: the masters take what changed in their parameters
        (masters.py), then each live parameter (or its master) is compared with
        the shards' resident copy, the changed ones are checked (a `fixed`
        range), then re-imported, moments kept."""
        changed = []
        for (i, group, partition, masters, live), host in zip(work, hosts, strict=True):
            masters.take_changed(group["params"], live)
            found = partition.changed_params(host, live)
            if found and self.numerics == "fixed":
                labels = self._labels(i, group)
                for k in found:
                    check_fixed_range(host[k], labels[k], self.fixed_format)
            changed.append((partition, host, found))
        for partition, host, found in changed:  # every check passed: nothing fails from here
            if found:
                partition.reimport_params(host, found)

    @property
    def step_stats(self) -> list[ShardStats]:
        """Per shard of the last step: backend, elements, seconds, bytes on the wire."""
        return [s for partition in self._partitions for s in partition.stats]

    def _rebalance(self) -> None:
        """Re-size multi-backend shares to the throughput the steps measured. A
        re-balance that fails warns and keeps the shares (runtime.rebalance):
        the step before it was committed, so it must not fail."""
        for i, (group, partition) in enumerate(zip(self.param_groups, self._partitions, strict=True)):
            weights = partition.measured_weights()
            if weights is None or not needs_rebalance(partition, weights, self.fixed_format.block):
                continue
            if self._runner.busy(partition.shards):  # an abandoned step still runs there
                continue
            params_flat = partition.layout.flatten(self._masters[i].hosts(group["params"]))
            self._partitions[i] = rebalance(
                partition, params_flat, self.backends, self.numerics, self.fixed_format, weights
            )

    def _param_step(self, p: torch.Tensor) -> int:
        step = self.state.get(p, {}).get("step")
        return 0 if step is None else int(step)

    def _hyper(self, group: dict[str, Any], step: int) -> StepHyper:
        beta1, beta2 = group["betas"]
        return StepHyper(
            lr=scalar(group["lr"]),
            beta1=scalar(beta1),
            beta2=scalar(beta2),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            step=step,
            decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)),
            amsgrad=bool(group["amsgrad"]),
            maximize=bool(group["maximize"]),
            seed=self.seed,
            stochastic=self.stochastic_rounding,
            check_finite=self.check_finite,
        )

    # -- state -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        self._plan_new_groups()
        self._export_state()
        return super().state_dict()

    def _export_state(self) -> None:
        """Copy each shard's resident state into torch's per-parameter layout."""
        self._runner.fence([s for partition in self._partitions for s in partition.shards], self.step_timeout)
        for group, partition, masters in zip(self.param_groups, self._partitions, self._masters, strict=True):
            params = group["params"]
            steps = [self._param_step(p) for p in params]
            exported = state_io.export_group(
                partition.shards, partition.layout, params, steps, masters.export(len(params))
            )
            for p, state in zip(params, exported, strict=True):
                if state is not None:
                    self.state[p] = state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict, with every check first: a state dict that
        does not fit (another model, a truncated array, invalid
        hyper-parameters) raises ValueError and changes nothing. Param groups
        saved without some option (an older torch) take the default, as torch
        does. The checks read the state dict as given, before the optimizer's
        load_state_dict pre-hooks run. Torch's own per-parameter state then
        keeps only the step counts: the moments live on the backends (and in
        the next state_dict()), not a second time in host or device memory."""
        self._plan_new_groups()
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has a different number of parameter groups: {len(saved_groups)}, "
                f"the optimizer has {len(self.param_groups)}"
            )
        groups = [{**self.defaults, **saved} for saved in saved_groups]
        decoded = []
        for i, (group, saved, partition) in enumerate(zip(self.param_groups, groups, self._partitions, strict=True)):
            params = group["params"]
            self._masters[i].sync(params, lambda i=i, group=group: self._labels(i, group))
            if len(saved["params"]) != len(params):
                raise ValueError(
                    f"loaded state dict contains a parameter group that doesn't match the size of optimizer's "
                    f"group: group {i} has {len(saved['params'])} parameters, the optimizer's {len(params)}"
                )
            try:
                check_group(saved, self.numerics, self.fixed_format)
            except ValueError as exc:
                raise ValueError(f"loaded param group {i}: {exc}") from exc
            labels = self._labels(i, group)
            if self.numerics == "fixed":
                for p, label in zip(params, labels, strict=True):
                    check_fixed_range(p, label, self.fixed_format)
            saved_states = [state_dict["state"].get(pid) for pid in saved["params"]]
            decoded.append(
                state_io.decode_group(
                    saved_states, params, labels, partition.layout, self.fixed_format, self.numerics == "fixed"
                )
            )
        self._runner.fence([s for partition in self._partitions for s in partition.shards], self.step_timeout)
        super().load_state_dict(
            {
                **state_dict,
                "param_groups": groups,
                "state": {pid: {k: v for k, v in st.items() if k == "step"} for pid, st in state_dict["state"].items()},
            }
        )
        for group, partition, masters, loaded in zip(
            self.param_groups, self._partitions, self._masters, decoded, strict=True
        ):
            params = group["params"]
            for p, step in zip(params, loaded.steps, strict=True):
                if p in self.state:  # torch keeps the saved step tensor itself: don't share it
                    self.state[p]["step"] = torch.tensor(float(step))
            masters.load(params, loaded.masters)
            layout = partition.layout
            state_io.import_group(partition.shards, loaded.flat, layout.flatten(masters.hosts(params)), layout.block)

    def _labels(self, group_index: int, group: dict[str, Any]) -> list[str]:
        names = group.get("param_names")
        return [param_label(group_index, i, p, names) for i, p in enumerate(group["params"])]

    _CONFIG = (
        "numerics",
        "fixed_format",
        "stochastic_rounding",
        "seed",
        "step_timeout",
        "rebalance_every",
        "check_finite",
        "overlap",
        "split",
        "backend_names",
        "saturated",
        "_steps_taken",
    )
    """What a copy or a pickle carries beyond torch's state; the backends are
    created again from their names and the state moves through state_io."""

    def __getstate__(self) -> dict[str, Any]:
        self._plan_new_groups()
        self._export_state()
        state = super().__getstate__()
        state["hetadam"] = {key: getattr(self, key) for key in self._CONFIG}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        config = state.pop("hetadam", None)
        super().__setstate__(state)
        if config is None:  # torch's load_state_dict sets state and param_groups this way
            return
        self.__dict__.update(config)
        self.backends = {}
        self._partitions = []
        self._masters = []
        self._runner = StepRunner()
        self._streams = GradStreams() if self.overlap else None
        try:
            for name in self.backend_names:
                self.backends[name] = backends.create(name)
            for i, group in enumerate(self.param_groups):
                partition, masters = self._plan(i, [self.state.get(p) for p in group["params"]])
                self._partitions.append(partition)
                self._masters.append(masters)
                self._watch(i)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the backends (device contexts, simulator processes) and the overlap hooks."""
        if self._streams is not None:
            self._streams.close()
            self._streams = None
        self._runner.close()
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
