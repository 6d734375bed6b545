"""The simulated kernel when things go wrong: a run left by a Ctrl-C, a kernel
that never finishes, a transfer outside the address space, an RTL that breaks
an AXI rule or runs $fatal (the host process survives both)."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from backend_table import BY_NAME, skip_reason

from hetadam import regmap
from hetadam.backends.base import BackendError
from hetadam.backends.rtl_sim import RtlSimBackend
from hetadam.driver import Buffer, DriverError
from hetadam.driver.state import ResidentState
from hetadam.hdl import verilator
from hetadam.numerics import DEFAULT, adam_step, encode_step, golden

WHY = skip_reason(BY_NAME["rtl-sim"])
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY is not None, reason=WHY or "")]
SC = encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1)


@pytest.mark.parametrize("interrupt", [False, True], ids=["polling", "interrupt"])
def test_a_run_left_by_a_ctrl_c_ends_before_the_next_one_which_is_bit_exact(interrupt: bool) -> None:
    """Ctrl-C between the start of a run and its end: the kernel is left half-way
    through the pending buffers. The next step's copies must wait for it, and the
    next wait must not take the left run's ap_done (or its interrupt) for its own."""
    backend = RtlSimBackend(interrupt=interrupt, timeout=60.0)
    try:
        driver = backend.open_driver()
        transport = driver.transport
        n = 5000
        state = ResidentState(driver, n, DEFAULT)
        rng = np.random.default_rng(3)
        ref = golden.random_state(rng, n)
        state.upload(ref)
        wait = driver.wait

        def ctrl_c() -> None:
            raise KeyboardInterrupt

        driver.wait = ctrl_c
        G1, eg1 = golden.random_grad(rng, n)
        with pytest.raises(KeyboardInterrupt):
            state.run(G1, eg1, SC, 0)
        state.discard()
        assert transport.cycles < n, "the left run is still half-way through its elements"
        driver.wait = wait
        G2, eg2 = golden.random_grad(rng, n)
        state.run(G2, eg2, SC, 0)
        state.commit()
        assert state.download().equals(adam_step(ref, G2, eg2, SC, 0, DEFAULT)[0])
    finally:
        backend.close()


def test_a_transfer_while_a_run_is_in_flight_leaves_its_ap_done_to_the_host() -> None:
    """A host may copy its next buffer while the kernel runs (as a board's
    double-buffering does): the copy finishes the run first, and ap_done, which
    clears on read, must still reach the host's wait."""
    backend = RtlSimBackend(timeout=5.0)
    try:
        driver = backend.open_driver()
        transport = driver.transport
        n = 2000
        state = ResidentState(driver, n, DEFAULT)
        ref = golden.random_state(np.random.default_rng(4), n)
        state.upload(ref)
        G, eg = golden.random_grad(np.random.default_rng(5), n)
        state.g.array[:] = G
        run = state.pieces[0].sets[state.cur]
        new = state.pieces[0].sets[1 - state.cur]
        new.p.array[:], new.ms.array[:] = run.p.array, run.ms.array
        new.ex.array[:] = (run.ex.array & 0x00FF_FF00) | eg.astype(np.int8).view(np.uint8)
        for buf in (*new.buffers, state.g):
            transport.sync_to_device(buf)
        driver.write_args(
            n, 0, SC, {"p": new.p.address, "g": state.g.address, "ms": new.ms.address, "ex": new.ex.address}
        )
        driver.start()
        transport.sync_to_device(transport.allocate(8, np.uint32))  # during the run
        driver.wait()
        for buf in new.buffers:
            transport.sync_from_device(buf)
        state.has_pending = True
        state.commit()
        assert state.download().equals(adam_step(ref, G, eg, SC, 0, DEFAULT)[0])
    finally:
        backend.close()


def test_a_kernel_that_never_finishes_times_out_and_changes_nothing() -> None:
    backend = RtlSimBackend(timeout=1.0)
    try:
        shard = backend.create_shard(0, 64, "fixed", DEFAULT)
        ref = shard.kernel.download()
        shard.kernel.driver.transport.set_backpressure(memory=1.0, control=0.0)  # the memory never answers
        G, eg = golden.random_grad(np.random.default_rng(0), 64)
        t0 = time.monotonic()
        with pytest.raises(BackendError, match=r"backend 'rtl-sim'.*did not finish within 1 s"):
            shard.kernel.run(G, eg, SC, 0)
        assert time.monotonic() - t0 < 10
        shard.discard()
        assert shard.kernel.download().equals(ref)
        with pytest.raises(BackendError, match=r"rtl-sim.*still running a run started earlier"):
            shard.kernel.run(G, eg, SC, 0)  # its copies wait for the stuck run, in vain
    finally:
        backend.close()


def test_a_transfer_outside_the_address_space_is_refused_and_the_kernel_keeps_serving() -> None:
    backend = RtlSimBackend()
    try:
        transport = backend.open_driver().transport
        with pytest.raises(DriverError, match=r"outside the 2\^48-byte address space"):
            transport.sync_from_device(Buffer(np.zeros(4, np.uint32), (1 << 48) - 8))
        buf = transport.allocate(1000, np.int32)
        buf.array[:] = np.arange(1000) * 7
        transport.sync_to_device(buf)
        back = Buffer(np.zeros(1000, np.int32), buf.address)
        transport.sync_from_device(back)
        np.testing.assert_array_equal(back.array, buf.array)
        assert transport.read32(regmap.CTRL) & regmap.CTRL_AP_IDLE
    finally:
        backend.close()


# ---- RTL with planted faults ---------------------------------------------------------------------

FATAL_WORD = 0xFA7A1
"""A register write of this value makes the planted RTL run $fatal."""


def plant(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the RTL changed: {old!r} is not there once; update the planted fault"
    return text.replace(old, new)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> RtlSimBackend:
    """The RTL with two faults: the write masters raise WLAST on the second beat of
    every burst too, and a control write of FATAL_WORD runs $fatal."""
    root = tmp_path_factory.mktemp("planted")
    shutil.copytree(verilator.source_root() / "hw" / "rtl", root / "hw" / "rtl")
    (root / verilator.HARNESS).parent.mkdir(parents=True)
    shutil.copy(verilator.source_root() / verilator.HARNESS, root / verilator.HARNESS)
    writer = root / "hw" / "rtl" / "adam_axi_wr.sv"
    writer.write_text(
        plant(writer.read_text(), "assign m_axi_wlast = w_end;", "assign m_axi_wlast = w_end || w_beat == 33'd1;")
    )
    top = root / "hw" / "rtl" / "hetadam_adam.sv"
    fatal = (
        "  always_ff @(posedge ap_clk) if (s_axi_control_WVALID && s_axi_control_WDATA == 32'h"
        f'{FATAL_WORD:X}) $fatal(0, "planted fatal");\n\nendmodule'
    )
    top.write_text(plant(top.read_text(), "\nendmodule", "\n" + fatal))
    backend = RtlSimBackend(root=root, timeout=30.0)
    yield backend
    backend.close()


def test_a_kernel_that_breaks_an_axi_rule_fails_the_run_with_the_rule_named(planted: RtlSimBackend) -> None:
    shard = planted.create_shard(0, 300, "fixed", DEFAULT)
    G, eg = golden.random_grad(np.random.default_rng(0), 300)
    with pytest.raises(BackendError, match=r"rtl-sim.*gmem_(p|ms) W: WLAST set before the last beat of a 64-beat"):
        shard.kernel.run(G, eg, SC, 0)
    with pytest.raises(BackendError, match="WLAST set before"):  # the device stays failed, and says why
        shard.kernel.run(G, eg, SC, 0)


def test_a_fatal_in_the_model_fails_the_call_and_the_host_lives_on(
    planted: RtlSimBackend, capfd: pytest.CaptureFixture[str]
) -> None:
    transport = planted.open_driver().transport
    stop = r"the model stopped \(\$stop or \$fatal at .*hetadam_adam\.sv:\d+"
    with pytest.raises(DriverError, match=stop):
        transport.write32(regmap.offset("mode"), FATAL_WORD)
    assert "planted fatal" in capfd.readouterr().out
    with pytest.raises(DriverError, match=stop):
        transport.read32(regmap.CTRL)
    other = planted.open_driver().transport  # the library and other kernels are unharmed
    assert other.read32(regmap.CTRL) & regmap.CTRL_AP_IDLE
