"""What every backend promises, run once over the table in conftest.py: the
fixed kernel bit-exact with the golden vectors and the golden model, fixed
shards bit-exact with the cpu backend's, a discarded step changes nothing,
state survives an export/import round trip (within a backend and between
backends), and empty shards.

Backend-specific behaviour (device selection, fault injection, the fp32
kernel against torch, simulator lifecycle) stays in test_<backend>.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from backend_table import (
    BY_NAME,
    BackendInfo,
    backend_of,
    params_over_backends,
    params_over_backends_and_numerics,
)

from hetadam import HetAdam, backends
from hetadam.backends.base import Segment, Shard, StepHyper
from hetadam.numerics import DEFAULT, adam_step, encode_step, golden
from hetadam.numerics.convert import params_to_fixed
from hetadam.numerics.formats import n_blocks

B = DEFAULT.block


def _golden_cases(info: BackendInfo, golden_dir: Path) -> list[golden.Case]:
    cases = golden.load(golden_dir)
    assert len(cases) >= 18, f"{golden_dir} holds {len(cases)} cases"
    if info.slow:  # a simulator: the cases of a few thousand element-steps, every edge case among them
        cases = [c for c in cases if c.n * len(c.steps) <= 5000]
        assert {"extremes", "saturation", "partial_block", "stochastic"} <= {c.name for c in cases}
    return cases


@pytest.mark.parametrize("info", params_over_backends("fixed"))
def test_fixed_kernel_is_bit_exact_on_the_golden_vectors(info: BackendInfo, golden_dir: Path) -> None:
    """cpu included: its kernel is the compiled fast path (numerics/fast.py), not the model that wrote the vectors."""
    backend = backend_of(info)
    for case in _golden_cases(info, golden_dir):
        shard = backend.create_shard(case.idx0, case.n, "fixed", DEFAULT)
        kernel = shard.kernel
        kernel.upload(golden.state_of(case.steps[0]))
        for k, step in enumerate(case.steps, 1):  # the state carries over from step to step
            sat = kernel.run(*step.grad(), step.step_scalars(), case.idx0)
            kernel.commit()
            where = f"{case.name} step {k}"
            got, want = kernel.download(), step.expected_state()
            np.testing.assert_array_equal(got.P, want.P, err_msg=f"{where} P")
            np.testing.assert_array_equal(got.M, want.M, err_msg=f"{where} M")
            np.testing.assert_array_equal(got.S, want.S, err_msg=f"{where} S")
            np.testing.assert_array_equal(got.em, want.em, err_msg=f"{where} em")
            np.testing.assert_array_equal(got.es, want.es, err_msg=f"{where} es")
            assert sat == step.expect_sat, where
        shard.close()


def _sizes(info: BackendInfo) -> list[tuple[int, int]]:
    """(n, idx0) pairs: one element, a partial block, and a size that crosses a chunk boundary."""
    sizes = [(1, 0), (B + 7, 3 * B)]
    chunk = info.chunk or 4 * B
    sizes.append((chunk + 3 * B + 5, 64 * B))
    return sizes


@pytest.mark.parametrize("info", params_over_backends("fixed"))
def test_fixed_kernel_follows_the_model_over_random_sequences(info: BackendInfo) -> None:
    """Several steps with random hyper-parameters; at step 3 a discarded run and a
    staged state (the host path of a partial step)."""
    backend = backend_of(info)
    rng = np.random.default_rng(7)
    for n, idx0 in _sizes(info):
        state = golden.random_state(rng, n, DEFAULT, -40, 4)
        shard = backend.create_shard(idx0, n, "fixed", DEFAULT)
        kernel = shard.kernel
        kernel.upload(state)
        for t in range(1, 6):
            G, eg = golden.random_grad(rng, n, DEFAULT, -40, 4)
            sc = encode_step(
                lr=float(10 ** rng.uniform(-5, -1)), beta1=0.9, beta2=0.999, eps=1e-8, step=t,
                weight_decay=0.01 * (t % 2), decoupled_weight_decay=True, seed=11, stochastic=t % 2 == 0,
            )  # fmt: skip
            want, want_sat = adam_step(state, G, eg, sc, idx0)
            assert kernel.run(G, eg, sc, idx0) == want_sat, f"n={n} step {t}"
            assert kernel.download().equals(state), "run must leave the committed state alone"
            if t == 3:
                kernel.discard()
                kernel.commit()  # nothing pending: a no-op
                assert kernel.download().equals(state)
                kernel.stage(want)
                assert kernel.download().equals(state), "stage must leave the committed state alone"
            kernel.commit()
            assert kernel.download().equals(want), f"n={n} step {t}"
            np.testing.assert_array_equal(kernel.params(), want.P)
            state = want
        shard.close()


# ---- shards: the contract the optimizer sees ------------------------------------------------------


def _shapes(info: BackendInfo) -> tuple[int, ...]:
    """Parameter sizes: several parameters, the last block of each partial, a chunk boundary crossed."""
    if info.slow:
        return (100, 45, 130)
    return (300, 45, 1000)


@dataclass
class Model:
    """The parameters of one shard: the tensors, their offsets in the flat group
    (each on a block, as optim's layout places them) and the flat size."""

    params: list[torch.Tensor]
    offsets: list[int]
    n: int

    @classmethod
    def random(cls, shapes: tuple[int, ...], seed: int) -> Model:
        gen = torch.Generator().manual_seed(seed)
        offsets = [sum(-(-k // B) * B for k in shapes[:i]) for i in range(len(shapes))]
        return cls([torch.randn(k, generator=gen) for k in shapes], offsets, sum(-(-k // B) * B for k in shapes))

    def clone(self) -> Model:
        return Model([p.clone() for p in self.params], self.offsets, self.n)

    def flat(self) -> np.ndarray:
        out = np.zeros(self.n, np.float32)
        for o, p in zip(self.offsets, self.params, strict=True):
            out[o : o + p.numel()] = p.numpy()
        return out

    def segments(self, grads: list[torch.Tensor | None], steps: list[int | None] | None = None) -> list[Segment]:
        steps = steps or [None] * len(grads)
        return [Segment(o, p, g, s) for o, p, g, s in zip(self.offsets, self.params, grads, steps, strict=True)]


def _hyper(step: int, **options: object) -> StepHyper:
    base: dict = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.0}
    base.update(options)
    return StepHyper(step=step, **base)


def _grads(model: Model, gen: torch.Generator) -> list[torch.Tensor | None]:
    """A gradient per parameter, each at its own scale (1e-4 to 1)."""
    scales = 10.0 ** (4 * torch.rand(len(model.params), generator=gen) - 4)
    return [torch.randn(p.numel(), generator=gen) * float(k) for p, k in zip(model.params, scales, strict=True)]


def _new_shard(info: BackendInfo, model: Model, numerics: str, state: dict | None = None) -> Shard:
    shard = backend_of(info).create_shard(2 * B, model.n, numerics, DEFAULT)
    shard.import_state(state or {}, model.flat())
    return shard


def _assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray], where: str = "") -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{where} {key}")


def _fixed_wire_bytes(n: int) -> int:
    """A fixed step's traffic: 16-bit gradient mantissas and 8-bit block exponents in, 32-bit parameters out."""
    return 2 * n + n_blocks(n, B) + 4 * n


@pytest.mark.parametrize("info", params_over_backends("fixed", exclude=("cpu",)))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"weight_decay": 0.1, "maximize": True},
        {"weight_decay": 0.05, "decoupled_weight_decay": True, "stochastic": True, "seed": 5},
    ],
    ids=["adam", "coupled-decay-maximize", "adamw-stochastic"],
)
def test_fixed_shards_are_bit_exact_with_the_cpu_backend(info: BackendInfo, options: dict) -> None:
    """Through the Shard API: several parameters, one without a gradient at step 3 and one
    with its own step count at step 5 (the partial-step host path)."""
    model = Model.random(_shapes(info), seed=3)
    ref_model = model.clone()
    shard, ref = _new_shard(info, model, "fixed"), _new_shard(BY_NAME["cpu"], ref_model, "fixed")
    gen = torch.Generator().manual_seed(4)
    for t in range(1, 7):
        grads = _grads(model, gen)
        steps: list[int | None] = [None] * len(grads)
        if t == 3:
            grads[1] = None
        if t == 5:
            steps[0] = t - 1
        sat = shard.step(model.segments(grads, steps), _hyper(t, **options))
        host_path = t in (3, 5)
        if not host_path and not shard.kernel.host_resident:
            assert shard.wire_bytes == _fixed_wire_bytes(model.n), "exact bytes on the wire"
        shard.commit()
        assert sat == ref.step(ref_model.segments(grads, steps), _hyper(t, **options)), f"sat_count, step {t}"
        ref.commit()
        for i, (a, b) in enumerate(zip(model.params, ref_model.params, strict=True)):
            assert torch.equal(a, b), f"parameter {i}, step {t}"
    _assert_same_state(shard.export_state(), ref.export_state())
    shard.close()
    ref.close()


def _options(numerics: str) -> dict:
    return {"amsgrad": True, "weight_decay": 0.1} if numerics == "fp32" else {"weight_decay": 0.1, "stochastic": True}


@pytest.mark.parametrize(("info", "numerics"), params_over_backends_and_numerics())
def test_a_discarded_step_changes_nothing(info: BackendInfo, numerics: str) -> None:
    model = Model.random(_shapes(info), seed=5)
    shard = _new_shard(info, model, numerics)
    gen = torch.Generator().manual_seed(6)
    shard.step(model.segments(_grads(model, gen)), _hyper(1, **_options(numerics)))
    shard.commit()
    before, params_before = shard.export_state(), [p.clone() for p in model.params]
    shard.transactional = True  # the step is shared with other shards that may fail
    shard.step(model.segments(_grads(model, gen)), _hyper(2, **_options(numerics)))
    for a, b in zip(model.params, params_before, strict=True):
        assert torch.equal(a, b), "a transactional step changes no parameter before its commit"
    shard.discard()
    shard.commit()  # nothing pending: a no-op
    for a, b in zip(model.params, params_before, strict=True):
        assert torch.equal(a, b)
    _assert_same_state(shard.export_state(), before, "after discard")
    shard.close()


@pytest.mark.parametrize(("info", "numerics"), params_over_backends_and_numerics())
def test_state_survives_an_export_import_round_trip(info: BackendInfo, numerics: str) -> None:
    """A shard made from another's exported state holds the same state and takes the same next steps."""
    model = Model.random(_shapes(info), seed=7)
    shard = _new_shard(info, model, numerics)
    gen = torch.Generator().manual_seed(8)
    for t in (1, 2):
        shard.step(model.segments(_grads(model, gen)), _hyper(t, **_options(numerics)))
        shard.commit()
    exported = shard.export_state()
    copy = model.clone()
    other = _new_shard(info, copy, numerics, exported)
    _assert_same_state(other.export_state(), exported, "imported")
    for t in (3, 4):
        grads = _grads(model, gen)
        for s, m in ((shard, model), (other, copy)):
            s.step(m.segments(grads), _hyper(t, **_options(numerics)))
            s.commit()
        for a, b in zip(model.params, copy.params, strict=True):
            assert torch.equal(a, b), f"step {t}"
    _assert_same_state(shard.export_state(), other.export_state(), "after two more steps")
    shard.close()
    other.close()


@pytest.mark.parametrize("info", params_over_backends("fixed", exclude=("cpu",)))
def test_fixed_state_moves_between_backends_exactly(info: BackendInfo) -> None:
    """Exported from this backend, imported into cpu and back: both go on bit-identically."""
    model = Model.random(_shapes(info), seed=9)
    shard = _new_shard(info, model, "fixed")
    gen = torch.Generator().manual_seed(10)
    shard.step(model.segments(_grads(model, gen)), _hyper(1, stochastic=True, seed=3))
    shard.commit()
    on_cpu_model = model.clone()
    on_cpu = _new_shard(BY_NAME["cpu"], on_cpu_model, "fixed", shard.export_state())
    back_model = model.clone()
    back = _new_shard(info, back_model, "fixed", on_cpu.export_state())
    for t in (2, 3):
        grads = _grads(model, gen)
        for s, m in ((shard, model), (on_cpu, on_cpu_model), (back, back_model)):
            s.step(m.segments(grads), _hyper(t, stochastic=True, seed=3))
            s.commit()
        for a, b, c in zip(model.params, on_cpu_model.params, back_model.params, strict=True):
            assert torch.equal(a, b) and torch.equal(a, c), f"step {t}"
    for s in (shard, on_cpu, back):
        s.close()


@pytest.mark.parametrize("info", params_over_backends("fixed"))
def test_fixed_import_takes_parameters_that_moved_since_the_export(info: BackendInfo) -> None:
    """A checkpoint's state with parameters changed since (a clip, a restored layer): the
    given parameters win, the unchanged ones keep their exact fixed-point value.
    Changes at the first and the last element."""
    model = Model.random(_shapes(info), seed=11)
    shard = _new_shard(info, model, "fixed")
    gen = torch.Generator().manual_seed(12)
    shard.step(model.segments(_grads(model, gen)), _hyper(1))
    shard.commit()
    exported = shard.export_state()
    moved = model.clone()
    moved.params[0][0] = 0.5
    moved.params[-1][-1] = -1.25
    other = _new_shard(info, moved, "fixed", exported)
    P = other.export_state()["fixed_P"]
    first, last = moved.offsets[0], moved.offsets[-1] + moved.params[-1].numel() - 1
    assert P[first] == params_to_fixed(np.float32([0.5]))[0][0]
    assert P[last] == params_to_fixed(np.float32([-1.25]))[0][0]
    unchanged = np.ones(model.n, bool)
    unchanged[[first, last]] = False
    np.testing.assert_array_equal(P[unchanged], exported["fixed_P"][unchanged])
    shard.close()
    other.close()


@pytest.mark.parametrize(("info", "numerics"), params_over_backends_and_numerics())
def test_a_step_without_any_gradient_changes_nothing(info: BackendInfo, numerics: str) -> None:
    """Every parameter of the shard lacks a gradient this step (a frozen layer that a
    split put on one backend alone): the step is a no-op, as in torch.optim."""
    model = Model.random(_shapes(info), seed=13)
    shard = _new_shard(info, model, numerics)
    gen = torch.Generator().manual_seed(14)
    shard.step(model.segments(_grads(model, gen)), _hyper(1))
    shard.commit()
    before, params_before = shard.export_state(), [p.clone() for p in model.params]
    shard.transactional = True
    assert shard.step(model.segments([None] * len(model.params)), _hyper(2)) == 0
    shard.commit()
    for a, b in zip(model.params, params_before, strict=True):
        assert torch.equal(a, b)
    _assert_same_state(shard.export_state(), before)
    shard.close()


@pytest.mark.parametrize(("info", "numerics"), params_over_backends_and_numerics())
def test_an_empty_shard_steps_and_exports_nothing(info: BackendInfo, numerics: str) -> None:
    shard = backend_of(info).create_shard(0, 0, numerics, DEFAULT)
    shard.import_state({}, np.zeros(0, np.float32))
    assert shard.step([], _hyper(1)) == 0
    shard.commit()
    state = shard.export_state()
    assert state["exp_avg"].size == 0 and state["exp_avg_sq"].size == 0
    shard.close()


# ---- through HetAdam -------------------------------------------------------------------------------

REGISTERED_FIXED = [
    p
    for p in params_over_backends("fixed", exclude=("cpu",))
    if p.values[0].name in backends.NAMES and not p.values[0].slow  # a slow simulator trains in its own tests
]


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3))


def _train(backend: str) -> list[torch.Tensor]:
    model = _mlp()
    opt = HetAdam(
        model.parameters(), lr=3e-3, weight_decay=1e-2, backend=backend, numerics="fixed",
        stochastic_rounding=True, seed=3,
    )  # fmt: skip
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(2))
    for _ in range(10):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    opt.close()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("info", REGISTERED_FIXED)
def test_hetadam_trains_bit_identically_to_the_cpu_backend(info: BackendInfo) -> None:
    trained, ref, init = _train(info.name), _train("cpu"), list(_mlp().parameters())
    for a, b, before in zip(trained, ref, init, strict=True):
        assert not torch.equal(b, before), "training moved every parameter"
        assert torch.equal(a, b)
