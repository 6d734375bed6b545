"""The `fixed` golden model: error bounds against float64 Adam, rounding,
saturation, the LFSR, the scalar encodings, and the compiled fast path."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hetadam.numerics import DEFAULT, FixedState, adam_step, encode_step, fast, golden
from hetadam.numerics.convert import (
    dequantize_blocks,
    pack_ex,
    pack_ms,
    params_from_fixed,
    params_to_fixed,
    quantize_blocks,
    quantize_grad,
    state_from_float,
    state_to_float,
    unpack_ex,
    unpack_ms,
)
from hetadam.numerics.fixed import isqrt, round_shift, rshr
from hetadam.numerics.formats import EXP_ZERO, RATIO_FRAC, FixedFormat
from hetadam.numerics.lfsr import element_random, step_seed, xorshift32
from hetadam.numerics.scalars import encode_alpha, encode_eps, ratio_bound

B = DEFAULT.block


def float_adam_step(st: FixedState, G, eg, *, lr, beta1, beta2, eps, step, fmt=DEFAULT):
    """float64 Adam on the dequantised inputs: the reference of the error bounds."""
    p = params_from_fixed(st.P, fmt)
    m = dequantize_blocks(st.M, st.em, fmt.m_bits - 1, fmt.block)
    s = dequantize_blocks(st.S, st.es, fmt.s_bits, fmt.block)
    g = dequantize_blocks(G, eg, fmt.g_bits - 1, fmt.block)
    m1 = beta1 * m + (1 - beta1) * g
    v1 = beta2 * s * s + (1 - beta2) * g * g
    bc1, bc2 = 1 - beta1**step, 1 - beta2**step
    alpha = lr * math.sqrt(bc2) / bc1
    r = m1 / (np.sqrt(v1) + eps * math.sqrt(bc2))
    bound = ratio_bound(beta1, beta2) / 2**RATIO_FRAC
    r = np.clip(r, -bound, bound)
    return p - alpha * r, m1, np.sqrt(v1), alpha, r


def random_block_state(rng, n, spread, fmt=DEFAULT):
    """Moments and gradients whose magnitudes stay within 2**-spread of a
    per-block scale (the scales themselves span six decades)."""
    scale = np.repeat(10.0 ** rng.uniform(-6, 0, n // fmt.block), fmt.block)

    def signed_magnitudes() -> np.ndarray:  # |x| in [2**-spread, 1] * scale (a normal draw would reach 0)
        return rng.choice([-1.0, 1.0], n) * scale * 2.0 ** rng.uniform(-spread, 0, n)

    g = signed_magnitudes()
    m = signed_magnitudes() * 0.3
    v = signed_magnitudes() ** 2
    st = state_from_float(rng.uniform(-1, 1, n), m, v, fmt)
    G, eg, _ = quantize_grad(g, fmt)
    return st, G, eg


# Documented in docs/numerics.md: the error of one update in units of alpha_t,
# |dp| / alpha_t <= bound * (1 + |r|) + 2 ulp(p), where r = m/(sqrt(v)+eps) is
# the ratio the datapath approximates, for blocks whose magnitudes span at most
# 2**spread (measured worst cases over random hyper-parameters: 0.004, 0.027, 0.077).
RATIO_ERROR_BOUND = {2: 0.01, 4: 0.05, 8: 0.2}


def within_bound(new: FixedState, p_exact, r, alpha, spread) -> bool:
    err = np.abs(params_from_fixed(new.P) - p_exact) / alpha
    return bool(np.all(err <= RATIO_ERROR_BOUND[spread] * (1 + np.abs(r)) + 2 * 2.0**-24 / alpha))


@pytest.mark.parametrize("spread", sorted(RATIO_ERROR_BOUND))
@pytest.mark.parametrize("step", [1, 10, 10**6])
def test_update_within_documented_bound_of_float64_adam(spread: int, step: int) -> None:
    rng = np.random.default_rng(spread * 1000 + step)
    st, G, eg = random_block_state(rng, 64 * B, spread)
    hyper = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "step": step}
    new, _ = adam_step(st, G, eg, encode_step(**hyper))
    p_exact, m_exact, s_exact, alpha, r = float_adam_step(st, G, eg, **hyper)
    assert within_bound(new, p_exact, r, alpha, spread)
    # The stored moments are exact to 2**-14 of their block's working scale
    # (the peak of the block's gradient, first and root second moments).
    _, m_new, v_new = state_to_float(new)
    inputs = [np.abs(state_to_float(st)[1]), np.sqrt(state_to_float(st)[2]), np.abs(m_exact), s_exact]
    peak = np.repeat(np.max([x.reshape(-1, B).max(1) for x in inputs], axis=0), B)
    assert np.all(np.abs(m_new - m_exact) <= peak * 2.0**-14)
    assert np.all(np.abs(np.sqrt(v_new) - s_exact) <= peak * 2.0**-14)


@settings(max_examples=60, deadline=None)
@given(
    lr=st.floats(1e-6, 1e-1),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.9, 0.9999),
    step=st.integers(1, 10**6),
    spread=st.sampled_from(sorted(RATIO_ERROR_BOUND)),
    seed=st.integers(0, 2**32 - 1),
)
def test_update_bound_holds_for_any_hyper_parameters(lr, beta1, beta2, step, spread, seed) -> None:
    rng = np.random.default_rng(seed)
    st_, G, eg = random_block_state(rng, 8 * B, spread)
    hyper = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": 1e-8, "step": step}
    new, _ = adam_step(st_, G, eg, encode_step(**hyper))
    p_exact, _, _, alpha, r = float_adam_step(st_, G, eg, **hyper)
    assert within_bound(new, p_exact, r, alpha, spread)


def test_zero_gradient_and_zero_state_stay_zero() -> None:
    st = FixedState.zeros(3 * B)
    new, sat = adam_step(
        st,
        np.zeros(3 * B, np.int16),
        np.full(3, EXP_ZERO, np.int8),
        encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1),
    )
    assert new.equals(st) and sat == 0


def test_first_step_moves_every_parameter_by_lr() -> None:
    """Adam's first step is lr * sign(g) (up to eps): a classic property."""
    rng = np.random.default_rng(3)
    g = rng.standard_normal(4 * B) * 10.0 ** rng.uniform(-3, 0, 4 * B)
    G, eg, _ = quantize_grad(g)
    new, _ = adam_step(FixedState.zeros(4 * B), G, eg, encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1))
    np.testing.assert_allclose(params_from_fixed(new.P), -1e-3 * np.sign(g), rtol=0.02)


def test_rne_rounds_ties_to_even_and_sr_is_unbiased() -> None:
    x = np.array([5, 6, 7, -5, -6, -7, 12, 13, 14], np.int64)  # /4: 1.25 1.5 1.75 ...
    np.testing.assert_array_equal(round_shift(x, 2, None), [1, 2, 2, -1, -2, -2, 3, 3, 4])
    np.testing.assert_array_equal(round_shift(np.array([2, 6, -2, -6]), 2, None), [0, 2, 0, -2])
    np.testing.assert_array_equal(round_shift(x, 0, None), x)
    np.testing.assert_array_equal(rshr(np.array([1, 2, 3, -1, -2, -3]), 1), [1, 1, 2, 0, -1, -1])
    u = element_random(12345, np.arange(200000, dtype=np.uint64))[0]
    for k in (3, 20, 40):
        xs = np.full(u.size, 5 * (1 << k) + (3 << (k - 2)), np.int64)  # 5.75
        mean = round_shift(xs, k, u).mean()
        assert abs(mean - 5.75) < 0.01


def test_isqrt_is_the_exact_floor() -> None:
    rng = np.random.default_rng(0)
    k = rng.integers(0, 2**26, 100000)
    x = np.concatenate([k * k, k * k - 1, k * k + 1, rng.integers(0, 2**52, 100000)]).clip(0)
    r = isqrt(x)
    assert np.all(r * r <= x) and np.all((r + 1) * (r + 1) > x)


def test_lfsr_is_marsaglia_xorshift32() -> None:
    # Marsaglia (2003): xorshift32 with (13, 17, 5) from state 2463534242.
    x = np.array([2463534242], np.uint64)
    assert int(xorshift32(x)[0]) == 723471715
    assert int(xorshift32(np.array([0], np.uint64))[0]) == 0
    u1 = element_random(step_seed(7, 3), np.arange(64, dtype=np.uint64))
    u2 = element_random(step_seed(7, 3), np.arange(64, dtype=np.uint64))
    assert all(np.array_equal(a, b) for a, b in zip(u1, u2, strict=True))
    assert not np.array_equal(u1[0], element_random(step_seed(7, 4), np.arange(64, dtype=np.uint64))[0])
    assert len(np.unique(u1[0])) == 64


def test_saturation_is_counted_and_clamped() -> None:
    case = next(c for c in golden.cases() if c.name == "saturation")
    step = case.steps[0]
    assert step.expect_sat == case.n
    P = step.expect_p.view(np.int32)
    assert np.all(np.abs(P[:B]) == DEFAULT.p_max)


def test_quantize_grad_handles_extremes() -> None:
    g = np.zeros(4 * B)
    g[:B] = 3.0e38  # beyond 2**127: saturates
    g[B : 2 * B] = 1e-40  # subnormal floats
    g[2 * B] = -1.0
    G, eg, sat = quantize_grad(g)
    assert sat == B and eg[0] == 127 and np.all(G[:B] == DEFAULT.g_max)
    assert eg[1] == -127 and np.all(G[B : 2 * B] >= 0)
    assert eg[2] == 1 and G[2 * B] == -(1 << 14) and eg[3] == EXP_ZERO
    np.testing.assert_array_equal(fast.quantize_grad_fast(g)[0], G)
    np.testing.assert_array_equal(fast.quantize_grad_fast(g)[1], eg)


def test_block_quantisation_round_trip_error() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal(10 * B) * 10.0 ** rng.uniform(-20, 20, 10 * B)
    mant, exp, _ = quantize_blocks(x, 15, B)
    back = dequantize_blocks(mant, exp, 15, B)
    peak = np.repeat(np.abs(x).reshape(-1, B).max(1), B)
    assert np.all(np.abs(back - x) <= peak * 2.0**-15)


def test_params_round_trip_and_saturate() -> None:
    x = np.array([0.0, 1.5, -2.25, 2.0**-24, 200.0, -200.0])
    P, sat = params_to_fixed(x)
    assert sat == 2
    np.testing.assert_array_equal(params_from_fixed(P)[:4], x[:4])


def test_packing_round_trips() -> None:
    rng = np.random.default_rng(1)
    M = rng.integers(-32767, 32768, 100).astype(np.int16)
    S = rng.integers(0, 65536, 100).astype(np.uint16)
    e = [rng.integers(-128, 128, 4).astype(np.int8) for _ in range(3)]
    M2, S2 = unpack_ms(pack_ms(M, S))
    assert np.array_equal(M, M2) and np.array_equal(S, S2)
    assert all(np.array_equal(a, b) for a, b in zip(e, unpack_ex(pack_ex(*e)), strict=True))
    assert int(pack_ex(*e)[0]) >> 24 == 0


def test_scalar_encodings_are_accurate() -> None:
    for alpha in (1e-12, 3e-7, 1e-3, 0.5, 37.0):
        mant, shift = encode_alpha(alpha)
        assert 1 <= shift <= 62
        assert abs(mant * 2.0**-shift * 2.0 ** (RATIO_FRAC - DEFAULT.p_frac) - alpha) <= alpha * 2.0**-23
    for eps in (1e-30, 1e-8, 0.1, 5.0):
        mant, exp = encode_eps(eps)
        assert 1 << 14 <= mant < 1 << 15
        assert abs(mant * 2.0 ** (exp - 15) - eps) <= eps * 2.0**-15
    with pytest.raises(ValueError, match="eps"):
        encode_eps(1e-40)
    with pytest.raises(ValueError, match="lr"):
        encode_alpha(1e9)
    assert ratio_bound(0.9, 0.999) == math.ceil(0.1 / math.sqrt(0.001 * (1 - 0.81 / 0.999)) * 2**20)
    assert ratio_bound(0.99, 0.5) == (1 << 27) - 1


def test_golden_vectors_round_trip_through_files(tmp_path) -> None:
    paths = golden.write_all(tmp_path)
    cases = golden.load(tmp_path)
    assert len(cases) == len(paths) >= 15
    names = {c.name for c in cases}
    assert {"zeros", "one_element", "extremes", "saturation", "step_one", "step_million", "sequence_rne"} <= names
    for case in cases:
        for a, b in zip(case.steps, case.steps[1:], strict=False):  # state carried between steps
            assert np.array_equal(a.expect_p, b.p) and np.array_equal(a.expect_ms, b.ms)
            assert np.array_equal(a.expect_ex >> 8, b.ex >> 8)


def _check_fast(case: golden.Case) -> None:
    from hetadam.numerics.scalars import StepScalars

    for s in case.steps:
        st = golden.state_of(s)
        sc = StepScalars(**{k: v for k, v in s.scalars.items() if k not in ("n", "idx0")})
        out = FixedState.zeros(case.n)
        sat = fast.adam_step_into(st, s.g.view(np.int16), unpack_ex(s.ex)[0], sc, case.idx0, out)
        assert np.array_equal(out.P.view(np.uint32), s.expect_p), case.name
        assert np.array_equal(pack_ms(out.M, out.S), s.expect_ms), case.name
        assert np.array_equal(pack_ex(unpack_ex(s.ex)[0], out.em, out.es), s.expect_ex), case.name
        assert sat == s.expect_sat, case.name


@pytest.mark.parametrize("case", list(golden.cases()), ids=lambda c: c.name)
def test_fast_path_is_bit_exact_on_golden_vectors(case: golden.Case) -> None:
    _check_fast(case)


@pytest.mark.parametrize(
    "fmt", [FixedFormat(block=16, m_bits=12, s_bits=10, p_frac=20), FixedFormat(block=64, g_bits=8)]
)
def test_fast_path_is_bit_exact_for_other_formats(fmt: FixedFormat) -> None:
    rng = np.random.default_rng(11)
    n = 40 * fmt.block + 7
    st = state_from_float(rng.uniform(-1, 1, n), np.zeros(n), np.zeros(n), fmt)
    for t in range(1, 6):
        G, eg, _ = quantize_grad(rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 0, n), fmt)
        sc = encode_step(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, step=t, stochastic=t % 2 == 0, seed=t, fmt=fmt)
        ref, sat = adam_step(st, G, eg, sc, fmt.block * 3, fmt)
        out = FixedState.zeros(n, fmt)
        assert fast.adam_step_into(st, G, eg, sc, fmt.block * 3, out, fmt) == sat
        assert out.equals(ref)
        st = ref


def test_model_rejects_misaligned_calls() -> None:
    st = FixedState.zeros(B)
    sc = encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1)
    with pytest.raises(ValueError, match="multiple of the block"):
        adam_step(st, np.zeros(B, np.int16), np.zeros(1, np.int8), sc, idx0=3)
    with pytest.raises(ValueError, match="shapes"):
        adam_step(st, np.zeros(B + 1, np.int16), np.zeros(1, np.int8), sc)
