"""What HetAdam refuses before anything changes: hyper-parameters (as torch
refuses them), parameters, backends, split weights, parameters outside the
fixed format's range, hyper-parameters the fixed registers cannot hold at
some step; and that a refused param group leaves the optimizer working."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from hetadam import HetAdam
from hetadam.numerics import DEFAULT, FixedFormat
from hetadam.numerics.formats import ALPHA_BITS, RATIO_FRAC
from hetadam.validation import check_fixed_range, fixed_range


def make_model(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def step_on(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(seed))
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


@dataclass(frozen=True)
class ErrorInput:
    """Constructor arguments HetAdam refuses, as torch's ErrorOptimizerInput."""

    kwargs: dict[str, Any]
    error: type[Exception]
    regex: str
    id: str
    params: Any = field(default=None)


T = torch.tensor
ERRORS = [
    ErrorInput({"lr": -1.0}, ValueError, "Invalid learning rate: -1.0", "negative-lr"),
    ErrorInput({"lr": float("nan")}, ValueError, "Invalid learning rate", "nan-lr"),
    ErrorInput({"lr": T([1e-3, 1e-3])}, ValueError, "Tensor lr must be 1-element", "two-element-lr"),
    ErrorInput({"betas": (1.0, 0.999)}, ValueError, "Invalid beta parameter at index 0: 1.0", "beta1-one"),
    ErrorInput({"betas": (0.9, -0.1)}, ValueError, "Invalid beta parameter at index 1", "beta2-negative"),
    ErrorInput({"betas": (T(0.9), 0.999)}, ValueError, "betas must be either both floats or both Tensors", "mixed"),
    ErrorInput({"betas": (0.9, T(0.999))}, ValueError, "betas must be either both floats or both Tensors", "mixed2"),
    ErrorInput({"betas": (T([0.9, 0.9]), T(0.999))}, ValueError, r"Tensor betas\[0\] must be 1-element", "beta-t"),
    ErrorInput({"betas": (0.9,)}, ValueError, "betas must be a pair", "one-beta"),
    ErrorInput({"eps": 0.0}, ValueError, "Invalid epsilon value", "zero-eps"),
    ErrorInput({"eps": -1e-8}, ValueError, "Invalid epsilon value", "negative-eps"),
    ErrorInput({"weight_decay": -0.1}, ValueError, "Invalid weight_decay value", "negative-wd"),
    ErrorInput({"weight_decay": float("nan")}, ValueError, "Invalid weight_decay value", "nan-wd"),
    ErrorInput({"numerics": "fp16"}, ValueError, "numerics must be one of", "numerics"),
    ErrorInput({"amsgrad": True, "numerics": "fixed"}, ValueError, "amsgrad=True is not supported", "amsgrad-fixed"),
    ErrorInput({"backend": "tpu"}, ValueError, "unknown backend 'tpu'", "unknown-backend"),
    ErrorInput({"backend": ["cpu", "cpu"]}, ValueError, "distinct backends", "twice-the-same-backend"),
    ErrorInput({"backend": "hls-csim"}, ValueError, "does not support numerics='fp32'", "backend-numerics"),
    ErrorInput({"split": [1.0, 2.0]}, ValueError, "split gives 2 weights for 1 backends", "split-count"),
    ErrorInput({"split": [-1.0]}, ValueError, "split weight 0 is -1.0", "split-negative"),
    ErrorInput({"split": [float("nan")]}, ValueError, "split weight 0 is nan", "split-nan"),
    ErrorInput({"split": [0.0]}, ValueError, "all zero", "split-zero-sum"),
    ErrorInput({"split": ["1"]}, ValueError, "split weight 0 is '1'", "split-string"),
    # fixed: registers that hold step 1 but not every later step (the bias corrections tend to 1)
    ErrorInput({"numerics": "fixed", "eps": 1e39}, ValueError, "eps=1e\\+39 is too large .* later steps", "eps-grows"),
    ErrorInput({"numerics": "fixed", "lr": 1e6}, ValueError, "lr=1e\\+06 is too large .* later steps", "lr-grows"),
    ErrorInput({"numerics": "fixed", "eps": 1e-40}, ValueError, "choose a larger eps", "eps-tiny"),
    ErrorInput({"numerics": "fixed", "lr": 1e7}, ValueError, "too large for the fixed format", "lr-step-1"),
    # parameters
    ErrorInput(
        {}, ValueError, r"parameter 0 \(shape \(3,\)\) is torch.float64", "float64", torch.zeros(3, dtype=torch.float64)
    ),
    ErrorInput({}, ValueError, "complex", "complex", torch.zeros(3, dtype=torch.complex64)),
    ErrorInput({}, ValueError, "meta device and holds no values", "meta", torch.zeros(3, device="meta")),
    ErrorInput({}, ValueError, "dense parameters", "sparse", torch.zeros(3).to_sparse()),
    ErrorInput({}, TypeError, "can only optimize Tensors", "not-a-tensor", [3.0]),
]


@pytest.mark.parametrize("case", ERRORS, ids=[e.id for e in ERRORS])
def test_bad_arguments_are_refused_as_torch_refuses_them(case: ErrorInput) -> None:
    if case.params is None:
        params: Any = make_model().parameters()
    elif isinstance(case.params, torch.Tensor):
        params = [case.params.requires_grad_()]
    else:
        params = case.params
    with pytest.raises(case.error, match=case.regex):
        HetAdam(params, **case.kwargs)


def test_valid_tensor_hyper_parameters_are_accepted_and_train_as_torch() -> None:
    a, b = make_model(), make_model()
    ours = HetAdam(a.parameters(), lr=T([1e-2]), betas=(T(0.8), T([0.99])))
    ref = torch.optim.Adam(b.parameters(), lr=T([1e-2]), betas=(T(0.8), T([0.99])), fused=True)
    for i in range(3):
        step_on(a, ours, i)
        step_on(b, ref, i)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_split_weights_for_two_backends_are_checked_before_any_backend_starts() -> None:
    with pytest.raises(ValueError, match="split weight 1 is -2"):
        HetAdam(make_model().parameters(), numerics="fixed", backend=["cpu", "hls-csim"], split=[1.0, -2.0])


# -- a parameter listed twice ------------------------------------------------------

IN_TWO_GROUPS = r"some parameters appear in more than one parameter group: .* is already in another group"


def test_a_parameter_listed_twice_in_a_group_is_refused() -> None:
    model = make_model()
    w = model[0].weight
    with pytest.raises(ValueError, match=r"duplicate parameters: .* 2 \(shape \(8, 5\)\) is the same tensor as"):
        HetAdam([w, model[0].bias, w])


def test_a_parameter_listed_in_two_groups_is_refused() -> None:
    model = make_model()
    with pytest.raises(ValueError, match=IN_TWO_GROUPS):
        HetAdam([{"params": model.parameters()}, {"params": [model[2].bias]}])


def test_a_named_parameter_listed_twice_is_refused_by_name() -> None:
    model = make_model()
    named = list(model.named_parameters())
    with pytest.raises(ValueError, match=r"parameter 'again' is the same tensor as parameter '0\.weight'"):
        HetAdam([*named, ("again", named[0][1])])


# -- the fixed format's parameter range -------------------------------------------


@pytest.mark.parametrize("where", [0, -1], ids=["first", "last"])
def test_fixed_refuses_a_parameter_outside_its_range_naming_it(where: int) -> None:
    model = make_model()
    with torch.no_grad():
        model[2].weight.view(-1)[where] = -1000.0
    with pytest.raises(ValueError) as err:
        HetAdam(model.named_parameters(), numerics="fixed")
    message = str(err.value)
    assert "parameter '2.weight'" in message
    assert "magnitude 1000" in message
    assert "(-128, 128)" in message
    assert "fixed_format=FixedFormat(p_frac=21)" in message  # ±1024 holds 1000


def test_fixed_names_an_unnamed_parameter_by_group_place_and_shape() -> None:
    model = make_model()
    with torch.no_grad():
        model[2].bias[1] = 128.0  # the first value beyond the range
    groups = [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 1e-2}]
    with pytest.raises(ValueError, match=r"param group 1, parameter 1 \(shape \(2,\)\) has a value of magnitude 128"):
        HetAdam(groups, numerics="fixed")


def test_fixed_accepts_the_largest_float32_inside_the_range_and_keeps_it() -> None:
    largest = float(np.nextafter(np.float32(128.0), np.float32(0.0)))
    p = torch.nn.Parameter(torch.tensor([largest, -largest, 0.5]))
    opt = HetAdam([p], lr=0.0, numerics="fixed")
    p.grad = torch.ones(3)
    opt.step()
    assert p.tolist() == [largest, -largest, 0.5]
    assert opt.saturated == 0


def test_the_suggested_format_holds_the_parameter() -> None:
    p = torch.nn.Parameter(torch.tensor([1000.0, -3.0]))
    opt = HetAdam([p], lr=0.0, numerics="fixed", fixed_format=FixedFormat(p_frac=21))
    p.grad = torch.ones(2)
    opt.step()
    assert p.tolist() == [1000.0, -3.0]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_fixed_refuses_a_non_finite_parameter(bad: float) -> None:
    with pytest.raises(ValueError, match="holds NaN or Inf"):
        HetAdam([torch.nn.Parameter(torch.tensor([0.0, bad]))], numerics="fixed")


def test_fp32_takes_any_parameter_value() -> None:
    HetAdam([torch.nn.Parameter(torch.tensor([1e30, float("inf")]))])


@pytest.mark.parametrize(
    ("values", "fmt", "holds"),
    [
        ([127.99999237060547], DEFAULT, True),
        ([-128.0], DEFAULT, False),
        ([0.0, 2.0**30], FixedFormat(p_frac=0), True),
        ([2.0**31], FixedFormat(p_frac=0), False),
        ([], DEFAULT, True),
    ],
)
def test_check_fixed_range_draws_the_line_where_it_saturates(values: list, fmt: FixedFormat, holds: bool) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    scaled = np.rint(x.double().numpy() * 2.0**fmt.p_frac)
    assert holds == bool((np.abs(scaled) <= fmt.p_max).all())  # the converter's own rule
    if holds:
        check_fixed_range(x, "x", fmt)
        check_fixed_range(x.numpy(), "x", fmt)
    else:
        with pytest.raises(ValueError, match="x has a value"):
            check_fixed_range(x, "x", fmt)
    assert fixed_range(fmt) == 2.0 ** (31 - fmt.p_frac)


# -- add_param_group --------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ({"lr": -1.0}, "Invalid learning rate"),
        ({"betas": (1.0, 0.9)}, "beta parameter at index 0"),
        ({"params": [torch.zeros(3, dtype=torch.float64, requires_grad=True)]}, "float64"),
        ({"params": [torch.full((3,), 500.0, requires_grad=True)]}, "outside the fixed format's parameter range"),
        ({"amsgrad": True}, "amsgrad"),
        ({"eps": 1e39}, "later steps"),
    ],
    ids=["lr", "betas", "dtype", "range", "amsgrad", "eps"],
)
def test_a_refused_param_group_leaves_the_optimizer_working(group: dict, message: str) -> None:
    model, ref = make_model(), make_model()
    opt = HetAdam(model[0].parameters(), lr=1e-2, numerics="fixed")
    twin = HetAdam(ref[0].parameters(), lr=1e-2, numerics="fixed")
    extra = {"params": [torch.zeros(3, requires_grad=True)], **group}
    with pytest.raises(ValueError, match=message):
        opt.add_param_group(extra)
    assert len(opt.param_groups) == 1
    for i in range(2):
        step_on(model, opt, i)
        step_on(ref, twin, i)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref.parameters(), strict=True))
    assert opt.state_dict()["param_groups"][0]["params"] == [0, 1]


def test_add_param_group_refuses_a_parameter_of_another_group() -> None:
    model = make_model()
    opt = HetAdam(model.parameters())
    with pytest.raises(ValueError, match=IN_TWO_GROUPS):
        opt.add_param_group({"params": [model[0].weight]})
    step_on(model, opt, 0)


# -- fixed hyper-parameters over every step ---------------------------------------


@pytest.mark.parametrize(
    ("beta1", "beta2"), [(0.9, 0.999), (0.0, 0.999), (0.9, 0.0), (0.99, 0.9), (0.5, 0.6), (0.9, 0.81), (0.3, 0.999999)]
)
def test_the_bias_corrected_step_size_peaks_at_step_1_or_in_the_limit(beta1: float, beta2: float) -> None:
    """The claim check_fixed_hyper rests on, by brute force over 200 000 steps."""
    t = np.arange(1, 200_001, dtype=np.float64)
    factor = np.sqrt(1 - beta2**t) / (1 - beta1**t)
    assert factor.max() <= max(factor[0], 1.0) * (1 + 1e-12)


def test_fixed_accepts_the_largest_lr_its_registers_hold_at_every_step() -> None:
    largest = 2.0 ** (ALPHA_BITS - 1 - DEFAULT.p_frac + RATIO_FRAC) * 0.99
    HetAdam(make_model().parameters(), lr=largest, numerics="fixed")
    with pytest.raises(ValueError, match="later steps"):
        HetAdam(make_model().parameters(), lr=largest * 1.02, numerics="fixed")


def test_fixed_refuses_at_the_step_an_eps_set_later_that_fails_at_a_later_step() -> None:
    model = make_model()
    opt = HetAdam(model.parameters(), lr=1e-2, numerics="fixed")
    step_on(model, opt, 0)
    before = [p.detach().clone() for p in model.parameters()]
    opt.param_groups[0]["eps"] = 1e39  # step 2 could hold it (eps_2 = 4.5e37); step 30 could not
    with pytest.raises(ValueError, match="eps=1e\\+39 is too large"):
        step_on(model, opt, 1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert math.isclose(float(opt.state_dict()["state"][0]["step"]), 1.0)
