"""The `rtl-sim` backend: the RTL under Verilator in a compiled harness, driven
through the same driver as a board: interrupt mode, every lane count and random
back-pressure bit-exact, training bit-identical to the cpu backend, a kernel
freed mid-step, a build that fails, close(). The kernel against the golden
vectors and the model, and the shard contract, run in test_backend_matrix.py;
faults and Ctrl-C in test_rtl_sim_robustness.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from backend_table import BY_NAME, skip_reason

from hetadam import HetAdam, regmap
from hetadam.backends.base import BackendError
from hetadam.backends.rtl_sim import RtlSimBackend
from hetadam.driver import DriverError
from hetadam.driver.sim import data_bits
from hetadam.driver.state import ResidentState
from hetadam.hdl import verilator
from hetadam.numerics import DEFAULT, adam_step, encode_step, golden

WHY = skip_reason(BY_NAME["rtl-sim"])
pytestmark = [pytest.mark.slow, pytest.mark.skipif(WHY is not None, reason=WHY or "")]


def test_interrupt_mode_is_bit_exact_and_leaves_the_status_register_clear() -> None:
    backend = RtlSimBackend(interrupt=True, timeout=60.0)
    try:
        driver = backend.open_driver()
        state = ResidentState(driver, 70, DEFAULT)
        rng = np.random.default_rng(2)
        ref = golden.random_state(rng, 70)
        state.upload(ref)
        for step in (4, 5):
            G, eg = golden.random_grad(rng, 70)
            sc = encode_step(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-6, step=step)
            state.run(G, eg, sc, 0)
            state.commit()
            ref = adam_step(ref, G, eg, sc, 0, DEFAULT)[0]
            assert state.download().equals(ref), f"step {step}"
            assert driver.transport.read32(regmap.ISR) & regmap.ISR_DONE == 0, "the driver clears ISR"
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("lanes", "backpressure"), [(1, 0.5), (4, 0.25)], ids=["1 lane, half the clocks paused", "4 lanes, a quarter"]
)
def test_every_lane_count_under_random_backpressure_computes_the_models_bits(lanes: int, backpressure: float) -> None:
    """Random pauses on every ready and valid of the four AXI4 slaves and of the
    control port; sizes that straddle a chunk and a 4 KiB page; stochastic rounding."""
    backend = RtlSimBackend(lanes=lanes, backpressure=backpressure, seed=lanes, chunk=96, timeout=60.0)
    try:
        assert data_bits(backend.library()) == {a: regmap.axi_data_bits(a, lanes) for a in ("p", "g", "ms", "ex")}
        rng = np.random.default_rng(lanes)
        for n, idx0 in ((1, 0), (1029, 64)):
            shard = backend.create_shard(idx0, n, "fixed", DEFAULT)
            kernel, state = shard.kernel, golden.random_state(rng, n, DEFAULT, -40, 4)
            kernel.upload(state)
            for t in (1, 2):
                G, eg = golden.random_grad(rng, n, DEFAULT, -40, 4)
                sc = encode_step(lr=3e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=t, seed=5, stochastic=t == 2)
                state, sat = adam_step(state, G, eg, sc, idx0)
                assert kernel.run(G, eg, sc, idx0) == sat
                kernel.commit()
                assert kernel.download().equals(state), f"lanes={lanes} n={n} step {t}"
            shard.close()
    finally:
        backend.close()


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_training_is_bit_identical_to_cpu_then_a_kernel_lost_mid_step_changes_nothing() -> None:
    torch.manual_seed(1)
    data = [(torch.randn(16, 6), torch.randint(0, 3, (16,))) for _ in range(4)]
    ref_model, sim_model = make_model(), make_model()
    ref_opt = HetAdam(ref_model.parameters(), lr=1e-2, backend="cpu", numerics="fixed", weight_decay=1e-2)
    opt = HetAdam(sim_model.parameters(), lr=1e-2, backend="rtl-sim", numerics="fixed", weight_decay=1e-2)
    try:
        for x, y in data[:3]:
            train_step(ref_model, ref_opt, x, y)
            train_step(sim_model, opt, x, y)
        for a, b in zip(ref_model.parameters(), sim_model.parameters(), strict=True):
            assert torch.equal(a, b)
        before = [p.detach().clone() for p in sim_model.parameters()]
        state_before = opt.state_dict()["state"]

        (shard,) = opt._partitions[0].shards
        transport = shard.kernel.driver.transport
        write32 = transport.write32

        def write32_then_lost(offset: int, value: int) -> None:
            write32(offset, value)
            if offset == regmap.CTRL and value & regmap.CTRL_AP_START:
                transport.close()  # the device goes away while it runs

        transport.write32 = write32_then_lost
        with pytest.raises(BackendError, match=r"rtl-sim.*simulated device is closed"):
            train_step(sim_model, opt, *data[3])
        for a, b in zip(before, sim_model.parameters(), strict=True):
            assert torch.equal(a, b)
        state_after = opt.state_dict()["state"]
        for i, st in state_before.items():
            for name, arr in st["fixed"].items():
                assert torch.equal(arr, state_after[i]["fixed"][name]), name
        with pytest.raises(BackendError, match="rtl-sim"):
            train_step(sim_model, opt, *data[3])
    finally:
        opt.close()
        ref_opt.close()
    assert opt.backends == {}


def test_rtl_that_does_not_build_is_a_backend_error_with_the_log(tmp_path: Path) -> None:
    (tmp_path / "hw" / "rtl").mkdir(parents=True)
    (tmp_path / "sim" / "verilator").mkdir(parents=True)
    (tmp_path / "hw" / "rtl" / "hetadam_adam.sv").write_text("module hetadam_adam(; endmodule\n")
    (tmp_path / "hw" / "rtl" / "sources.f").write_text("hetadam_adam.sv\n")
    shutil.copy(verilator.source_root() / verilator.HARNESS, tmp_path / verilator.HARNESS)
    backend = RtlSimBackend(root=tmp_path)
    with pytest.raises(BackendError, match=r"(?s)rtl-sim.*could not build.*hetadam_adam\.sv:1.*Fix what the log says"):
        backend.create_shard(0, 32, "fixed", DEFAULT)
    assert backend.transports == []
    assert not list((tmp_path / "build" / "verilator").glob(f"*/{verilator.STAMP}")), "no build marked finished"


def test_close_frees_every_simulated_kernel_and_later_calls_say_so() -> None:
    backend = RtlSimBackend()
    shards = [backend.create_shard(0, 40, "fixed", DEFAULT) for _ in range(2)]
    transports = [s.kernel.driver.transport for s in shards]
    assert transports[0] is not transports[1], "every shard has a kernel of its own"
    shards[0].close()
    assert transports[0].closed and not transports[1].closed
    backend.close()
    assert transports[1].closed and backend.transports == []
    with pytest.raises(DriverError, match="closed; create a new optimizer/backend"):
        transports[1].read32(regmap.CTRL)
    backend.close()  # a second close is quiet
