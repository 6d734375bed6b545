"""The driver against the pure-Python double of the kernel (driver/fake.py):
chunking, 64-bit addresses, interrupts, stalls and failures, cache syncs.
The driver as a backend (the golden vectors, the model, the shard contract)
runs in test_backend_matrix.py as `driver-fake`."""

from __future__ import annotations

import numpy as np
import pytest

from hetadam import regmap
from hetadam.backends.base import BackendError
from hetadam.driver import AdamDriver, DriverError
from hetadam.driver.fake import FakeTransport
from hetadam.driver.kernel import DriverKernel
from hetadam.numerics import DEFAULT, FixedFormat, StepScalars, adam_step, encode_step
from hetadam.numerics.golden import random_grad, random_state


def scalars(step: int, stochastic: bool = False) -> StepScalars:
    return encode_step(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, step=step, seed=7, stochastic=stochastic)


def kernel(n: int, chunk: int = 1 << 20, **fake) -> tuple[DriverKernel, FakeTransport]:
    t = FakeTransport(**fake)
    return DriverKernel(AdamDriver(t, timeout=1.0), n, DEFAULT, backend="fake", chunk=chunk), t


@pytest.mark.parametrize(
    ("n", "chunk", "start"),
    [(0, 64, 0), (1, 32, 0), (31, 32, 64), (100, 64, 0), (300, 96, 32 * 7), (257, 1 << 20, 0)],
)
def test_runs_are_split_into_chunks_at_their_element_index(n: int, chunk: int, start: int) -> None:
    """Each step is one kernel run per chunk of at most `chunk` elements, each with its own idx0
    (the stochastic rounding's element index), and the pieces make up the model's step."""
    rng = np.random.default_rng(n + chunk)
    k, t = kernel(n, chunk)
    ref = random_state(rng, n)
    k.upload(ref)
    for step in range(1, 4):
        G, eg = random_grad(rng, n)
        sc = scalars(step, stochastic=True)
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
    assert [a["idx0"] for a in t.args_seen] == [start + i * chunk for i in range(pieces)] * 3
    assert [a["n"] for a in t.args_seen] == [min(chunk, n - i * chunk) for i in range(pieces)] * 3


def test_addresses_above_4gib_use_both_words() -> None:
    k, t = kernel(64, base=0x12_3456_0000)
    k.run(*random_grad(np.random.default_rng(0), 64), scalars(1), 0)
    args = t.args_seen[0]
    assert args["p"] >> 32 == 0x12 and args["g"] >> 32 == 0x12
    assert len({args[p] for p in regmap.POINTERS}) == 4


def test_interrupt_mode_waits_on_the_line_and_clears_isr() -> None:
    t = FakeTransport(latency=50)
    driver = AdamDriver(t, interrupt=True, timeout=1.0)
    k = DriverKernel(driver, 96, DEFAULT, backend="fake", chunk=64)
    rng = np.random.default_rng(3)
    ref = random_state(rng, 96)
    k.upload(ref)
    G, eg = random_grad(rng, 96)
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
    ref = random_state(np.random.default_rng(1), 40)
    k.upload(ref)
    with pytest.raises(BackendError, match=r"backend 'fake'.*(did not finish|no interrupt)"):
        k.run(*random_grad(np.random.default_rng(2), 40), scalars(1), 0)
    k.commit()  # nothing pending: a failed run cannot be committed
    assert k.download().equals(ref)
    with pytest.raises(BackendError, match="not idle"):
        k.run(*random_grad(np.random.default_rng(2), 40), scalars(1), 0)


def test_failure_in_a_later_chunk_leaves_committed_state() -> None:
    k, _ = kernel(200, chunk=64, fail_on_run=3)
    rng = np.random.default_rng(5)
    ref = random_state(rng, 200)
    k.upload(ref)
    with pytest.raises(BackendError, match="link lost"):
        k.run(*random_grad(rng, 200), scalars(1), 0)
    k.commit()
    assert k.download().equals(ref)


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
    with pytest.raises(ValueError, match="no kernel implements the format b48"):
        DriverKernel(AdamDriver(t), 96, FixedFormat(block=48), backend="fake", chunk=96)
