"""Formats other than DEFAULT on every backend, tested as the default is (tests/test_backend_matrix.py):
each kernel built for the format's widths is bit-exact with the golden model, case by case and over
random sequences, and fixed shards of the format are bit-exact with the cpu backend's.

NARROW is the candidate the co-design sweep weighs against the default (docs/dse.md); ODD changes every
width a build takes (block, gradient, both moments), so a width that some kernel still hard-codes shows.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from backend_table import BY_NAME, BackendInfo, backend_of, params_over_backends

from hetadam.backends.base import Segment, StepHyper
from hetadam.numerics import FixedFormat, adam_step, encode_step, golden

NARROW = FixedFormat(m_bits=8, s_bits=8)
ODD = FixedFormat(block=64, g_bits=12, m_bits=12, s_bits=10, p_frac=20)
FORMATS = [pytest.param(NARROW, id=NARROW.hardware_name), pytest.param(ODD, id=ODD.hardware_name)]
DRIVER_FAKE = ("driver-fake",)
"""The golden-model double of the board's registers runs DEFAULT only (it stands in for one bitstream)."""


@functools.cache
def _cases(fmt: FixedFormat) -> tuple[golden.Case, ...]:
    return tuple(golden.cases(fmt))


def _golden_cases(info: BackendInfo, fmt: FixedFormat) -> list[golden.Case]:
    cases = list(_cases(fmt))
    if info.slow:  # a simulator: the cases of a few thousand element-steps, every edge case among them
        cases = [c for c in cases if c.n * len(c.steps) <= 5000]
        assert {"extremes", "saturation", "partial_block", "stochastic"} <= {c.name for c in cases}
    return cases


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("info", params_over_backends("fixed", exclude=DRIVER_FAKE))
def test_a_kernel_built_for_the_format_is_bit_exact_on_its_golden_cases(info: BackendInfo, fmt: FixedFormat) -> None:
    backend = backend_of(info)
    for case in _golden_cases(info, fmt):
        shard = backend.create_shard(case.idx0, case.n, "fixed", fmt)
        kernel = shard.kernel
        kernel.upload(golden.state_of(case.steps[0]))
        for k, step in enumerate(case.steps, 1):
            sat = kernel.run(*step.grad(), step.step_scalars(), case.idx0)
            kernel.commit()
            got, want = kernel.download(), step.expected_state()
            for name in ("P", "M", "S", "em", "es"):
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=f"{case.name} {k}")
            assert sat == step.expect_sat, f"{case.name} step {k}"
        shard.close()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("info", params_over_backends("fixed", exclude=DRIVER_FAKE))
def test_a_kernel_built_for_the_format_follows_the_model_over_random_sequences(
    info: BackendInfo, fmt: FixedFormat
) -> None:
    backend = backend_of(info)
    rng = np.random.default_rng(17)
    B = fmt.block
    sizes = [(1, 0), (B + 7, 3 * B), ((info.chunk or 4 * B) + 2 * B + 5, 16 * B)]
    for n, idx0 in sizes:
        state = golden.random_state(rng, n, fmt, -40, 4)
        shard = backend.create_shard(idx0, n, "fixed", fmt)
        kernel = shard.kernel
        kernel.upload(state)
        for t in range(1, 5):
            G, eg = golden.random_grad(rng, n, fmt, -40, 4)
            sc = encode_step(
                lr=float(10 ** rng.uniform(-5, -1)), beta1=0.9, beta2=0.999, eps=1e-8, step=t, fmt=fmt,
                weight_decay=0.01 * (t % 2), decoupled_weight_decay=True, seed=11, stochastic=t % 2 == 0,
            )  # fmt: skip
            want, want_sat = adam_step(state, G, eg, sc, idx0, fmt)
            assert kernel.run(G, eg, sc, idx0) == want_sat, f"n={n} step {t}"
            kernel.commit()
            assert kernel.download().equals(want), f"n={n} step {t}"
            state = want
        shard.close()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("info", params_over_backends("fixed", exclude=("cpu", *DRIVER_FAKE)))
def test_fixed_shards_of_the_format_are_bit_exact_with_the_cpu_backend(info: BackendInfo, fmt: FixedFormat) -> None:
    """Through the Shard API (the host's quantisation of gradients, the parameters out), AdamW with
    stochastic rounding."""
    gen = torch.Generator().manual_seed(5)
    sizes = (100, 45) if info.slow else (300, 1000)
    offsets = [0, -(-sizes[0] // fmt.block) * fmt.block]
    n = offsets[1] + -(-sizes[1] // fmt.block) * fmt.block
    params = [torch.randn(k, generator=gen) for k in sizes]
    ref_params = [p.clone() for p in params]
    flat = np.zeros(n, np.float32)
    for o, p in zip(offsets, params, strict=True):
        flat[o : o + p.numel()] = p.numpy()
    start = 2 * fmt.block
    shard = backend_of(info).create_shard(start, n, "fixed", fmt)
    ref = backend_of(BY_NAME["cpu"]).create_shard(start, n, "fixed", fmt)
    shard.import_state({}, flat)
    ref.import_state({}, flat.copy())
    for t in range(1, 5):
        scales = 10.0 ** -torch.randint(0, 4, (len(sizes),), generator=gen).double()
        grads = [torch.randn(k, generator=gen) * float(c) for k, c in zip(sizes, scales, strict=True)]
        hyper = StepHyper(
            step=t, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.05,
            decoupled_weight_decay=True, stochastic=True, seed=5,
        )  # fmt: skip
        sat = shard.step([Segment(o, p, g) for o, p, g in zip(offsets, params, grads, strict=True)], hyper)
        ref_sat = ref.step([Segment(o, p, g) for o, p, g in zip(offsets, ref_params, grads, strict=True)], hyper)
        shard.commit()
        ref.commit()
        assert sat == ref_sat, f"step {t}"
        for p, q in zip(params, ref_params, strict=True):
            assert torch.equal(p, q), f"step {t}"
    shard.close()
    ref.close()
