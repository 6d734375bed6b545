"""Parameters changed outside the optimizer between steps (restoring a
checkpoint into the model, clipping or pruning weights, `.data`) are where the
next step starts, as in torch, on every backend and numerics; under `fixed` a
changed value the format cannot hold is refused before anything changes.

The reference for each case is the same optimizer state loaded into a fresh
optimizer over a copy of the changed model: it starts from the tensors by
construction. Besides, every parameter must end within a few learning rates of
its changed value (the resident copy used to win: the change was undone)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from backend_table import BackendInfo, params_over_backends_and_numerics

from hetadam import HetAdam, backends

LR = 1e-3
REGISTERED = [p for p in params_over_backends_and_numerics() if p.values[0].name in backends.NAMES]


def model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def backward(net: torch.nn.Module, t: int) -> None:
    g = torch.Generator().manual_seed(t)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    net.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()


def in_place_op(net: torch.nn.Sequential) -> None:
    with torch.no_grad():
        net[0].weight.mul_(-0.5)


def clip(net: torch.nn.Sequential) -> None:
    """Some elements of a tensor change, the others keep their exact state."""
    with torch.no_grad():
        net[0].weight.clamp_(-0.1, 0.1)


def prune(net: torch.nn.Sequential) -> None:
    with torch.no_grad():
        net[2].weight[net[2].weight.abs() > 0.2] = 0.0


def data_copy(net: torch.nn.Sequential) -> None:
    """`.data` has its own version counter: the parameter's does not move."""
    version = net[2].weight._version
    net[2].weight.data.copy_(torch.linspace(-0.75, 0.75, 24).reshape(3, 8))
    assert net[2].weight._version == version


def data_assign(net: torch.nn.Sequential) -> None:
    net[0].bias.data = torch.full((8,), 0.375)


def load_state_dict(net: torch.nn.Sequential) -> None:
    net.load_state_dict({k: v * 0.5 + 0.125 for k, v in net.state_dict().items()})


CHANGES: dict[str, Callable[[torch.nn.Sequential], None]] = {
    "in-place op": in_place_op,
    "clip": clip,
    "prune": prune,
    ".data.copy_": data_copy,
    ".data =": data_assign,
    "load_state_dict": load_state_dict,
}


def make(net: torch.nn.Module, info: BackendInfo, numerics: str) -> HetAdam:
    return HetAdam(net.parameters(), lr=LR, backend=info.name, numerics=numerics)


def check_change_is_where_the_step_starts(info: BackendInfo, numerics: str, change: str) -> None:
    net = model()
    opt = make(net, info, numerics)
    for t in range(2):
        backward(net, t)
        opt.step()
    before = [p.detach().clone() for p in net.parameters()]
    CHANGES[change](net)
    changed = [p.detach().clone() for p in net.parameters()]
    assert max((a - b).abs().max().item() for a, b in zip(before, changed, strict=True)) > 100 * LR
    ref_net = copy.deepcopy(net)
    ref = make(ref_net, info, numerics)
    ref.load_state_dict(opt.state_dict())
    for t in (2, 3):
        backward(net, t)
        opt.step()
        backward(ref_net, t)
        ref.step()
    for p, q, start in zip(net.parameters(), ref_net.parameters(), changed, strict=True):
        assert torch.equal(p, q)
        assert (p - start).abs().max().item() <= 10 * LR  # two steps from the changed value
    opt.close()
    ref.close()


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize(("info", "numerics"), REGISTERED)
def test_a_changed_parameter_is_where_the_next_step_starts(info: BackendInfo, numerics: str, change: str) -> None:
    check_change_is_where_the_step_starts(info, numerics, change)


def test_a_changed_parameter_outside_the_fixed_range_is_refused_and_nothing_changes() -> None:
    """A value the fixed format would clamp, set between steps: ValueError naming
    the parameter, its largest magnitude and the format's range, before
    anything changes (the other parameters, the moments, the step counts)."""
    net = model()
    opt = HetAdam(net.named_parameters(), lr=LR, numerics="fixed")
    backward(net, 0)
    opt.step()
    with torch.no_grad():
        net[2].bias.fill_(0.25)
        net[0].weight[0, 0] = -1000.0
    params = [p.detach().clone() for p in net.parameters()]
    saved = copy.deepcopy(opt.state_dict())
    backward(net, 1)
    with pytest.raises(ValueError, match=r"parameter '0\.weight' has a value of magnitude 1000, .*\(-128, 128\)"):
        opt.step()
    for p, q in zip(net.parameters(), params, strict=True):
        assert torch.equal(p, q)
    now = opt.state_dict()["state"]
    for i, st in saved["state"].items():
        assert torch.equal(now[i]["step"], st["step"])
        for key, value in st["fixed"].items():  # the bias, changed in range, was not re-imported either
            assert torch.equal(now[i]["fixed"][key], value), (i, key)
    with torch.no_grad():
        net[0].weight[0, 0] = 1.0
    opt.step()
    assert net[0].weight[0, 0].item() == pytest.approx(1.0, abs=10 * LR)
    assert net[2].bias.sub(0.25).abs().max().item() <= 10 * LR


def test_a_loaded_fixed_state_takes_the_parameters_as_they_are_now() -> None:
    """load_state_dict after the model changed (a pruned checkpoint): the loaded
    resident P is the changed tensors' value where they changed, and the saved
    exact P (bits below float32's precision) where they did not."""
    net = model()
    opt = HetAdam(net.parameters(), lr=LR, numerics="fixed")
    for t in range(2):
        backward(net, t)
        opt.step()
    saved = opt.state_dict()
    weight = net[0].weight
    with torch.no_grad():
        weight[weight.abs() < 0.1] = 0.0
    pruned = (weight == 0).reshape(-1)
    assert 0 < int(pruned.sum()) < weight.numel()
    fresh = HetAdam(net.parameters(), lr=LR, numerics="fixed")
    fresh.load_state_dict(saved)
    P = fresh.state_dict()["state"][0]["fixed"]["P"]
    assert torch.equal(P[pruned], torch.zeros_like(P[pruned]))
    assert torch.equal(P[~pruned], saved["state"][0]["fixed"]["P"][~pruned])


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
def test_a_parameter_replaced_by_one_the_runtime_cannot_stream_is_refused(numerics: str) -> None:
    """`.data =` with a float64 tensor: the step names the parameter and what it
    must be, before anything changes."""
    net = model()
    opt = HetAdam(net.named_parameters(), lr=LR, numerics=numerics)
    backward(net, 0)
    opt.step()
    net[2].bias.data = net[2].bias.data.double()
    params = [p.detach().clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad = torch.full_like(p, 1e-3)  # of the parameter's dtype
    with pytest.raises(ValueError, match=r"parameter '2\.bias' is torch\.float64"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), params, strict=True))
