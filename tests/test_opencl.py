"""The opencl backend (hw/opencl/adam.cl through pyopencl) on every OpenCL
device here — PoCL's CPU device at least: `fp32` bit-exact with torch's fused
Adam and close to torch.optim.Adam/AdamW, in place and transactional; the FPGA
builds; a failing device; device selection; training through HetAdam.

What every backend promises (`fixed` bit-exact with the golden vectors, the
model and the cpu backend, with and without fp64; discard; state round trips;
empty shards) runs on the selected device in test_backend_matrix.py."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from hetadam import HetAdam
from hetadam.backends import opencl
from hetadam.backends.base import BackendError, BackendUnavailable, Segment, StepHyper
from hetadam.numerics import DEFAULT, adam_step, encode_step, golden
from hetadam.numerics.convert import quantize_grad
from hetadam.numerics.formats import n_blocks

AVAILABILITY = opencl.OpenCLBackend.availability()
pytestmark = pytest.mark.skipif(not AVAILABILITY.usable, reason=f"{AVAILABILITY.reason}. {AVAILABILITY.remedy}".strip())


def _devices() -> list[tuple[int, int, str]]:
    if not AVAILABILITY.usable:
        return []
    cl = opencl.cl
    return [
        (pi, di, f"{p.name}:{d.name}")
        for pi, p in enumerate(cl.get_platforms())
        for di, d in enumerate(p.get_devices())
    ]


DEVICES = _devices()
_BACKENDS: dict[tuple[int, int, int, bool, bool], opencl.OpenCLBackend] = {}


def backend_for(
    where: tuple[int, int, str],
    chunk: int = 1000,
    fp32_fma: bool = True,
    staged: bool = False,
) -> opencl.OpenCLBackend:
    """One backend per device and option, shared by the tests of a process.
    A small staging chunk so that every test streams several chunks. `staged`:
    transfers through the pinned staging buffers even where the device shares
    host memory (the path of a discrete GPU)."""
    key = (where[0], where[1], chunk, fp32_fma, staged)
    if key not in _BACKENDS:
        be = opencl.OpenCLBackend(platform=where[0], device=where[1], chunk=chunk, fp32_fma=fp32_fma)
        be.dev.unified &= not staged
        _BACKENDS[key] = be
    return _BACKENDS[key]


@pytest.fixture(params=DEVICES, ids=[d[2] for d in DEVICES])
def device(request: pytest.FixtureRequest) -> tuple[int, int, str]:
    pi, di, name = request.param
    problem = opencl.build_problem(opencl.cl.get_platforms()[pi].get_devices()[di])
    if problem is not None:
        pytest.skip(reason=f"{name} cannot build OpenCL programs: {problem}. {opencl.BUILD_REMEDY}")
    return request.param


@pytest.mark.parametrize("target", ["-DHETADAM_XILINX", "-DHETADAM_INTEL_FPGA"])
def test_fpga_builds_run_as_single_work_item_tasks(device: tuple[int, int, str], target: str) -> None:
    """The FPGA variants (vendor attributes, integer arithmetic only) built for
    this device and launched as one work-item looping over every unit."""
    dev = backend_for(device).dev
    cl = opencl.cl
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the other vendor's attributes are unknown here
        fixed = cl.Kernel(dev.program((target,)), "hetadam_adam")
        fp32 = cl.Kernel(dev.program((target, *dev.fp32_options)), "hetadam_adam_fp32")
    rng = np.random.default_rng(9)
    n = 200
    nb = n_blocks(n)
    state = golden.random_state(rng, n, DEFAULT, -40, 4)
    G, eg, _ = quantize_grad(rng.standard_normal(n) * 1e-3)
    sc = encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=3, seed=7, stochastic=True)
    expected, sat = adam_step(state, G, eg, sc, 64)
    kernel = opencl.OpenCLFixedKernel(dev, n, DEFAULT)
    kernel.upload(state)
    g_buf, eg_buf, sat_buf = dev.buffer(2 * n, G), dev.buffer(nb, eg), dev.buffer(4 * nb)
    fixed.set_scalar_arg_dtypes([None] * 9 + [np.uint32] * 4 + [np.int32] * 7 + [np.uint32] * 2 + [np.int32])
    fixed(
        dev.compute, (1,), (1,), kernel.p[0], g_buf, eg_buf, kernel.ms[0], kernel.ex[0], kernel.p[1], kernel.ms[1],
        kernel.ex[1], sat_buf, n, 0, nb, 64, sc.beta1, sc.beta2, sc.eps_m, sc.eps_e, sc.alpha_m, sc.alpha_sh,
        sc.ratio_max, sc.lwd, sc.seed, sc.mode,
    ).wait()  # fmt: skip
    kernel.has_pending = True
    kernel.commit()
    assert kernel.download().equals(expected)
    assert dev.read(sat_buf, np.empty(nb, np.int32)).sum() == sat

    m = 1000  # fp32: the task against the NDRange build of the backend, same arithmetic
    gen = torch.Generator().manual_seed(2)
    p, g = torch.randn(m, generator=gen), torch.randn(m, generator=gen)
    shard = backend_for(device).create_shard(0, m, "fp32", DEFAULT)
    shard.import_state({}, p.numpy())
    hyper = _hyper(4, weight_decay=0.1, amsgrad=True)
    sc32 = opencl.Fp32Scalars.of(hyper)
    ins = [dev.buffer(4 * m, x) for x in (p.numpy(), g.numpy(), np.zeros(m, np.float32), np.zeros(m, np.float32))]
    vmax = dev.buffer(4 * m, np.zeros(m, np.float32))
    fp32.set_scalar_arg_dtypes([None] * 9 + [np.uint32] * 3 + [np.float32] * 8 + [np.int32])
    units = m // opencl.VEC  # the default HETADAM_VEC; m is a multiple of it
    fp32(dev.compute, (1,), (1,), *ins, vmax, ins[0], ins[2], ins[3], vmax, 0, 0, units, *sc32.args()).wait()
    q = p.clone()
    shard.step([Segment(0, q, g)], hyper)
    shard.commit()
    np.testing.assert_array_equal(dev.read(ins[0], np.empty(m, np.float32)), q.numpy())


def _segments(params: list[torch.Tensor], grads: list[torch.Tensor | None], block: int = 32) -> list[Segment]:
    out, at = [], 0
    for p, g in zip(params, grads, strict=True):
        out.append(Segment(at, p.view(-1), None if g is None else g.view(-1)))
        at += -(-p.numel() // block) * block
    return out


def _flat_size(params: list[torch.Tensor], block: int = 32) -> int:
    return sum(-(-p.numel() // block) * block for p in params)


def _hyper(step: int, **kw: object) -> StepHyper:
    base = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
    base.update(kw)
    return StepHyper(step=step, **base)


# ---- fp32 ----------------------------------------------------------------------------------------

OPTIONS = [
    dict(zip(("weight_decay", "amsgrad", "maximize", "decoupled_weight_decay"), combo, strict=True))
    for combo in itertools.product((0.0, 0.1), (False, True), (False, True), (False, True))
]


def _fp32_run(
    device: tuple[int, int, str],
    options: dict,
    steps: int,
    transactional: bool = False,
    block: int = 32,
    fp32_fma: bool = True,
    staged: bool = False,
) -> tuple[list[torch.Tensor], dict, list[torch.Tensor], torch.optim.Optimizer, torch.optim.Optimizer]:
    """The same steps through an opencl fp32 shard, torch's fused Adam and torch's
    default Adam; several parameters, one of them without a gradient at times."""
    gen = torch.Generator().manual_seed(11)
    shapes = (1003, 1, 64, 2500)
    init = [torch.randn(s, generator=gen) for s in shapes]
    ours = [p.clone() for p in init]
    fused_ps = [p.clone().requires_grad_() for p in init]
    plain_ps = [p.clone().requires_grad_() for p in init]
    cls = torch.optim.AdamW if options["decoupled_weight_decay"] else torch.optim.Adam
    kw = {k: v for k, v in options.items() if k != "decoupled_weight_decay"}
    fused = cls(fused_ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-7, fused=True, **kw)
    plain = cls(plain_ps, lr=1e-2, betas=(0.8, 0.99), eps=1e-7, **kw)
    be = backend_for(device, fp32_fma=fp32_fma, staged=staged)
    shard = be.create_shard(0, _flat_size(init, block), "fp32", DEFAULT)
    flat = np.zeros(shard.n, np.float32)
    for seg in _segments(ours, ours, block):
        flat[seg.offset : seg.offset + seg.param.numel()] = seg.param.numpy()
    shard.import_state({}, flat)
    shard.transactional = transactional
    count = [0] * len(shapes)
    for _ in range(steps):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        if _ % 2:
            grads[2] = None
        for ps, opt in ((fused_ps, fused), (plain_ps, plain)):
            for p, g in zip(ps, grads, strict=True):
                p.grad = None if g is None else g.clone()
            opt.step()
        for i, g in enumerate(grads):  # torch counts steps per parameter
            count[i] += g is not None
        segs = [  # each parameter with its own step count, as torch keeps them
            Segment(seg.offset, seg.param, seg.grad, count[i]) for i, seg in enumerate(_segments(ours, grads, block))
        ]
        shard.step(segs, _hyper(max(count), lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-7, **options))
        shard.commit()
        assert shard.wire_bytes >= 8 * sum(g.numel() for g in grads if g is not None)
    state = shard.export_state()
    return ours, state, [p.detach() for p in fused_ps], fused, plain


def _vector_body(n: int) -> slice:
    """The elements torch's fused CPU kernel updates with its vector code; the
    last n % width elements of each tensor take its scalar loop, whose
    rounding can differ from the vector code's by an ulp."""
    width = {"AVX512": 16, "AVX2": 8}.get(torch.backends.cpu.get_cpu_capability(), 8)
    return slice(0, n - n % width)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_fp32_bit_exact_with_torch_fused_and_close_to_torch_adam(device: tuple[int, int, str], options: dict) -> None:
    _check_fp32_against_torch(device, options, block=32)


@pytest.mark.parametrize("block", [1, 5])
@pytest.mark.parametrize("staged", [False, True], ids=["direct", "staged"])
def test_fp32_unaligned_parameters(device: tuple[int, int, str], block: int, staged: bool) -> None:
    """Parameters at offsets that are no multiple of the vector width: their
    ends take the element-wise kernel, with the same arithmetic."""
    _check_fp32_against_torch(device, {**OPTIONS[-1], "amsgrad": block == 5}, block=block, staged=staged)


def _check_fp32_against_torch(device: tuple[int, int, str], options: dict, block: int, staged: bool = False) -> None:
    ours, state, fused_ps, fused, plain = _fp32_run(device, options, steps=6, block=block, staged=staged)
    names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if options["amsgrad"] else ())
    segments = _segments(ours, ours, block)
    for p, q, ref, seg in zip(ours, fused_ps, fused.param_groups[0]["params"], segments, strict=True):
        body = _vector_body(p.numel())
        assert torch.equal(p[body], q[body])
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        for name in names:
            mine = torch.from_numpy(state[name][seg.offset : seg.offset + p.numel()])
            theirs = fused.state[ref][name]
            assert torch.equal(mine[body], theirs[body]), name
            torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-9)
    for p, q in zip(ours, plain.param_groups[0]["params"], strict=True):
        torch.testing.assert_close(p, q.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options", OPTIONS[::5], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_fp32_without_fma_is_close_to_torch(device: tuple[int, int, str], options: dict) -> None:
    ours, _, fused_ps, _, plain = _fp32_run(device, options, steps=6, fp32_fma=False)
    for p, q, r in zip(ours, fused_ps, plain.param_groups[0]["params"], strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p, r.detach(), rtol=1e-5, atol=1e-6)


def test_fp32_transactional_steps_equal_in_place_steps(device: tuple[int, int, str]) -> None:
    options = {"weight_decay": 0.1, "amsgrad": True, "maximize": False, "decoupled_weight_decay": True}
    in_place, state_a, *_ = _fp32_run(device, options, steps=4)
    pending, state_b, *_ = _fp32_run(device, options, steps=4, transactional=True)
    for p, q in zip(in_place, pending, strict=True):
        assert torch.equal(p, q)
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)


@pytest.mark.parametrize("numerics", ["fp32", "fixed"])
def test_a_failing_device_raises_backend_error_and_changes_nothing(
    device: tuple[int, int, str], numerics: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = torch.Generator().manual_seed(6)
    p = torch.randn(2048, generator=gen)
    shard = backend_for(device).create_shard(0, 2048, numerics, DEFAULT)
    shard.import_state({}, p.numpy())
    shard.transactional = True
    before, p_before = shard.export_state(), p.clone()
    kernel = shard if numerics == "fp32" else shard.kernel
    calls = []

    def failing(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise opencl.cl.RuntimeError("clEnqueueNDRangeKernel failed: OUT_OF_RESOURCES")

    monkeypatch.setattr(kernel, "launch", failing)
    with pytest.raises(BackendError, match="OUT_OF_RESOURCES"):
        shard.step([Segment(0, p, torch.randn(2048, generator=gen))], _hyper(1))
    assert calls
    shard.discard()
    assert torch.equal(p, p_before)
    for key, value in shard.export_state().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


# ---- selection, availability ---------------------------------------------------------------------


def test_device_selection_by_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    pi, di, first = next(
        (pi, di, d)
        for pi, p in enumerate(opencl.cl.get_platforms())
        for di, d in enumerate(p.get_devices())
        if opencl.build_problem(d) is None
    )
    assert opencl.select_device(platform=pi, device=di) == first
    assert opencl.select_device(platform=first.platform.name[:6].upper(), device=first.name[-5:]) == first
    monkeypatch.setenv(opencl.ENV_PLATFORM, str(pi))
    monkeypatch.setenv(opencl.ENV_DEVICE, first.name[:4])
    assert opencl.select_device() == first
    monkeypatch.setenv(opencl.ENV_DEVICE, "no such device anywhere")
    with pytest.raises(LookupError, match="no such device anywhere"):
        opencl.select_device()
    availability = opencl.OpenCLBackend.availability()
    assert not availability.usable and "no such device anywhere" in availability.reason
    assert "pocl" in availability.remedy
    with pytest.raises(BackendUnavailable, match="no such device anywhere"):
        opencl.OpenCLBackend()
    monkeypatch.delenv(opencl.ENV_DEVICE)
    assert opencl.OpenCLBackend(device=di).dev.device == opencl.select_device(device=di) == first


def test_gpus_are_preferred_among_the_devices_that_can_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(opencl.ENV_PLATFORM, raising=False)
    monkeypatch.delenv(opencl.ENV_DEVICE, raising=False)
    building = [d for p in opencl.cl.get_platforms() for d in p.get_devices() if opencl.build_problem(d) is None]
    gpus = [d for d in building if d.type & opencl.cl.device_type.GPU]
    assert opencl.select_device() == (gpus or building)[0]


def test_missing_pyopencl_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opencl, "cl", None)
    availability = opencl.OpenCLBackend.availability()
    assert not availability.usable
    assert availability.reason == "pyopencl is not installed"
    assert "pip install 'hetadam[opencl]'" in availability.remedy
    with pytest.raises(BackendUnavailable, match=r"hetadam\[opencl\]"):
        opencl.OpenCLBackend()


def test_bench_reports_every_numerics_and_mode() -> None:
    rows = opencl.bench_opencl(sizes=(4096,), seconds=0.0)
    assert {(r["numerics"], r["mode"]) for r in rows} == {
        (numerics, mode) for numerics in ("fp32", "fp32-nofma", "fixed") for mode in ("resident", "step")
    }
    assert all(r["gparam_s"] > 0 and r["ratio"] > 0 for r in rows)


# ---- training through HetAdam --------------------------------------------------------------------


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(9, 40), torch.nn.Tanh(), torch.nn.Linear(40, 4))


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = 12) -> list[float]:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(9, 4, generator=torch.Generator().manual_seed(2))
    losses = []
    for _ in range(steps):
        x = torch.randn(32, 9, generator=gen)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), (x @ w).argmax(1))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_hetadam_trains_on_opencl() -> None:
    ref, ours = _model(), _model()
    _train(ref, torch.optim.Adam(ref.parameters(), lr=1e-2, weight_decay=0.01))
    losses = _train(ours, HetAdam(ours.parameters(), lr=1e-2, weight_decay=0.01, backend="opencl"))
    assert losses[-1] < losses[0] * 0.7
    for p, q in zip(ref.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
