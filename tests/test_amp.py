"""Mixed precision as torch.amp has it: autocast, GradScaler and clipping.

HetAdam takes GradScaler's contract of torch's fused optimizers: `scaler.step`
hands it the loss scale and the found-inf flag; the update divides the
gradients by the scale, and a step with an Inf gradient is skipped with
nothing changed (step counts included) while the scaler backs off. The plain
path (`scaler.unscale_`, `clip_grad_norm_`, `scaler.step`) works as with any
optimizer. The reference is torch's fused AdamW on float32 masters under the
same scaler (master_adamw.py), bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from master_adamw import MasterAdamW

from hetadam import HetAdam

LR = 1e-3
INF_AT = 2
"""The step whose gradients get an Inf."""


def model(dtype: torch.dtype) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).to(dtype)


def scaled_backward(net: torch.nn.Module, scaler: torch.amp.GradScaler, t: int) -> None:
    """Forward under autocast (in the parameters' dtype, bf16 for a float32
    model), the scaled loss backward; at INF_AT an Inf in one gradient."""
    dtype = next(net.parameters()).dtype
    g = torch.Generator().manual_seed(t)
    x, y = torch.randn(32, 12, generator=g), torch.randn(32, 4, generator=g)
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16 if dtype == torch.float32 else dtype):
        loss = torch.nn.functional.mse_loss(net(x.to(dtype)).float(), y)
    scaler.scale(loss).backward()
    if t == INF_AT:
        net[0].weight.grad[1, 2] = float("inf")


def steps(opt: torch.optim.Optimizer) -> list[float]:
    return [float(st["step"]) for st in opt.state_dict()["state"].values()]


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gradscaler_hands_the_scale_to_the_step_and_an_inf_step_is_skipped(dtype: torch.dtype) -> None:
    net = model(dtype)
    twin = copy.deepcopy(net)
    opt, ref = HetAdam(net.parameters(), lr=LR), MasterAdamW(twin.parameters(), LR)
    ours, theirs = scaler(), scaler()
    for t in range(6):
        before = [p.detach().clone() for p in net.parameters()]
        counts, scale = steps(opt), ours.get_scale()
        for n, o, s in ((net, opt, ours), (twin, ref, theirs)):
            scaled_backward(n, s, t)
            s.step(o)
            s.update()
        assert same(net, twin), t
        assert ours.get_scale() == theirs.get_scale()
        if t == INF_AT:  # skipped: nothing moved, and the scaler backed off
            assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before, strict=True))
            assert steps(opt) == counts
            assert ours.get_scale() == scale / 2
    assert steps(opt) == [5.0] * 4
    saved = opt.state_dict()["state"].values()
    assert all(torch.equal(st["master"], m) for st, m in zip(saved, ref.masters, strict=True))


def test_unscale_then_clip_then_step_works_as_with_torch() -> None:
    """The plain path on a bf16 model: the scaler unscales the gradients in
    place, clip_grad_norm_ clips them, and the step takes them as they are."""
    net = model(torch.bfloat16)
    twin = copy.deepcopy(net)
    opt, ref = HetAdam(net.parameters(), lr=LR), MasterAdamW(twin.parameters(), LR)
    ours, theirs = scaler(), scaler()
    for t in range(5):
        norms = []
        for n, o, s in ((net, opt, ours), (twin, ref, theirs)):
            scaled_backward(n, s, t)
            s.unscale_(o)
            norms.append(torch.nn.utils.clip_grad_norm_(n.parameters(), max_norm=0.05))
            s.step(o)
            s.update()
        assert same(net, twin), t
        if t != INF_AT:
            assert norms[0].item() > 0.05  # the clipping did something
    assert steps(opt) == [4.0] * 4


def test_a_float32_model_under_gradscaler_steps_as_fused_adam() -> None:
    """Parameters stepped in place: the update divides a copy of each gradient
    by the scale; the gradients in `.grad` stay as they were."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    twin = copy.deepcopy(net)
    opt, ref = HetAdam(net.parameters(), lr=LR), torch.optim.Adam(twin.parameters(), lr=LR, fused=True)
    ours, theirs = scaler(), scaler()
    for t in range(5):
        for n, o, s in ((net, opt, ours), (twin, ref, theirs)):
            scaled_backward(n, s, t)
            grads = [p.grad.clone() for p in n.parameters()]
            s.step(o)
            s.update()
        assert same(net, twin), t
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads, strict=True))


def test_step_takes_the_scale_and_the_found_inf_flag_as_arguments() -> None:
    net = model(torch.bfloat16)
    twin = copy.deepcopy(net)
    opt, ref = HetAdam(net.parameters(), lr=LR), HetAdam(twin.parameters(), lr=LR)
    for n in (net, twin):
        n(torch.ones(2, 12, dtype=torch.bfloat16)).sum().mul(8.0).backward()
    before = [p.detach().clone() for p in net.parameters()]
    opt.step(grad_scale=torch.tensor(8.0), found_inf=torch.tensor(1.0))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before, strict=True))
    assert steps(opt) == []
    opt.step(grad_scale=torch.tensor(8.0), found_inf=torch.tensor(0.0))
    for p in twin.parameters():
        p.grad = (p.grad.float() / 8.0).to(p.dtype)  # exact: a power of two
    ref.step()
    assert same(net, twin)
    assert steps(opt) == [1.0] * 4
