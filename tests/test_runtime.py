"""One step split across backends: bit-exact shares, throughput-sized and
re-sized shards whose state moves with them, and all-or-nothing steps when a
backend fails, hangs or vanishes mid-step."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from hetadam import HetAdam, backends
from hetadam.backends.base import BackendError, FixedShard, Segment, StepHyper
from hetadam.backends.cpu import CpuBackend
from hetadam.kernels import HostKernel
from hetadam.numerics import DEFAULT
from hetadam.runtime import split_sizes


class FaultyBackend(CpuBackend):
    """The cpu backend with faults injected on request (a test double of a
    remote backend: its shards fail, hang or lose their device mid-step)."""

    name = "faulty"
    fault: str | None = None  # "raise", "hang", "lost"
    release = threading.Event()

    def create_shard(self, start, n, numerics, fmt):
        shard = super().create_shard(start, n, numerics, fmt)
        shard.infallible = False  # a remote backend's share can fail: it never runs in place
        inner = shard.step

        def step(segments: list[Segment], hyper: StepHyper) -> int:
            sat = inner(segments, hyper)  # the share is computed, then the device fails
            if FaultyBackend.fault == "raise":
                raise RuntimeError("injected fault")
            if FaultyBackend.fault == "hang":
                FaultyBackend.release.wait(30)
            if FaultyBackend.fault == "lost":
                raise ConnectionResetError("simulator process exited")
            return sat

        shard.step = step
        return shard


@pytest.fixture
def faulty(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(backends._REGISTRY, "faulty", (__name__, "FaultyBackend"))
    FaultyBackend.fault = None
    FaultyBackend.release.clear()
    yield FaultyBackend
    FaultyBackend.fault = None
    FaultyBackend.release.set()


def params(seed: int = 0, sizes=(100003, 4099, 1, 77)) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(n, generator=g) * 0.1) for n in sizes]


def set_grads(ps: list[torch.nn.Parameter], t: int) -> None:
    g = torch.Generator().manual_seed(1000 + t)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g) * 10.0 ** float(torch.empty(()).uniform_(-4, 0, generator=g))


def run(opt: HetAdam, ps: list[torch.nn.Parameter], steps: range) -> None:
    for t in steps:
        set_grads(ps, t)
        opt.step()


def test_split_sizes_are_block_aligned_and_proportional() -> None:
    assert split_sizes(1000 * 32, [1, 3], 32) == [250 * 32, 750 * 32]
    sizes = split_sizes(12345, [2.0, 1.0, 1.0], 32)
    assert sum(sizes) == 12345 and all(s % 32 == 0 for s in sizes[:-1])
    assert split_sizes(64, [1.0, 0.0], 32) == [64, 0]
    with pytest.raises(ValueError, match="positive"):
        split_sizes(64, [0.0, 0.0], 32)


@pytest.mark.parametrize("numerics", ["fixed", "fp32"])
def test_split_is_bit_exact_with_one_backend(faulty, numerics: str) -> None:
    single, split = params(), params()
    opt_single = HetAdam(single, numerics=numerics, stochastic_rounding=True, seed=3)
    opt_split = HetAdam(split, numerics=numerics, backend=["cpu", "faulty"], stochastic_rounding=True, seed=3)
    shards = opt_split._partitions[0].shards
    assert len(shards) == 2 and shards[1].start % 32 == 0
    run(opt_single, single, range(8))
    run(opt_split, split, range(8))
    assert all(torch.equal(a, b) for a, b in zip(single, split, strict=True))
    assert {s.backend for s in opt_split.step_stats} == {"cpu", "faulty"}


def test_rebalance_moves_state_with_its_elements(faulty) -> None:
    single, split = params(), params()
    opt_single = HetAdam(single, numerics="fixed")
    opt_split = HetAdam(split, numerics="fixed", backend=["cpu", "faulty"], rebalance_every=0)
    run(opt_single, single, range(4))
    run(opt_split, split, range(4))
    from hetadam.runtime import rebalance

    part = opt_split._partitions[0]
    before = [s.n for s in part.shards]
    opt_split._partitions[0] = rebalance(
        part, part.layout.flatten(split), opt_split.backends, "fixed", opt_split.fixed_format, [1.0, 5.0]
    )
    after = [s.n for s in opt_split._partitions[0].shards]
    assert after != before and after[1] > after[0]
    run(opt_single, single, range(4, 8))
    run(opt_split, split, range(4, 8))
    assert all(torch.equal(a, b) for a, b in zip(single, split, strict=True))


def test_measured_timings_resize_the_shares(faulty) -> None:
    ps = params()
    opt = HetAdam(ps, numerics="fixed", backend=["cpu", "faulty"], rebalance_every=5)
    part = opt._partitions[0]
    n_cpu, n_faulty = (s.n for s in part.shards)
    part._seconds = [[n_cpu * 1e-9, n_faulty * 4e-9]] * 4  # as if 'faulty' ran four times slower per element
    opt._rebalance()
    sizes = [s.n for s in opt._partitions[0].shards]
    assert sizes[0] > 3 * sizes[1]


def snapshot(ps, opt):
    return [p.detach().clone() for p in ps], copy.deepcopy(opt.state_dict())


def assert_unchanged(ps, opt, before) -> None:
    old_params, old_sd = before
    assert all(torch.equal(p, q) for p, q in zip(ps, old_params, strict=True))
    sd = opt.state_dict()
    for i, st in old_sd["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sd["state"][i][key], st[key]), (i, key)
        if "fixed" in st:
            for key, value in st["fixed"].items():
                assert torch.equal(sd["state"][i]["fixed"][key], value)


@pytest.mark.parametrize("numerics", ["fixed", "fp32"])
@pytest.mark.parametrize("fault", ["raise", "lost", "hang"])
def test_a_failing_backend_leaves_everything_as_it_was(faulty, numerics: str, fault: str) -> None:
    ps = params()
    opt = HetAdam(ps, numerics=numerics, backend=["cpu", "faulty"], step_timeout=2.0, rebalance_every=0)
    run(opt, ps, range(3))
    before = snapshot(ps, opt)
    faulty.fault = fault
    set_grads(ps, 3)
    with pytest.raises(BackendError, match="faulty") as info:
        opt.step()
    if fault == "hang":
        assert "within 2.0 s" in str(info.value)
        faulty.release.set()
    assert_unchanged(ps, opt, before)
    faulty.fault = None
    opt.zero_grad()
    ref = params()
    ref_opt = HetAdam(ref, numerics=numerics)
    run(ref_opt, ref, range(3))
    run(ref_opt, ref, range(4, 6))
    run(opt, ps, range(4, 6))  # the failed step left no trace
    assert all(torch.equal(a, b) for a, b in zip(ref, ps, strict=True))


def test_opencl_share_bit_exact_and_reports_its_wire_bytes() -> None:
    if not backends.availability("opencl").usable:
        pytest.skip(reason=f"opencl backend unusable: {backends.availability('opencl').reason}")
    single, split = params(), params()
    opt_single = HetAdam(single, numerics="fixed")
    opt_split = HetAdam(split, numerics="fixed", backend=["cpu", "opencl"], rebalance_every=3)
    run(opt_single, single, range(7))
    run(opt_split, split, range(7))
    assert all(torch.equal(a, b) for a, b in zip(single, split, strict=True))
    stats = {s.backend: s for s in opt_split.step_stats}
    assert stats["cpu"].wire_bytes == 0
    n = stats["opencl"].elements  # in: 2-byte gradient mantissas and a 1-byte exponent per block; out: 4-byte params
    assert stats["opencl"].wire_bytes == 2 * n + -(-n // 32) + 4 * n
    assert sum(s.elements for s in opt_split.step_stats) == opt_split._partitions[0].layout.size


class WiredKernel(HostKernel):
    """The host kernel, counted as if its state lay across a wire."""

    host_resident = False


def test_a_fixed_step_moves_gradient_mantissas_and_exponents_in_and_parameters_out() -> None:
    n = 1000  # 31.25 blocks: the last one partial
    shard = FixedShard(0, n, WiredKernel(n, DEFAULT), DEFAULT)
    param = torch.zeros(n)
    hyper = StepHyper(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    shard.step([Segment(0, param, torch.randn(n))], hyper)
    assert shard.wire_bytes == 2 * n + 32 + 4 * n  # int16 mantissas, an int8 exponent per block, int32 params
