"""The driver against the pure-Python double of the kernel (driver/fake.py)."""

from __future__ import annotations

import numpy as np
import pytest

from hetadam import regmap
from hetadam.backends.base import BackendError
from hetadam.driver import AdamDriver, DriverError
from hetadam.driver.fake import FakeTransport
from hetadam.driver.kernel import DriverKernel
from hetadam.numerics import DEFAULT, FixedFormat, FixedState, adam_step, encode_step
from hetadam.numerics.convert import quantize_grad, state_from_float
from hetadam.numerics.formats import n_blocks

B = DEFAULT.block


def random_state(n: int, rng: np.random.Generator) -> FixedState:
    p = rng.normal(0, 1, n).astype(np.float32)
    m = rng.normal(0, 1e-2, n)
    v = rng.uniform(0, 1e-4, n)
    return state_from_float(p, m, v, DEFAULT)


def grads(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    g = rng.normal(0, 1e-2, n) * rng.choice([1e-3, 1.0, 10.0], n_blocks(n, B)).repeat(B)[:n]
    G, eg, _ = quantize_grad(g, DEFAULT)
    return G, eg


def scalars(step: int, stochastic: bool = False, lr: float = 1e-2):
    return encode_step(lr=lr, beta1=0.9, beta2=0.999, eps=1e-8, step=step, seed=7, stochastic=stochastic)


def kernel(n: int, chunk: int = 1 << 20, **fake) -> tuple[DriverKernel, FakeTransport]:
    t = FakeTransport(**fake)
    return DriverKernel(AdamDriver(t, timeout=1.0), n, DEFAULT, backend="fake", chunk=chunk), t


@pytest.mark.parametrize(
    ("n", "chunk", "start"),
    [(0, 64, 0), (1, 32, 0), (31, 32, 64), (100, 64, 0), (300, 96, 32 * 7), (257, 1 << 20, 0)],
)
@pytest.mark.parametrize("stochastic", [False, True])
def test_multi_step_bit_exact_with_golden_model(n: int, chunk: int, start: int, stochastic: bool) -> None:
    rng = np.random.default_rng(n + chunk)
    k, t = kernel(n, chunk)
    ref = random_state(n, rng)
    k.upload(ref)
    for step in range(1, 4):
        G, eg = grads(n, rng)
        sc = scalars(step, stochastic)
        sat = k.run(G, eg, sc, start)
        expect, expect_sat = adam_step(ref, G, eg, sc, start, DEFAULT)
        assert sat == expect_sat
        assert k.download().equals(ref), "run must not touch the committed state"
        k.commit()
        assert k.download().equals(expect)
        assert np.array_equal(k.params(), expect.P)
        ref = expect
    pieces = -(-n // chunk)
    assert t.runs == 3 * pieces
    assert sorted({a["idx0"] for a in t.args_seen}) == [start + i * chunk for i in range(pieces)]
    assert all(a["n"] <= chunk for a in t.args_seen)


def test_addresses_above_4gib_use_both_words() -> None:
    k, t = kernel(64, base=0x12_3456_0000)
    k.run(*grads(64, np.random.default_rng(0)), scalars(1), 0)
    args = t.args_seen[0]
    assert args["p"] >> 32 == 0x12 and args["g"] >> 32 == 0x12
    assert len({args[p] for p in regmap.POINTERS}) == 4


def test_sat_count_reported() -> None:
    n = 64
    k, _ = kernel(n)
    st = FixedState.zeros(n, DEFAULT)
    st.P[:] = DEFAULT.p_max
    k.upload(st)
    G = np.full(n, -DEFAULT.g_max, np.int16)  # negative gradient: p moves up into the clamp
    eg = np.full(n_blocks(n, B), 0, np.int8)
    sc = scalars(1, lr=1.0)
    sat = k.run(G, eg, sc, 0)
    _, expect = adam_step(st, G, eg, sc, 0, DEFAULT)
    assert sat == expect == n


def test_interrupt_mode_waits_on_the_line_and_clears_isr() -> None:
    t = FakeTransport(latency=50)
    driver = AdamDriver(t, interrupt=True, timeout=1.0)
    k = DriverKernel(driver, 96, DEFAULT, backend="fake", chunk=64)
    rng = np.random.default_rng(3)
    ref = random_state(96, rng)
    k.upload(ref)
    G, eg = grads(96, rng)
    sc = scalars(1)
    k.run(G, eg, sc, 0)
    k.commit()
    assert k.download().equals(adam_step(ref, G, eg, sc, 0, DEFAULT)[0])
    assert t.regs[regmap.GIE] == 1 and t.regs[regmap.IER] == regmap.ISR_DONE
    assert t.regs.get(regmap.ISR, 0) == 0, "ISR must be cleared after each run"
    assert not t.irq


def test_interrupt_mode_needs_an_interrupt_line() -> None:
    t = FakeTransport()
    t.interrupts = False
    with pytest.raises(DriverError, match="no interrupt line"):
        AdamDriver(t, interrupt=True)


@pytest.mark.parametrize("interrupt", [False, True])
def test_stalled_kernel_times_out_and_keeps_state(interrupt: bool) -> None:
    t = FakeTransport(stall=True)
    k = DriverKernel(AdamDriver(t, interrupt=interrupt, timeout=0.05), 40, DEFAULT, backend="fake")
    ref = random_state(40, np.random.default_rng(1))
    k.upload(ref)
    with pytest.raises(BackendError, match=r"backend 'fake'.*(did not finish|no interrupt)"):
        k.run(*grads(40, np.random.default_rng(2)), scalars(1), 0)
    k.commit()  # nothing pending: a failed run cannot be committed
    assert k.download().equals(ref)
    with pytest.raises(BackendError, match="not idle"):
        k.run(*grads(40, np.random.default_rng(2)), scalars(1), 0)


def test_failure_in_a_later_chunk_leaves_committed_state() -> None:
    k, _ = kernel(200, chunk=64, fail_on_run=3)
    rng = np.random.default_rng(5)
    ref = random_state(200, rng)
    k.upload(ref)
    with pytest.raises(BackendError, match="link lost"):
        k.run(*grads(200, rng), scalars(1), 0)
    k.commit()
    assert k.download().equals(ref)


def test_discard_and_stage() -> None:
    rng = np.random.default_rng(9)
    k, _ = kernel(70, chunk=32)
    ref = random_state(70, rng)
    k.upload(ref)
    k.run(*grads(70, rng), scalars(1), 0)
    k.discard()
    k.commit()
    assert k.download().equals(ref)
    other = random_state(70, rng)
    k.stage(other)
    assert k.download().equals(ref)
    k.commit()
    assert k.download().equals(other)


def test_forgotten_sync_is_visible_to_the_fake() -> None:
    t = FakeTransport()
    buf = t.allocate(4, np.int32)
    buf.array[:] = [1, 2, 3, 4]
    assert bytes(t.memory[buf.address][:16]) == bytes(16)
    t.sync_to_device(buf)
    buf.array[:] = 0
    t.sync_from_device(buf)
    assert buf.array.tolist() == [1, 2, 3, 4]


def test_bad_chunk_and_format_rejected() -> None:
    t = FakeTransport()
    with pytest.raises(ValueError, match="multiple of the block"):
        DriverKernel(AdamDriver(t), 100, DEFAULT, backend="fake", chunk=48)
    with pytest.raises(ValueError, match="implements the format"):
        DriverKernel(AdamDriver(t), 100, FixedFormat(block=64), backend="fake")
