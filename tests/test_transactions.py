"""A step is one transaction over every param group and every shard: it commits
everywhere or nowhere, whatever fails (a backend error, a device read, Ctrl-C,
a timeout), and a failed re-balance never fails a committed step. Each test
injects a fault into one shard of a real optimizer on the cpu backend; what a
fault leaves must equal what a run that never saw the failed step leaves."""

from __future__ import annotations

import copy
import signal
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from hetadam import HetAdam, NonFiniteGradientError, backends
from hetadam.backends.base import BackendError, FixedShard, Segment, Shard, StepHyper
from hetadam.backends.cpu import CpuBackend
from hetadam.kernels import HostKernel

SIZES = ((70, 33), (100, 5))
"""Two param groups of two parameters each."""


def groups(seed: int = 0) -> list[list[torch.nn.Parameter]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.nn.Parameter(torch.randn(n, generator=g) * 0.1) for n in sizes] for sizes in SIZES]


def make(gs: list[list[torch.nn.Parameter]], numerics: str, **options: object) -> HetAdam:
    options = {"lr": 1e-2, "rebalance_every": 0, **options}
    return HetAdam([{"params": ps} for ps in gs], numerics=numerics, **options)


def set_grads(gs: list[list[torch.nn.Parameter]], t: int) -> None:
    g = torch.Generator().manual_seed(1000 + t)
    for ps in gs:
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g) * 1e-2


def run(opt: HetAdam, gs: list[list[torch.nn.Parameter]], steps: range) -> None:
    for t in steps:
        set_grads(gs, t)
        opt.step()


def flat(gs: list[list[torch.nn.Parameter]]) -> list[torch.nn.Parameter]:
    return [p for ps in gs for p in ps]


def snapshot(gs: list[list[torch.nn.Parameter]], opt: HetAdam) -> tuple[list[torch.Tensor], dict]:
    return [p.detach().clone() for p in flat(gs)], copy.deepcopy(opt.state_dict())


def assert_unchanged(gs: list[list[torch.nn.Parameter]], opt: HetAdam, before: tuple[list[torch.Tensor], dict]) -> None:
    """Parameters, moments, step counts (and the exact fixed arrays) as in `before`."""
    params, saved = before
    for p, q in zip(flat(gs), params, strict=True):
        assert torch.equal(p, q)
    now = opt.state_dict()["state"]
    assert now.keys() == saved["state"].keys()
    for i, st in saved["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(now[i][key], st[key]), (i, key)
        for key, value in st.get("fixed", {}).items():
            assert torch.equal(now[i]["fixed"][key], value), (i, key)


def assert_as_if_never_tried(gs: list[list[torch.nn.Parameter]], opt: HetAdam, numerics: str, failed: int) -> None:
    """Two more steps leave what a run without the failed step `failed` leaves."""
    opt.zero_grad()
    run(opt, gs, range(failed + 1, failed + 3))
    ref = groups()
    ref_opt = make(ref, numerics)
    run(ref_opt, ref, range(failed))
    run(ref_opt, ref, range(failed + 1, failed + 3))
    for p, q in zip(flat(gs), flat(ref), strict=True):
        assert torch.equal(p, q)


Action = Callable[[Callable[[list[Segment], StepHyper], int], list[Segment], StepHyper], int]


def ctrl_c_to_main_thread() -> None:
    """SIGINT to the main thread, as a terminal's Ctrl-C reaches a Python process
    (signal.raise_signal from a worker would stay with the worker's thread)."""
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


def inject(shard: Shard, action: Action, *, fallible: bool = True) -> Callable[[], None]:
    """Make `shard.step` run `action(step, segments, hyper)`, as the share of a
    backend that can fail (so it never runs in place) unless `fallible` is
    False; returns the undo."""
    inner, was = shard.step, shard.infallible
    shard.step = lambda segments, hyper: action(inner, segments, hyper)  # type: ignore[method-assign]
    shard.infallible = was and not fallible

    def undo() -> None:
        shard.step = inner  # type: ignore[method-assign]
        shard.infallible = was

    return undo


def computes_then_raises(exc: BaseException) -> Action:
    def action(step: Callable[[list[Segment], StepHyper], int], segments: list[Segment], hyper: StepHyper) -> int:
        step(segments, hyper)  # the share is computed, then the device fails
        raise exc

    return action


FAULTS = {
    "error": lambda: ConnectionResetError("the device went away"),
    "ctrl-c": KeyboardInterrupt,
    "exit": lambda: SystemExit(3),
}


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_failure_in_a_later_group_leaves_every_group_as_it_was(numerics: str, fault: str) -> None:
    """The first group's shard is the only one of its group; it must not run in
    place (nor commit) while the second group can still fail. KeyboardInterrupt
    and SystemExit come out as they went in; other errors as a BackendError
    naming the backend."""
    gs = groups()
    opt = make(gs, numerics)
    run(opt, gs, range(3))
    before = snapshot(gs, opt)
    exc = FAULTS[fault]()
    undo = inject(opt._partitions[1].shards[0], computes_then_raises(exc))
    set_grads(gs, 3)
    with pytest.raises(BaseException) as info:
        opt.step()
    if fault == "error":
        assert isinstance(info.value, BackendError) and "'cpu'" in str(info.value)
        assert "the device went away" in str(info.value)
    else:
        assert info.value is exc
    assert_unchanged(gs, opt, before)
    undo()
    assert_as_if_never_tried(gs, opt, numerics, failed=3)


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
def test_ctrl_c_while_a_backend_is_mid_step_changes_nothing(numerics: str) -> None:
    """Ctrl-C reaches the main thread while it waits for the shards: the step is
    given up, KeyboardInterrupt propagates, and the share that finishes later
    changes nothing."""
    gs = groups()
    opt = make(gs, numerics)
    run(opt, gs, range(2))
    before = snapshot(gs, opt)
    finished, caught = threading.Event(), threading.Event()

    def interrupted(step: Callable[[list[Segment], StepHyper], int], segments: list[Segment], h: StepHyper) -> int:
        ctrl_c_to_main_thread()
        caught.wait(30)  # the backend is still at work when the main thread gets it
        sat = step(segments, h)
        finished.set()
        return sat

    undo = inject(opt._partitions[0].shards[0], interrupted)
    set_grads(gs, 2)
    try:
        with pytest.raises(KeyboardInterrupt):
            opt.step()
    finally:
        caught.set()
    assert_unchanged(gs, opt, before)
    assert finished.wait(30)
    _wait_idle(opt)
    assert_unchanged(gs, opt, before)
    undo()
    assert_as_if_never_tried(gs, opt, numerics, failed=2)


def _wait_idle(opt: HetAdam) -> None:
    """Until no given-up step of `opt` still runs (bounded)."""
    shards = [s for partition in opt._partitions for s in partition.shards]
    deadline = time.monotonic() + 30
    while opt._runner.busy(shards):
        assert time.monotonic() < deadline, "a given-up step never ended"
        time.sleep(0.01)


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
def test_a_step_that_times_out_is_never_applied_afterwards(numerics: str) -> None:
    """One backend, one shard (cpu fp32's cannot fail, only be slow), a
    step_timeout: the step is refused at the timeout and stays unapplied when
    the share ends later; a step or a state_dict() while it still runs is
    refused; afterwards steps resume as if it never happened."""
    gs = groups()[:1]
    opt = HetAdam(gs[0], lr=1e-2, numerics=numerics, step_timeout=0.2)
    run(opt, gs, range(2))
    before = snapshot(gs, opt)
    finished = threading.Event()

    def slow(step: Callable[[list[Segment], StepHyper], int], segments: list[Segment], h: StepHyper) -> int:
        time.sleep(1.0)
        sat = step(segments, h)
        finished.set()
        return sat

    undo = inject(opt._partitions[0].shards[0], slow, fallible=False)
    set_grads(gs, 2)
    with pytest.raises(BackendError, match=r"backend 'cpu' did not finish the step within 0.2 s; .* not applied"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(flat(gs), before[0], strict=True))
    with pytest.raises(BackendError, match="still running an earlier step"):
        opt.step()
    with pytest.raises(BackendError, match="still running an earlier step"):
        opt.state_dict()  # nor does anything else touch the shard meanwhile
    assert finished.wait(30)
    _wait_idle(opt)
    assert_unchanged(gs, opt, before)
    undo()
    opt.zero_grad()
    run(opt, gs, range(3, 5))
    ref = groups()[:1]
    ref_opt = HetAdam(ref[0], lr=1e-2, numerics=numerics)
    run(ref_opt, ref, [0, 1, 3, 4])
    for p, q in zip(gs[0], ref[0], strict=True):
        assert torch.equal(p, q)


class ReadFailsKernel(HostKernel):
    """The cpu kernel, but once `armed`, reading back a state that its own run
    computed fails, as a device read does when the device is lost."""

    armed = False

    def run(self, *args: object) -> int:
        sat = super().run(*args)
        if self.armed:
            self.poisoned = self.pending
        return sat

    def _read(self, st: object) -> None:
        if self.armed and st is getattr(self, "poisoned", None):
            raise RuntimeError("clEnqueueReadBuffer failed: DEVICE_NOT_AVAILABLE")

    def params(self) -> np.ndarray:
        self._read(self.state)
        return super().params()

    def pending_params(self) -> np.ndarray:
        self._read(self.pending)
        return super().pending_params()


def test_a_read_that_fails_leaves_every_shard_uncommitted() -> None:
    """The new parameters are read back before the first commit, so a failing
    read is a BackendError naming the backend with every shard uncommitted
    (it used to come after the commit of its own shard, raw, with the earlier
    groups committed)."""
    gs = groups()
    opt = make(gs, "fixed")
    run(opt, gs, range(2))
    shard = opt._partitions[1].shards[0]
    assert isinstance(shard, FixedShard)
    kernel = ReadFailsKernel(shard.n, shard.fmt)
    kernel.upload(shard.kernel.download())
    shard.kernel = kernel
    before = snapshot(gs, opt)
    kernel.armed = True
    set_grads(gs, 2)
    with pytest.raises(BackendError, match=r"'cpu'.*DEVICE_NOT_AVAILABLE"):
        opt.step()
    assert_unchanged(gs, opt, before)
    kernel.armed = False
    assert_as_if_never_tried(gs, opt, "fixed", failed=2)


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
def test_ctrl_c_during_the_commit_is_delivered_after_it(numerics: str) -> None:
    """The commit is a critical section: a Ctrl-C that arrives in it waits for
    its end, so the step is applied whole (every group, the step counts), and
    KeyboardInterrupt follows."""
    gs = groups()
    opt = make(gs, numerics)
    shard = opt._partitions[0].shards[0]
    commit = shard.commit

    def interrupted_commit() -> None:
        signal.raise_signal(signal.SIGINT)
        commit()

    shard.commit = interrupted_commit  # type: ignore[method-assign]
    set_grads(gs, 0)
    with pytest.raises(KeyboardInterrupt):
        opt.step()
    shard.commit = commit  # type: ignore[method-assign]
    ref = groups()
    run(make(ref, numerics), ref, range(1))
    for p, q in zip(flat(gs), flat(ref), strict=True):
        assert torch.equal(p, q)
    assert all(opt.state[p]["step"] == 1 for p in flat(gs))


def test_coupled_weight_decay_that_overflows_the_gradient_is_refused() -> None:
    """Under fixed, g + weight_decay * p is formed on the host after the finite
    check of g: an overflow there is a NonFiniteGradientError, nothing changed
    (it used to quantise Inf to a full-scale gradient with saturated == 0)."""
    p = torch.nn.Parameter(torch.linspace(-100.0, 100.0, 96))
    opt = HetAdam([p], lr=1e-3, weight_decay=1e37, numerics="fixed")
    before = p.detach().clone()
    p.grad = torch.full_like(p, 1e-3)
    with pytest.raises(NonFiniteGradientError, match="weight_decay=1e"):
        opt.step()
    assert torch.equal(p, before) and p not in opt.state
    opt_off = HetAdam([p], lr=1e-3, weight_decay=1e37, numerics="fixed", check_finite=False)
    opt_off.step()  # check_finite=False: as torch, the value flows on


class CountingBackend(CpuBackend):
    """The cpu backend, counting the elements its live shards hold (as device
    memory), and refusing a shard larger than `limit`."""

    name = "counting"
    held = 0
    peak = 0
    limit: int | None = None

    def create_shard(self, start: int, n: int, numerics: str, fmt: object) -> Shard:
        cls = CountingBackend
        if cls.limit is not None and n > cls.limit:
            raise BackendError(f"backend 'counting': out of device memory for {n} elements")
        shard = super().create_shard(start, n, numerics, fmt)
        shard.infallible = False  # a device's share
        cls.held += n
        cls.peak = max(cls.peak, cls.held)
        close = shard.close

        def counted_close() -> None:
            cls.held -= n
            close()

        shard.close = counted_close  # type: ignore[method-assign]
        return shard


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[CountingBackend]:
    monkeypatch.setitem(backends._REGISTRY, "counting", (__name__, "CountingBackend"))
    monkeypatch.setattr(CountingBackend, "held", 0)
    monkeypatch.setattr(CountingBackend, "peak", 0)
    monkeypatch.setattr(CountingBackend, "limit", None)
    return CountingBackend


def _skew(opt: HetAdam) -> None:
    """Step timings as if 'counting' ran four times faster per element than cpu."""
    part = opt._partitions[0]
    n_cpu, n_counting = (s.n for s in part.shards)
    part._seconds = [[n_cpu * 4e-9, n_counting * 1e-9]] * 4
    opt.rebalance_every = 1  # re-balance after the next step


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
def test_rebalance_frees_the_old_shards_before_making_the_new(counting: type[CountingBackend], numerics: str) -> None:
    ps = groups()[1]
    opt = HetAdam(ps, lr=1e-2, numerics=numerics, backend=["cpu", "counting"], split=[1, 1], rebalance_every=0)
    run(opt, [ps], range(2))
    old = opt._partitions[0].shards[1].n
    counting.peak = counting.held
    _skew(opt)
    run(opt, [ps], range(2, 3))
    new = opt._partitions[0].shards[1].n
    assert new > old
    assert counting.peak == new  # never old + new at once
    ref = groups()[1]
    run(HetAdam(ref, lr=1e-2, numerics=numerics), [ref], range(3))
    assert all(torch.equal(p, q) for p, q in zip(ps, ref, strict=True))


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
def test_a_failed_rebalance_keeps_the_shares_and_warns(counting: type[CountingBackend], numerics: str) -> None:
    """The step before a re-balance is committed: a re-balance that cannot make
    its new shards warns, keeps the old sizes (made again from the same state)
    and never fails the step, which a retrying caller would apply twice."""
    ps = groups()[1]
    opt = HetAdam(ps, lr=1e-2, numerics=numerics, backend=["cpu", "counting"], split=[1, 1], rebalance_every=0)
    run(opt, [ps], range(2))
    sizes = [s.n for s in opt._partitions[0].shards]
    counting.limit = sizes[1]  # the larger share the timings ask for does not fit
    _skew(opt)
    with pytest.warns(RuntimeWarning, match=r"re-balancing the shards failed .*out of device memory"):
        run(opt, [ps], range(2, 3))
    assert [s.n for s in opt._partitions[0].shards] == sizes
    opt.rebalance_every = 0
    run(opt, [ps], range(3, 5))
    ref = groups()[1]
    run(HetAdam(ref, lr=1e-2, numerics=numerics), [ref], range(5))
    assert all(torch.equal(p, q) for p, q in zip(ps, ref, strict=True))


def test_a_rebalance_that_cannot_restore_its_shards_says_the_step_was_applied(
    counting: type[CountingBackend],
) -> None:
    ps = groups()[1]
    opt = HetAdam(ps, lr=1e-2, numerics="fixed", backend=["cpu", "counting"], split=[1, 1], rebalance_every=0)
    run(opt, [ps], range(1))
    counting.limit = 0  # the device is gone: not even the old share fits
    _skew(opt)
    set_grads([ps], 1)
    with pytest.raises(BackendError, match="the step was applied, but re-balancing"):
        opt.step()
    assert all(opt.state[p]["step"] == 2 for p in ps)


def test_an_opencl_fp32_step_failing_in_its_second_chunk_leaves_the_state_as_it_was() -> None:
    """A lone shard (not transactional, as when it is a step's only one) whose
    second chunk fails: its moments and parameters stay as they were after
    discard (the first chunk's update used to land in the committed buffers)."""
    available = backends.availability("opencl")
    if not available.usable:
        pytest.skip(reason=f"opencl unusable here: {available.reason}. {available.remedy}")
    from hetadam.backends import opencl

    backend = opencl.OpenCLBackend(chunk=256)
    shard = backend.create_shard(0, 1000, "fp32")
    param = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    shard.import_state({}, param.numpy())
    hyper = StepHyper(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    shard.step([Segment(0, param, torch.randn(1000) * 1e-2)], hyper)
    shard.commit()
    state, value = shard.export_state(), param.clone()
    launches = 0
    launch = shard.launch

    def failing_launch(*args: object, **kwargs: object) -> object:
        nonlocal launches
        launches += 1
        if launches == 2:
            raise opencl.cl.MemoryError("clEnqueueNDRangeKernel", opencl.cl.status_code.OUT_OF_RESOURCES, "injected")
        return launch(*args, **kwargs)

    shard.launch = failing_launch  # type: ignore[method-assign]
    shard.transactional = False
    with pytest.raises(BackendError, match="opencl"):
        shard.step([Segment(0, param, torch.randn(1000) * 1e-2)], hyper)
    shard.discard()
    assert launches == 2
    assert torch.equal(param, value)
    for key, arr in shard.export_state().items():
        np.testing.assert_array_equal(arr, state[key], err_msg=key)
    shard.close()
    backend.close()


@pytest.mark.slow
def test_ctrl_c_during_an_rtl_sim_step_leaves_the_simulator_in_step() -> None:
    """Ctrl-C while the simulator is mid-request: the request ends on its worker
    thread, so the simulated bus stays in step; the step is not applied and
    the next steps are bit-exact with cpu's (they used to fail with "kernel is
    not idle")."""
    available = backends.availability("rtl-sim")
    if not available.usable:
        pytest.skip(reason=f"rtl-sim unusable here: {available.reason}. {available.remedy}")
    gs, ref = [groups()[1][:1]], [groups()[1][:1]]  # 100 elements
    opt = HetAdam(gs[0], lr=1e-2, numerics="fixed", backend="rtl-sim")
    ref_opt = HetAdam(ref[0], lr=1e-2, numerics="fixed")
    run(opt, gs, range(1))
    before = snapshot(gs, opt)
    started, interrupted = threading.Event(), threading.Event()

    def slow_step(step, s, h):  # the request runs only once Ctrl-C has reached the main thread
        started.set()
        interrupted.wait(30)
        return step(s, h)

    undo = inject(opt._partitions[0].shards[0], slow_step)
    ctrl_c = threading.Thread(target=lambda: started.wait(30) and ctrl_c_to_main_thread())
    ctrl_c.start()
    set_grads(gs, 1)
    try:
        with pytest.raises(KeyboardInterrupt):
            opt.step()
    finally:
        interrupted.set()
        ctrl_c.join()
    assert_unchanged(gs, opt, before)
    undo()
    run(opt, gs, range(2, 4))
    run(ref_opt, ref, [0, 2, 3])
    assert torch.equal(gs[0][0], ref[0][0])
    opt.close()
