"""The optimizer state in and out of torch's layout: exact round trips, every
way a loaded state dict can be wrong (refused with nothing changed), older
torch state dicts, zero-size parameters, copies and pickles."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from backend_table import BackendInfo, params_over_backends

from hetadam import HetAdam
from hetadam.numerics import DEFAULT, FixedState
from hetadam.state_io import FIXED_ARRAYS, FIXED_KEYS, format_tag


def make_model(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 45), torch.nn.Tanh(), torch.nn.Linear(45, 3))


def train(
    model: torch.nn.Module, opt: torch.optim.Optimizer, steps: range, adjust: Callable[[], None] | None = None
) -> None:
    """Steps on seeded batches; `adjust` changes the gradients before each step."""
    for i in steps:
        x = torch.randn(16, model[0].in_features, generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        model(x).square().mean().backward()
        if adjust is not None:
            adjust()
        opt.step()


def without_grad(model: torch.nn.Module, name: str) -> Callable[[], None]:
    """An `adjust` that leaves one parameter without a gradient (it does not step)."""

    def adjust() -> None:
        model.get_parameter(name).grad = None

    return adjust


def same(a: Any, b: Any) -> bool:
    """Deep, exact equality of state dicts (tensors by value and dtype)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@torch.no_grad()
def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# -- the codec ---------------------------------------------------------------------


def test_the_codec_describes_the_fixed_state_arrays() -> None:
    zeros = FixedState.zeros(100, DEFAULT)
    for a in FIXED_ARRAYS:
        arr = getattr(zeros, a.name)
        assert arr.dtype == a.native
        assert arr.size == a.length(100, DEFAULT.block)
        assert np.dtype(a.portable).itemsize == np.dtype(a.native).itemsize
        assert (arr == a.fill()).all()
    assert FIXED_KEYS == ("fixed_P", "fixed_M", "fixed_em", "fixed_S", "fixed_es")
    assert format_tag(DEFAULT).tolist() == [32, 16, 16, 16, 24]


# -- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
def test_a_parameter_that_never_stepped_keeps_the_round_trip_exact(numerics: str) -> None:
    a = make_model()
    opt_a = HetAdam(a.parameters(), lr=1e-2, numerics=numerics)
    train(a, opt_a, range(3), without_grad(a, "2.bias"))
    b = copy.deepcopy(a)
    opt_b = HetAdam(b.parameters(), lr=1e-2, numerics=numerics)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    train(a, opt_a, range(3, 6))
    train(b, opt_b, range(3, 6))
    assert params_equal(a, b)
    assert same(opt_a.state_dict(), opt_b.state_dict())


def fixed_backends() -> list:
    return params_over_backends("fixed", exclude=("opencl-int", "driver-fake"))  # HetAdam names registered ones


@pytest.mark.parametrize("info", fixed_backends())
def test_a_fixed_state_moves_exactly_from_the_cpu_to_every_backend(info: BackendInfo) -> None:
    torch.manual_seed(3)
    a = torch.nn.Sequential(torch.nn.Linear(4, 3))
    b = copy.deepcopy(a)
    opt_a = HetAdam(a.parameters(), lr=1e-2, numerics="fixed", stochastic_rounding=True, seed=9)
    train(a, opt_a, range(2))
    opt_b = HetAdam(b.parameters(), lr=1e-2, numerics="fixed", stochastic_rounding=True, seed=9, backend=info.name)
    try:
        b.load_state_dict(a.state_dict())
        opt_b.load_state_dict(opt_a.state_dict())
        train(a, opt_a, range(2, 4))
        train(b, opt_b, range(2, 4))
        assert params_equal(a, b)
        assert same(opt_a.state_dict()["state"], opt_b.state_dict()["state"])
    finally:
        opt_b.close()


# -- a state dict that does not fit is refused, and nothing changes ---------------

Corrupt = Callable[[dict[str, Any]], None]


def _set(key: str, value: Callable[[Any], Any], pid: int = 0) -> Corrupt:
    def corrupt(sd: dict[str, Any]) -> None:
        sd["state"][pid][key] = value(sd["state"][pid][key])

    return corrupt


def _set_fixed(name: str, value: Callable[[torch.Tensor], Any], pid: int = 0) -> Corrupt:
    def corrupt(sd: dict[str, Any]) -> None:
        sd["state"][pid]["fixed"][name] = value(sd["state"][pid]["fixed"][name])

    return corrupt


def _group(key: str, value: Any) -> Corrupt:
    def corrupt(sd: dict[str, Any]) -> None:
        sd["param_groups"][0][key] = value

    return corrupt


def _drop(key: str, pid: int = 0) -> Corrupt:
    def corrupt(sd: dict[str, Any]) -> None:
        del sd["state"][pid][key]

    return corrupt


def _drop_fixed(name: str) -> Corrupt:
    def corrupt(sd: dict[str, Any]) -> None:
        del sd["state"][0]["fixed"][name]

    return corrupt


def _nan_moment_without_fixed(sd: dict[str, Any]) -> None:
    for st in sd["state"].values():
        st.pop("fixed", None)
    sd["state"][1]["exp_avg_sq"][3] = float("nan")


def _another_model(sd: dict[str, Any]) -> None:
    """The state of a model with as many parameters, of other shapes."""
    torch.manual_seed(1)
    other = torch.nn.Sequential(torch.nn.Linear(45, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    opt = HetAdam(other.parameters(), lr=1e-2, numerics="fixed")
    for p in other.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    sd.update(copy.deepcopy(opt.state_dict()))


def _extra_group(sd: dict[str, Any]) -> None:
    sd["param_groups"].append({**sd["param_groups"][0], "params": []})


def _short_group(sd: dict[str, Any]) -> None:
    sd["param_groups"][0]["params"].pop()


CORRUPTIONS: list[tuple[str, Corrupt, str]] = [
    ("truncated-P", _set_fixed("P", lambda t: t[:-1]), r"fixed 'P' of .* is int32\[314\]; int32\[315\] expected"),
    ("truncated-em", _set_fixed("em", lambda t: t[:-1]), r"fixed 'em' of .* is int8\[9\]; int8\[10\] expected"),
    ("long-es", _set_fixed("es", lambda t: torch.cat([t, t])), r"fixed 'es' .* int8\[20\]; int8\[10\] expected"),
    ("P-int64", _set_fixed("P", lambda t: t.long()), r"fixed 'P' .* is int64\[315\]"),
    ("S-float", _set_fixed("S", lambda t: t.float()), r"fixed 'S' .* is float32\[315\]; int16\[315\]"),
    ("P-list", _set_fixed("P", lambda t: t.tolist()), r"fixed 'P' .* is a list, not a tensor"),
    ("no-es", _drop_fixed("es"), "lacks es"),
    ("tag-short", _set_fixed("format", lambda t: t[:4]), r"format tag .* is int64\[4\]"),
    ("tag-block-0", _set_fixed("format", lambda t: torch.tensor([0, 16, 16, 16, 24])), "not a format: block"),
    ("fixed-not-dict", _set("fixed", lambda v: [1, 2]), "'fixed' state of .* is a list"),
    ("another-model", _another_model, r"has shape \(7, 45\), the parameter \(45, 7\)"),
    ("exp-avg-shape", _set("exp_avg", lambda t: t.reshape(-1)), r"'exp_avg' of .* has shape \(315,\)"),
    ("exp-avg-int", _set("exp_avg", lambda t: t.int()), "'exp_avg' of .* is a torch.int32 tensor"),
    ("no-exp-avg-sq", _drop("exp_avg_sq", pid=2), "has no 'exp_avg_sq'"),
    ("no-step", _drop("step", pid=3), "has no 'step'"),
    ("step-negative", _set("step", lambda t: torch.tensor(-1.0)), "step count is a whole number >= 0"),
    ("step-fraction", _set("step", lambda t: 2.5), "step count is a whole number >= 0"),
    ("step-pair", _set("step", lambda t: torch.tensor([1.0, 2.0])), "a step count is one number"),
    ("nan-moment", _nan_moment_without_fixed, "holds NaN or Inf"),
    ("extra-group", _extra_group, "different number of parameter groups: 2, the optimizer has 1"),
    ("short-group", _short_group, "doesn't match the size of optimizer's group: group 0 has 3 parameters"),
    ("lr-negative", _group("lr", -1.0), "loaded param group 0: Invalid learning rate: -1.0"),
    ("beta1-one", _group("betas", (1.0, 0.999)), "Invalid beta parameter at index 0"),
    ("amsgrad-fixed", _group("amsgrad", True), "amsgrad=True is not supported by numerics='fixed'"),
    ("eps-grows", _group("eps", 1e39), "eps=1e\\+39 is too large"),
]


@pytest.mark.parametrize(("corrupt", "message"), [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
def test_a_state_dict_that_does_not_fit_is_refused_with_nothing_changed(corrupt: Corrupt, message: str) -> None:
    source = make_model()
    opt_source = HetAdam(source.parameters(), lr=1e-2, numerics="fixed")
    train(source, opt_source, range(4))
    model = make_model(1)
    opt = HetAdam(model.parameters(), lr=3e-3, numerics="fixed")
    train(model, opt, range(2))
    twin_model = copy.deepcopy(model)
    twin = HetAdam(twin_model.parameters(), lr=3e-3, numerics="fixed")
    twin.load_state_dict(opt.state_dict())
    before = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(opt_source.state_dict())
    corrupt(bad)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(bad)
    assert same(opt.state_dict(), before)
    assert params_equal(model, twin_model)
    train(model, opt, range(2, 4))  # and it goes on as if the load had not been tried
    train(twin_model, twin, range(2, 4))
    assert params_equal(model, twin_model)


def test_a_state_dict_of_another_model_is_refused_in_fp32_too() -> None:
    other = torch.nn.Sequential(torch.nn.Linear(45, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    opt_other = torch.optim.Adam(other.parameters())
    for p in other.parameters():
        p.grad = torch.ones_like(p)
    opt_other.step()
    model = make_model()
    opt = HetAdam(model.parameters(), lr=1e-2)
    train(model, opt, range(2))
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"'exp_avg' of param group 0, parameter 0 .* has shape \(7, 45\)"):
        opt.load_state_dict(opt_other.state_dict())
    assert same(opt.state_dict(), before)


def test_a_fixed_state_in_another_format_loads_through_its_floats() -> None:
    from hetadam.numerics import FixedFormat

    a = make_model()
    opt_a = HetAdam(a.parameters(), lr=1e-2, numerics="fixed", fixed_format=FixedFormat(p_frac=20))
    train(a, opt_a, range(3))
    saved = opt_a.state_dict()
    opt_b = HetAdam(a.parameters(), lr=1e-2, numerics="fixed")
    opt_b.load_state_dict(saved)
    loaded = opt_b.state_dict()["state"]
    for i, st in saved["state"].items():
        assert torch.equal(loaded[i]["fixed"]["format"], torch.from_numpy(format_tag(DEFAULT)))
        assert torch.allclose(loaded[i]["exp_avg"], st["exp_avg"], rtol=1e-3, atol=1e-9)


# -- what older and other optimizers saved ----------------------------------------

OLD_TORCH_KEYS = ("maximize", "amsgrad", "decoupled_weight_decay", "foreach", "capturable", "differentiable", "fused")


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
def test_a_state_dict_of_an_older_torch_takes_the_missing_options_from_the_defaults(numerics: str) -> None:
    ref = make_model()
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2, fused=True)
    train(ref, opt_ref, range(3))
    old = copy.deepcopy(opt_ref.state_dict())
    for group in old["param_groups"]:
        for key in OLD_TORCH_KEYS:
            del group[key]
    ours = copy.deepcopy(ref)
    opt = HetAdam(ours.parameters(), lr=1e-2, numerics=numerics)
    opt.load_state_dict(old)
    assert {k: opt.param_groups[0][k] for k in ("maximize", "amsgrad", "decoupled_weight_decay")} == {
        "maximize": False,
        "amsgrad": False,
        "decoupled_weight_decay": False,
    }
    train(ref, opt_ref, range(3, 6))
    train(ours, opt, range(3, 6))
    if numerics == "fp32":
        assert params_equal(ref, ours)
    else:
        with torch.no_grad():
            diff = max(float((p - q).abs().max()) for p, q in zip(ref.parameters(), ours.parameters(), strict=True))
        assert diff < 1e-3


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
def test_a_zero_size_parameter_saves_a_state_torch_adam_can_step_from(numerics: str) -> None:
    model = make_model()
    empty = torch.nn.Parameter(torch.zeros(0, 3))
    params = [*model.parameters(), empty]
    opt = HetAdam(params, lr=1e-2, numerics=numerics)
    train(model, opt, range(2), lambda: setattr(empty, "grad", torch.zeros(0, 3)))
    saved = opt.state_dict()
    st = saved["state"][len(params) - 1]
    assert st["exp_avg"].shape == (0, 3) and st["exp_avg_sq"].shape == (0, 3)
    assert float(st["step"]) == 2.0
    twin = copy.deepcopy(model)
    twin_empty = torch.nn.Parameter(torch.zeros(0, 3))
    ref = torch.optim.Adam([*twin.parameters(), twin_empty], lr=1e-2)
    ref.load_state_dict(saved)
    train(twin, ref, range(2, 3), lambda: setattr(twin_empty, "grad", torch.zeros(0, 3)))  # torch's Adam steps
    assert float(ref.state[twin_empty]["step"]) == 3.0
    back = HetAdam([*make_model().parameters(), torch.nn.Parameter(torch.zeros(0, 3))], numerics=numerics)
    back.load_state_dict(ref.state_dict())


# -- copies and pickles ------------------------------------------------------------


def _deepcopy(obj: Any) -> Any:
    return copy.deepcopy(obj)


def _pickle(obj: Any) -> Any:
    return pickle.loads(pickle.dumps(obj))


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
@pytest.mark.parametrize("clone", [_deepcopy, _pickle], ids=["deepcopy", "pickle"])
def test_a_copy_or_a_pickle_steps_exactly_as_the_original(numerics: str, clone: Callable[[Any], Any]) -> None:
    model = make_model()
    options = {"stochastic_rounding": True, "seed": 5} if numerics == "fixed" else {"amsgrad": True}
    opt = HetAdam(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 3e-3}],
        lr=1e-2,
        numerics=numerics,
        **options,
    )
    train(model, opt, range(3), without_grad(model, "2.bias"))
    model2, opt2 = clone((model, opt))
    assert type(opt2) is HetAdam and opt2.numerics == numerics and opt2.backend_names == ["cpu"]
    assert opt2.seed == opt.seed and opt2.stochastic_rounding == opt.stochastic_rounding
    train(model, opt, range(3, 6))
    train(model2, opt2, range(3, 6))
    assert params_equal(model, model2)
    assert same(opt.state_dict(), opt2.state_dict())
