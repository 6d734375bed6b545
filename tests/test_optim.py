"""HetAdam as a torch.optim.Optimizer: bit-exact parity with torch's fused
Adam, param groups (added, appended directly, named), schedulers, hooks,
state_dict round trips, the fixed path against the golden model, and
non-finite gradients wherever they sit. Argument checks: test_validation.py;
state import/export: test_state_io.py."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from hetadam import HetAdam, NonFiniteGradientError
from hetadam.finite import all_finite
from hetadam.numerics import DEFAULT, FixedState, adam_step, encode_step
from hetadam.numerics.convert import params_from_fixed, params_to_fixed, quantize_grad


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 45), torch.nn.Tanh(), torch.nn.Linear(45, 3))


def batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A learnable task: the label is the argmax of a fixed linear map."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(7, 3, generator=torch.Generator().manual_seed(99))
    xs = [torch.randn(32, 7, generator=g) for _ in range(n)]
    return [(x, (x @ w).argmax(1)) for x in xs]


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, data, closure: bool = False) -> list[float]:
    losses = []
    for x, y in data:

        def loss_fn(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        if closure:
            losses.append(float(opt.step(loss_fn)))
        else:
            losses.append(float(loss_fn().detach()))
            opt.step()
    return losses


@torch.no_grad()
def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.parameters(), b.parameters(), strict=True) if p.numel())


OPTIONS = [
    dict(zip(("weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"), combo, strict=True))
    for combo in itertools.product((0.0, 0.05), (False, True), (False, True), (False, True))
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_fp32_equals_torch_fused_adam_bit_for_bit_for_every_option(options: dict) -> None:
    data = batches(8)
    ref, ours = make_model(), make_model()
    torch_cls = torch.optim.AdamW if options["decoupled_weight_decay"] else torch.optim.Adam
    torch_opts = {k: v for k, v in options.items() if k != "decoupled_weight_decay"}
    train(ref, torch_cls(ref.parameters(), lr=1e-2, fused=True, **torch_opts), data)
    train(ours, HetAdam(ours.parameters(), lr=1e-2, **options), data)
    assert max_diff(ref, ours) == 0.0


def test_param_groups_lr_tensor_scheduler_and_closure() -> None:
    data = batches(10)
    ref, ours = make_model(), make_model()

    def groups(m: torch.nn.Module) -> list[dict]:
        return [
            {"params": m[0].parameters(), "lr": 3e-3, "betas": (0.8, 0.99)},
            {"params": m[2].parameters(), "weight_decay": 0.1},
        ]

    opt_ref = torch.optim.Adam(groups(ref), lr=torch.tensor(1e-2), fused=True)
    opt = HetAdam(groups(ours), lr=torch.tensor(1e-2))
    sched_ref = torch.optim.lr_scheduler.StepLR(opt_ref, step_size=3, gamma=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    for x, y in data:
        for m, o, s in ((ref, opt_ref, sched_ref), (ours, opt, sched)):

            def closure(m=m, o=o, x=x, y=y) -> torch.Tensor:
                o.zero_grad()
                loss = torch.nn.functional.cross_entropy(m(x), y)
                loss.backward()
                return loss

            o.step(closure)
            s.step()
    assert max_diff(ref, ours) == 0.0
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-3 * 0.125)


def test_add_param_group_and_params_without_grad() -> None:
    ref, ours = make_model(), make_model()
    opt_ref = torch.optim.Adam(ref[0].parameters(), lr=1e-2, fused=True)
    opt = HetAdam(ours[0].parameters(), lr=1e-2)
    data = batches(6)
    for i, (x, y) in enumerate(data):
        if i == 2:
            opt_ref.add_param_group({"params": ref[2].parameters(), "lr": 5e-3})
            opt.add_param_group({"params": ours[2].parameters(), "lr": 5e-3})
        for m, o in ((ref, opt_ref), (ours, opt)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            if i == 4:
                m[2].bias.grad = None  # skipped this step, as torch skips it
            o.step()
    assert max_diff(ref, ours) == 0.0


def test_hooks_and_zero_grad() -> None:
    model = make_model()
    opt = HetAdam(model.parameters())
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    train(model, opt, batches(2))
    assert calls == ["pre", "post", "pre", "post"]
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def golden_run(
    model: torch.nn.Module, data, lr: float, stochastic: bool = False, weight_decay: float = 0.0, maximize: bool = False
) -> list[np.ndarray]:
    """The golden model driven by hand: what HetAdam(numerics='fixed') must equal."""
    params = list(model.parameters())
    states = [FixedState.zeros(p.numel()) for p in params]
    offsets = np.cumsum([0] + [-(-p.numel() // DEFAULT.block) * DEFAULT.block for p in params])
    for st, p in zip(states, params, strict=True):
        st.P[:] = params_to_fixed(p.detach().numpy().reshape(-1))[0]
    for t, (x, y) in enumerate(data, 1):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        sc = encode_step(lr=lr, beta1=0.9, beta2=0.999, eps=1e-8, step=t, stochastic=stochastic, seed=17)
        for i, (st, p) in enumerate(zip(states, params, strict=True)):
            g = p.grad.numpy().reshape(-1) * (-1 if maximize else 1)
            g = g + np.float32(weight_decay) * params_from_fixed(st.P).astype(np.float32)
            G, eg, _ = quantize_grad(g)
            states[i], _ = adam_step(st, G, eg, sc, int(offsets[i]))
            with torch.no_grad():
                p.copy_(torch.from_numpy(params_from_fixed(states[i].P).astype(np.float32)).reshape(p.shape))
    return [st.P for st in states]


@pytest.mark.parametrize(
    ("stochastic", "weight_decay", "maximize"), [(False, 0.0, False), (True, 0.0, False), (False, 0.1, True)]
)
def test_fixed_follows_the_golden_model_bit_for_bit(stochastic: bool, weight_decay: float, maximize: bool) -> None:
    data = batches(12)
    ref, ours = make_model(), make_model()
    expected = golden_run(ref, data, 1e-2, stochastic, weight_decay, maximize)
    opt = HetAdam(
        ours.parameters(),
        lr=1e-2,
        numerics="fixed",
        stochastic_rounding=stochastic,
        seed=17,
        weight_decay=weight_decay,
        maximize=maximize,
    )
    train(ours, opt, data)
    fixed = opt.state_dict()["state"]
    for i, P in enumerate(expected):
        np.testing.assert_array_equal(fixed[i]["fixed"]["P"].numpy(), P)
    assert max_diff(ref, ours) == 0.0


def test_fixed_trains_close_to_fp32() -> None:
    data = batches(30)
    a, b = make_model(), make_model()
    la = train(a, HetAdam(a.parameters(), lr=1e-2), data)
    lb = train(b, HetAdam(b.parameters(), lr=1e-2, numerics="fixed"), data)
    assert lb[-1] < lb[0] * 0.5
    assert abs(la[-1] - lb[-1]) < 0.05
    assert max_diff(a, b) < 5e-3


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
def test_state_dict_round_trip_is_exact(numerics: str) -> None:
    data = batches(10)
    a = make_model()
    opt_a = HetAdam(a.parameters(), lr=1e-2, numerics=numerics)
    train(a, opt_a, data[:5])
    b = copy.deepcopy(a)
    opt_b = HetAdam(b.parameters(), lr=1e-2, numerics=numerics)
    saved = copy.deepcopy(opt_a.state_dict())
    opt_b.load_state_dict(saved)
    train(a, opt_a, data[5:])
    train(b, opt_b, data[5:])
    assert max_diff(a, b) == 0.0
    sd_a, sd_b = opt_a.state_dict(), opt_b.state_dict()
    for i in sd_a["state"]:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sd_a["state"][i][key], sd_b["state"][i][key])


def test_state_dict_moves_between_torch_and_hetadam() -> None:
    data = batches(10)
    ref, ours = make_model(), make_model()
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2, fused=True)
    train(ref, opt_ref, data[:5])
    ours.load_state_dict(ref.state_dict())
    opt = HetAdam(ours.parameters(), lr=1e-2)
    opt.load_state_dict(opt_ref.state_dict())
    train(ref, opt_ref, data[5:])
    train(ours, opt, data[5:])
    assert max_diff(ref, ours) == 0.0
    back = torch.optim.Adam(ref.parameters(), lr=1e-2)
    back.load_state_dict(opt.state_dict())
    assert torch.equal(back.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_state_moves_between_numerics() -> None:
    data = batches(12)
    a = make_model()
    opt = HetAdam(a.parameters(), lr=1e-2)
    train(a, opt, data[:6])
    b = copy.deepcopy(a)
    opt_fixed = HetAdam(b.parameters(), lr=1e-2, numerics="fixed")
    opt_fixed.load_state_dict(opt.state_dict())
    train(a, opt, data[6:])
    train(b, opt_fixed, data[6:])
    assert max_diff(a, b) < 2e-3  # fixed continues the fp32 run


def snapshot(model: torch.nn.Module, opt: HetAdam) -> tuple[list[torch.Tensor], dict]:
    return [p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.state_dict())


def assert_unchanged(model: torch.nn.Module, opt: HetAdam, before) -> None:
    params, sd = before
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params, strict=True))
    now = opt.state_dict()
    for i, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(now["state"][i][key], value)


WHERE = {"first": (0, 0), "middle": (2, 67), "last": (3, -1)}
"""(parameter, element) of the bad value: the first element of the first
parameter, one inside, the last element of the last."""


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", WHERE)
def test_non_finite_gradient_raises_and_changes_nothing(numerics: str, bad: float, where: str) -> None:
    model = make_model()
    opt = HetAdam(model.parameters(), lr=1e-2, numerics=numerics)
    train(model, opt, batches(3))
    before = snapshot(model, opt)
    opt.zero_grad()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    param, element = WHERE[where]
    list(model.parameters())[param].grad.view(-1)[element] = bad
    with pytest.raises(NonFiniteGradientError, match="NaN or Inf"):
        opt.step()
    assert_unchanged(model, opt, before)
    train(model, opt, batches(1))  # and the optimizer goes on


@pytest.mark.parametrize(
    ("grad", "error", "message"),
    [
        (torch.ones(3, dtype=torch.float64), ValueError, "float64"),
        (torch.ones(3).to_sparse(), RuntimeError, "sparse"),
    ],
)
def test_bad_gradients_raise_and_change_nothing(grad: torch.Tensor, error: type, message: str) -> None:
    model = make_model()
    extra = torch.nn.Parameter(torch.zeros(3))
    extra.grad_dtype = None  # let torch accept a gradient of another dtype, as a buggy hook might
    opt = HetAdam([*model.parameters(), extra], lr=1e-2)
    train(model, opt, batches(2))
    before = snapshot(model, opt)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    extra.grad = grad
    with pytest.raises(error, match=message):
        opt.step()
    assert_unchanged(model, opt, before)


def test_fixed_lr_too_large_for_the_format_is_refused_before_any_change() -> None:
    model = make_model()
    opt = HetAdam(model.parameters(), lr=1e-2, numerics="fixed")
    train(model, opt, batches(2))
    before = snapshot(model, opt)
    opt.param_groups[0]["lr"] = 1e9
    with pytest.raises(ValueError, match="too large"):
        train(model, opt, batches(1))
    model.zero_grad()
    assert_unchanged(model, opt, before)


def test_check_finite_false_lets_nan_through_as_torch_does() -> None:
    model = make_model()
    opt = HetAdam(model.parameters(), lr=1e-2, check_finite=False)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model[2].bias.grad[0] = float("nan")
    opt.step()
    assert torch.isnan(model[2].bias[0]) and not torch.isnan(model[2].bias[1])


@pytest.mark.parametrize("size", [1, 7, (1 << 19) + 3], ids=["one", "serial", "parallel"])
@pytest.mark.parametrize("where", [0, 0.5, -1], ids=["first", "middle", "last"])
def test_all_finite_finds_every_kind_of_non_finite_wherever_it_sits(size: int, where: float) -> None:
    t = torch.full((size,), -3.0e38)
    t[-1] = 1e-45  # subnormal: finite
    assert all_finite(t)
    at = int(where * size) if isinstance(where, float) else where
    for bad in (float("nan"), float("inf"), -float("inf")):
        u = t.clone()
        u[at] = bad
        assert not all_finite(u)
        assert not all_finite(u.view(-1, 1).expand(-1, 2).t())  # strided


def test_a_group_appended_to_param_groups_directly_steps_as_if_added() -> None:
    ref, ours = make_model(), make_model()
    opt_ref = torch.optim.Adam(ref[0].parameters(), lr=1e-2, fused=True)
    opt = HetAdam(ours[0].parameters(), lr=1e-2)
    for i, (x, y) in enumerate(batches(6)):
        if i == 2:
            opt_ref.add_param_group({"params": list(ref[2].parameters()), "lr": 5e-3})
            opt.param_groups.append({"params": list(ours[2].parameters()), "lr": 5e-3})
        for m, o in ((ref, opt_ref), (ours, opt)):
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    assert max_diff(ref, ours) == 0.0
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)  # the defaults filled in, as add_param_group does


def test_state_dict_plans_a_group_appended_directly() -> None:
    model = make_model()
    opt = HetAdam(model[0].parameters(), lr=1e-2)
    train(model, opt, batches(1))
    opt.param_groups.append({"params": list(model[2].parameters())})
    saved = opt.state_dict()
    assert [g["params"] for g in saved["param_groups"]] == [[0, 1], [2, 3]]
    train(model, opt, batches(2))
    assert float(opt.state_dict()["state"][2]["step"]) == 2.0


def test_an_invalid_group_appended_directly_is_refused_until_it_is_removed() -> None:
    model = make_model()
    opt = HetAdam(model[0].parameters(), lr=1e-2)
    train(model, opt, batches(1))
    before = snapshot(model, opt)
    opt.param_groups.append({"params": [torch.zeros(3, dtype=torch.float64, requires_grad=True)]})
    refused = r"param group 1, appended to param_groups directly, is refused: .*float64"
    for call in (opt.step, opt.state_dict):
        with pytest.raises(ValueError, match=refused):
            call()
    assert len(opt.param_groups) == 2  # left where the user put it
    opt.param_groups.pop()
    assert_unchanged(model, opt, before)
    train(model, opt, batches(1))


def test_changing_the_parameters_of_a_planned_group_is_refused() -> None:
    model = make_model()
    opt = HetAdam(model[0].parameters(), lr=1e-2)
    opt.param_groups[0]["params"].append(model[2].bias)
    with pytest.raises(ValueError, match="parameters of param group 0 changed after it was added"):
        opt.step()
    opt.param_groups[0]["params"].pop()
    opt.param_groups.pop()
    with pytest.raises(ValueError, match="groups cannot be removed"):
        opt.state_dict()


def test_named_parameters_train_as_torch_and_keep_their_names() -> None:
    ref, ours = make_model(), make_model()
    data = batches(4)
    train(ref, torch.optim.Adam(ref.named_parameters(), lr=1e-2, fused=True), data)
    opt = HetAdam(ours.named_parameters(), lr=1e-2)
    train(ours, opt, data)
    assert max_diff(ref, ours) == 0.0
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
