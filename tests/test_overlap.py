"""overlap=True: each gradient starts towards its float32 master from a
post-accumulate-grad hook while backward goes on; step() waits for the rest.
Whatever happens to the gradients between backward and the step (clipping,
unscaling, accumulation over several backwards), the result is bit for bit
the plain path's."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch

from hetadam import HetAdam
from hetadam.masters import Master

LR = 1e-3


def model(dtype: torch.dtype) -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh())
    net.append(torch.nn.Linear(32, 4))
    return net.to(dtype)


def backward(net: torch.nn.Module, t: int) -> None:
    dtype = next(net.parameters()).dtype
    x = torch.randn(16, 12, generator=torch.Generator().manual_seed(t)).to(dtype)
    net(x).float().square().mean().backward()


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def pair(dtype: torch.dtype, **options: object) -> tuple[torch.nn.Module, HetAdam, torch.nn.Module, HetAdam]:
    net = model(dtype)
    twin = copy.deepcopy(net)
    return net, HetAdam(net.parameters(), lr=LR, overlap=True, **options), twin, HetAdam(twin.parameters(), lr=LR)


def between(net: torch.nn.Module, what: str) -> None:
    """What a training loop does to the gradients between backward and step."""
    if what == "clip":
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=1e-3)
    elif what == "accumulate":
        backward(net, 100)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("what", ["nothing", "clip", "accumulate"])
def test_overlap_steps_bit_for_bit_as_the_plain_path(dtype: torch.dtype, what: str) -> None:
    net, opt, twin, ref = pair(dtype)
    for t in range(4):
        for n, o in ((net, opt), (twin, ref)):
            o.zero_grad()
            backward(n, t)
            between(n, what)
            o.step()
        assert same(net, twin), t
    saved, theirs = opt.state_dict()["state"], ref.state_dict()["state"]
    for i, st in saved.items():
        assert all(torch.equal(v, theirs[i][k]) for k, v in st.items()), i


def test_the_hooks_copy_each_gradient_during_backward() -> None:
    """By the time backward returns, the copies were made off the main thread,
    and each master holds its gradient as it is: the step copies nothing."""
    net, opt, _, _ = pair(torch.bfloat16)
    threads: list[str] = []
    stage = Master.stage

    def spy(self: Master, *args: object, **kwargs: object) -> None:
        threads.append(threading.current_thread().name)
        stage(self, *args, **kwargs)  # type: ignore[arg-type]

    Master.stage = spy  # type: ignore[method-assign]
    try:
        backward(net, 0)
        opt._streams.wait()
        assert len(threads) == 6 and all(name.startswith("hetadam-grads") for name in threads)
        masters = opt._masters[0].masters
        assert all(masters[k].holds(p.grad) for k, p in enumerate(net.parameters()))
        opt.step()
        assert len(threads) == 12  # the step asked each master, which had it already
    finally:
        Master.stage = stage  # type: ignore[method-assign]


def test_a_clipped_gradient_is_copied_again_by_the_step() -> None:
    net, opt, _, _ = pair(torch.bfloat16)
    backward(net, 0)
    opt._streams.wait()
    torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=1e-3)
    masters = opt._masters[0].masters
    assert not any(masters[k].holds(p.grad) for k, p in enumerate(net.parameters()))


def test_gradscaler_with_overlap_steps_as_without() -> None:
    net, opt, twin, ref = pair(torch.float16)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**8) for _ in range(2)]
    for t in range(3):
        for n, o, s in ((net, opt, scalers[0]), (twin, ref, scalers[1])):
            o.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = n(torch.randn(16, 12, generator=torch.Generator().manual_seed(t)).half()).float().square()
            s.scale(loss.mean()).backward()
            s.step(o)
            s.update()
        assert same(net, twin), t


def test_a_copy_or_pickle_hooks_its_own_parameters_and_close_unhooks() -> None:
    net, opt, twin, ref = pair(torch.bfloat16)
    for n, o in ((net, opt), (twin, ref)):
        backward(n, 0)
        o.step()
    clone_net, clone_opt = pickle.loads(pickle.dumps((net, opt)))
    assert clone_opt.overlap and clone_opt._streams is not None
    for t in (1, 2):
        for n, o in ((net, opt), (clone_net, clone_opt), (twin, ref)):
            o.zero_grad()
            backward(n, t)
            o.step()
    assert same(net, twin) and same(clone_net, twin)
    opt.close()
    calls: list[int] = []
    stage = Master.stage
    Master.stage = lambda *a, **k: calls.append(1)  # type: ignore[method-assign,assignment]
    try:
        backward(net, 3)
    finally:
        Master.stage = stage  # type: ignore[method-assign]
    assert calls == []


def test_the_host_model_bench_times_each_optimizer_and_what_overlap_hides() -> None:
    from hetadam.bench_host import host_table, run_host_bench

    rows = run_host_bench(["cpu"], repeat=2, warmup=1, widths=(16, 32, 8))
    assert [(r.dtype, r.optimizer) for r in rows] == [
        (dtype, name)
        for dtype in ("float32", "bfloat16")
        for name in ("torch AdamW fused", "HetAdam cpu", "HetAdam cpu overlap")
    ]
    assert all(r.params == 16 * 32 + 32 + 32 * 8 + 8 for r in rows)
    assert all(0 < r.step < r.iteration and 0 < r.forward_backward < r.iteration for r in rows)
    assert [r.hidden is not None for r in rows] == [False, False, True] * 2
    assert "HetAdam cpu overlap" in host_table(rows)
