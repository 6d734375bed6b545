"""What the driver assumes of either kernel IP, against the kernel's double (driver/fake.py):
the interrupt status register (ISR) acknowledged whether the IP clears it on a write
(toggle-on-write: the RTL, and the HLS IP as hw/hls/run_hls.tcl pins it) or on a read
(clear-on-read: what some Vitis HLS releases generate), and array bases aligned to the
widest bus of the RTL kernel."""

from __future__ import annotations

import numpy as np
import pytest

from hetadam import regmap
from hetadam.driver import AdamDriver, DriverError
from hetadam.driver.fake import FakeTransport
from hetadam.driver.state import ResidentState
from hetadam.numerics import DEFAULT, adam_step, encode_step
from hetadam.numerics.golden import random_grad, random_state

ISR_MODES = ["tow", "cor"]


@pytest.mark.parametrize("mode", ISR_MODES)
def test_interrupt_runs_are_acknowledged_in_either_isr_mode(mode: str) -> None:
    t = FakeTransport(isr_mode=mode)
    driver = AdamDriver(t, interrupt=True, timeout=1.0)
    state = ResidentState(driver, 100, DEFAULT, chunk=64)
    rng = np.random.default_rng(5)
    ref = random_state(rng, 100)
    state.upload(ref)
    for step in range(1, 4):
        G, eg = random_grad(rng, 100)
        sc = encode_step(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, step=step, seed=3)
        assert state.run(G, eg, sc, 0) == adam_step(ref, G, eg, sc, 0, DEFAULT)[1]
        state.commit()
        ref = adam_step(ref, G, eg, sc, 0, DEFAULT)[0]
        assert state.download().equals(ref)
        assert t.regs.get(regmap.ISR, 0) == 0 and not t.irq, "the run's ap_done left pending"
    assert t.runs == 3 * 2


@pytest.mark.parametrize("mode", ISR_MODES)
def test_a_stale_status_from_an_earlier_process_is_cleared_not_raised_again(mode: str) -> None:
    """A clear-on-read ISR is cleared by the read that finds the stale bit; writing that bit
    back (what a toggle-on-write ISR needs) must then not happen, or it could set it again."""
    t = FakeTransport(isr_mode=mode)
    t.regs[regmap.ISR] = regmap.ISR_DONE
    AdamDriver(t, interrupt=True)
    assert t.regs.get(regmap.ISR, 0) == 0
    assert not t.irq, "the interrupt line is raised before any run"


def test_the_isr_mode_the_flows_pin_is_the_drivers_default_double() -> None:
    assert regmap.ISR_MODE == "tow"
    assert FakeTransport().isr_mode == regmap.ISR_MODE
    with pytest.raises(ValueError, match=r"'tow' .* or 'cor'"):
        FakeTransport(isr_mode="clear")


@pytest.mark.parametrize("array", regmap.POINTERS)
def test_an_array_base_off_the_bus_alignment_is_refused_before_the_kernel_starts(array: str) -> None:
    t = FakeTransport()
    driver = AdamDriver(t)
    addresses = {name: t.allocate(64, np.uint32).address for name in regmap.POINTERS}
    addresses[array] += regmap.BASE_ALIGN // 2
    sc = encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1, seed=0)
    with pytest.raises(DriverError, match=rf"the {array} buffer .* is not 64-byte aligned"):
        driver.run(32, 0, sc, addresses)
    assert t.runs == 0 and not t.args_seen
