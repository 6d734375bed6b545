"""Models as training hosts have them: bfloat16 and float16 parameters, strided
ones, parameters on a GPU. HetAdam steps a float32 master of each on the host
and writes it back cast to the parameter's dtype, on its device, in the step's
commit; the reference is torch.optim.AdamW(fused=True) stepping an fp32 master
copy, cast after each step (the DeepSpeed ZeRO-Offload recipe), bit for bit.
The CUDA cases run where a GPU is (scripts/gpu_check.sh)."""

from __future__ import annotations

import copy

import pytest
import torch
from backend_table import BackendInfo, params_over_backends_and_numerics
from master_adamw import MasterAdamW

from hetadam import HetAdam, NonFiniteGradientError, backends
from hetadam.backends.base import BackendError, Segment, StepHyper

LR = 1e-3
LOW = [torch.bfloat16, torch.float16]
REGISTERED = [p for p in params_over_backends_and_numerics() if p.values[0].name in backends.NAMES]
CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU here: run scripts/gpu_check.sh on a machine with one"
)


def model(dtype: torch.dtype, device: str = "cpu") -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    return net.to(device=device, dtype=dtype)


def backward(net: torch.nn.Module, t: int) -> None:
    p = next(net.parameters())
    g = torch.Generator().manual_seed(t)
    x = torch.randn(32, 12, generator=g).to(p.device, p.dtype)
    net.zero_grad()
    net(x).float().square().mean().backward()


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def masters_of(opt: HetAdam) -> list[torch.Tensor]:
    return [st["master"] for st in opt.state_dict()["state"].values()]


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_a_low_precision_model_steps_as_fused_adamw_on_an_fp32_master(dtype: torch.dtype, weight_decay: float) -> None:
    net = model(dtype)
    twin = copy.deepcopy(net)
    opt = HetAdam(net.parameters(), lr=LR, weight_decay=weight_decay, decoupled_weight_decay=True)
    ref = MasterAdamW(twin.parameters(), LR, weight_decay)
    for t in range(5):
        backward(net, t)
        opt.step()
        backward(twin, t)
        ref.step()
        assert same(net, twin), t
        assert all(torch.equal(m, r) for m, r in zip(masters_of(opt), ref.masters, strict=True)), t
    assert all(p.dtype == dtype for p in net.parameters())


def test_a_strided_parameter_is_stepped_where_it_is() -> None:
    """A transposed (non-contiguous) float32 parameter keeps its memory and
    strides and steps as torch's fused Adam steps a contiguous copy."""
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, 9, generator=g).t())
    assert not p.is_contiguous()
    ptr, stride = p.data_ptr(), p.stride()
    q = torch.nn.Parameter(p.detach().contiguous())
    opt, ref = HetAdam([p], lr=LR), torch.optim.Adam([q], lr=LR, fused=True)
    for _ in range(4):
        grad = torch.randn(9, 6, generator=g)
        p.grad, q.grad = grad.t().contiguous().t(), grad.clone()
        opt.step()
        ref.step()
    assert (p.data_ptr(), p.stride()) == (ptr, stride)
    assert torch.equal(p, q)


@pytest.mark.parametrize(("info", "numerics"), REGISTERED)
def test_a_bf16_model_steps_on_every_backend_as_its_fp32_master_does(info: BackendInfo, numerics: str) -> None:
    """The same backend stepping float32 parameters that start as the bf16
    ones: the bf16 parameters are theirs cast after every step (under `fixed`
    the float32 value of the fixed master)."""
    net = model(torch.bfloat16)
    masters = model(torch.float32)
    with torch.no_grad():
        for m, p in zip(masters.parameters(), net.parameters(), strict=True):
            m.copy_(p)
    opt = HetAdam(net.parameters(), lr=LR, backend=info.name, numerics=numerics)
    ref = HetAdam(masters.parameters(), lr=LR, backend=info.name, numerics=numerics)
    for t in range(3):
        backward(net, t)
        for m, p in zip(masters.parameters(), net.parameters(), strict=True):
            m.grad = p.grad.float()
        opt.step()
        ref.step()
        cast = [m.to(torch.bfloat16) for m in masters.parameters()]
        assert all(torch.equal(p, c) for p, c in zip(net.parameters(), cast, strict=True))
    opt.close()
    ref.close()


def test_elements_changed_in_a_bf16_parameter_are_where_the_step_starts() -> None:
    """The user changes some elements of a bf16 parameter between steps: the
    master takes those (compared with what the optimizer last wrote), the
    others keep their float32 value; the moments stay."""
    net = model(torch.bfloat16)
    twin = copy.deepcopy(net)
    opt, ref = HetAdam(net.parameters(), lr=LR), MasterAdamW(twin.parameters(), LR)
    for t in range(3):
        backward(net, t)
        opt.step()
        backward(twin, t)
        ref.step()
    before = twin[0].weight.detach().clone()
    for w in (net[0].weight, twin[0].weight):
        with torch.no_grad():
            w.clamp_(-0.1, 0.1)
    changed = twin[0].weight != before
    assert 0 < int(changed.sum()) < changed.numel()
    ref.masters[0][changed] = twin[0].weight.detach()[changed].float()
    for t in (3, 4):
        backward(net, t)
        opt.step()
        backward(twin, t)
        ref.step()
        assert same(net, twin), t
        assert all(torch.equal(m, r) for m, r in zip(masters_of(opt), ref.masters, strict=True)), t


def test_a_parameter_replaced_by_a_bf16_one_steps_from_its_new_values() -> None:
    """`.data =` with a bf16 tensor: the parameter gets a master from its new
    values; the other parameter goes on in place."""
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(n, generator=g)) for n in (40, 7)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt, ref = HetAdam(ps, lr=LR), torch.optim.Adam(qs, lr=LR, fused=True)

    def step(t: int) -> None:
        grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(t)) for p in ps]
        for p, q, grad in zip(ps, qs, grads, strict=True):
            p.grad, q.grad = grad.to(p.dtype), grad.to(p.dtype).float()
        opt.step()
        ref.step()

    step(0)
    ps[0].data = ps[0].data.to(torch.bfloat16)
    with torch.no_grad():
        qs[0].copy_(ps[0])  # the master starts where the bf16 values are
    for t in (1, 2):
        step(t)
        assert torch.equal(ps[0], qs[0].to(torch.bfloat16)), t
        assert torch.equal(ps[1], qs[1]), t
    assert ps[0].dtype == torch.bfloat16


def test_the_state_dict_carries_the_fp32_master_so_that_a_resumed_run_is_exact() -> None:
    """Without the master, updates below bf16's precision would be lost (a bf16
    parameter would not move at lr 1e-4): the resumed run would differ."""
    lr = 1e-4
    net = model(torch.bfloat16)
    opt = HetAdam(net.parameters(), lr=lr)
    for t in range(3):
        backward(net, t)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    assert all(st["master"].dtype == torch.float32 for st in saved["state"].values())
    resumed = copy.deepcopy(net)
    again = HetAdam(resumed.parameters(), lr=lr)
    again.load_state_dict(saved)
    lost = copy.deepcopy(net)
    without = HetAdam(lost.parameters(), lr=lr)
    without.load_state_dict({**saved, "state": {i: {k: v for k, v in st.items() if k != "master"}
                                                for i, st in saved["state"].items()}})  # fmt: skip
    for t in range(3, 8):
        for n, o in ((net, opt), (resumed, again), (lost, without)):
            backward(n, t)
            o.step()
    assert same(net, resumed)
    assert not same(net, lost)


def test_a_copy_of_the_optimizer_carries_the_masters() -> None:
    net = model(torch.float16)
    opt = HetAdam(net.parameters(), lr=1e-4)
    for t in range(2):
        backward(net, t)
        opt.step()
    twin = copy.deepcopy((net, opt))
    for t in range(2, 5):
        for n, o in ((net, opt), twin):
            backward(n, t)
            o.step()
    assert same(net, twin[0])


def test_a_non_finite_bf16_gradient_changes_nothing() -> None:
    net = model(torch.bfloat16)
    opt = HetAdam(net.parameters(), lr=LR)
    backward(net, 0)
    opt.step()
    before = [p.detach().clone() for p in net.parameters()]
    saved = copy.deepcopy(opt.state_dict())
    backward(net, 1)
    net[0].bias.grad[3] = float("inf")
    with pytest.raises(NonFiniteGradientError):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before, strict=True))
    now = opt.state_dict()["state"]
    assert all(torch.equal(now[i]["master"], st["master"]) for i, st in saved["state"].items())


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
def test_a_failed_step_leaves_bf16_parameters_and_masters_as_they_were(numerics: str) -> None:
    """A shard that computes its share then fails: no parameter, master or
    step count moved, and the next steps go on as if it was never tried."""
    net = model(torch.bfloat16)
    twin = copy.deepcopy(net)
    opt = HetAdam(net.parameters(), lr=LR, numerics=numerics)
    ref = HetAdam(twin.parameters(), lr=LR, numerics=numerics)
    for n, o in ((net, opt), (twin, ref)):
        backward(n, 0)
        o.step()
    shard = opt._partitions[0].shards[0]
    inner = shard.step

    def failing(segments: list[Segment], hyper: StepHyper) -> int:
        inner(segments, hyper)
        raise ConnectionResetError("the device went away")

    shard.step, shard.infallible = failing, False  # type: ignore[method-assign]
    backward(net, 1)
    with pytest.raises(BackendError, match="the device went away"):
        opt.step()
    del shard.step
    shard.infallible = type(shard).infallible
    assert same(net, twin)
    for t in (2, 3):
        for n, o in ((net, opt), (twin, ref)):
            backward(n, t)
            o.step()
    assert same(net, twin)


def check_on_the_gpu(**options: object) -> None:
    """A bf16 model on CUDA against the fp32 host master reference, with a change made on the device."""
    net = model(torch.bfloat16, "cuda")
    twin = copy.deepcopy(net)
    opt, ref = HetAdam(net.parameters(), lr=LR, **options), MasterAdamW(twin.parameters(), LR)
    for t in range(4):
        backward(net, t)
        opt.step()
        backward(twin, t)
        ref.step()
        assert same(net, twin), t
    assert all(p.device.type == "cuda" and p.dtype == torch.bfloat16 for p in net.parameters())
    with torch.no_grad():
        net[0].weight[0].fill_(0.5)
        twin[0].weight[0].fill_(0.5)
    ref.masters[0][0] = 0.5
    backward(net, 9)
    opt.step()
    backward(twin, 9)
    ref.step()
    assert same(net, twin)


@pytest.mark.cuda
@CUDA
def test_a_bf16_model_on_the_gpu_steps_as_fused_adamw_on_an_fp32_host_master() -> None:
    check_on_the_gpu()


def test_a_loaded_state_is_kept_once_on_the_backend_not_in_torchs_state_too() -> None:
    """load_state_dict leaves torch's per-parameter state with the step counts
    only: the moments live on the backend (a GPU model's would otherwise be cast
    onto the GPU by torch's loader)."""
    net = model(torch.bfloat16)
    opt = HetAdam(net.parameters(), lr=LR)
    backward(net, 0)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    again = HetAdam(net.parameters(), lr=LR)
    again.load_state_dict(saved)
    assert all(set(st) == {"step"} for st in again.state.values())
    exported = again.state_dict()["state"]
    for i, st in saved["state"].items():
        assert all(torch.equal(exported[i][k], st[k]) for k in ("exp_avg", "exp_avg_sq", "master", "step"))


@pytest.mark.cuda
@CUDA
def test_gradients_streamed_from_the_gpu_during_backward_step_as_the_plain_path() -> None:
    check_on_the_gpu(overlap=True)
