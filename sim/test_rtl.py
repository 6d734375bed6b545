"""pytest launchers of the cocotb benches in tb_adam.py (RTL under Verilator).

Each Verilator model is built once per lane count (sim/rtl_build.py caches it
by a hash of the sources and parameters, under a file lock), then the benches
run on it. Figures go to build/rtl/figures-<lanes>.json.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from rtl_build import BUILD, ROOT, build, icarus_missing, missing_tools, run, sources

from hetadam.numerics import golden

pytestmark = pytest.mark.slow

WHY = missing_tools()
needs_verilator = pytest.mark.skipif(WHY is not None, reason=WHY or "")
WHY_ICARUS = icarus_missing()
needs_icarus = pytest.mark.skipif(WHY_ICARUS is not None, reason=WHY_ICARUS or "")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The golden vectors, written once per spec; the same cache as tests/conftest.py's."""
    return golden.cached(ROOT / "build" / "golden")


def _run(lanes: int, tests: list[str], golden: Path | None = None) -> None:
    model = build({"LANES": lanes})
    env = {"RTL_LANES": str(lanes), "RTL_FIGURES": str(BUILD / f"figures-{lanes}.json")}
    if golden is not None:
        env["RTL_GOLDEN"] = str(golden)
    run(model, tests, env)


@needs_verilator
@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_golden_vectors(lanes: int, golden_dir: Path) -> None:
    _run(lanes, ["golden_vectors"], golden_dir)


@needs_verilator
@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_random_sequences(lanes: int) -> None:
    _run(lanes, ["random_sequences"])


@needs_verilator
@pytest.mark.parametrize("lanes", [1, 4])
def test_backpressure_lengths(lanes: int) -> None:
    _run(lanes, ["backpressure_lengths"])


@needs_verilator
@pytest.mark.parametrize("lanes", [2])
def test_reset_and_control(lanes: int) -> None:
    _run(lanes, ["reset_mid_run", "control_protocol"])


@needs_verilator
@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_performance(lanes: int) -> None:
    _run(lanes, ["performance"])


@needs_icarus
@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_icarus_control(lanes: int, tmp_path: Path) -> None:
    """Icarus Verilog as a second simulator: the RTL compiles and elaborates, and a plain-SV
    bench (sim/tb_icarus_ctrl.sv) checks the ap_ctrl_hs protocol. The cocotb benches do not
    run on Icarus 11 here: it simulates this design at under 1k cycles/s, and under cocotb 2.1
    its vvp process grew past 10 GB within a microsecond of simulated time (measured)."""
    vvp = tmp_path / "tb.vvp"
    srcs = [str(s) for s in sources()] + [str(ROOT / "sim" / "tb_icarus_ctrl.sv")]
    cmd = ["iverilog", "-g2012", f"-Ptb_icarus_ctrl.LANES={lanes}", "-s", "tb_icarus_ctrl", "-o", str(vvp), *srcs]
    comp = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert comp.returncode == 0, comp.stderr
    sim = subprocess.run(["vvp", "-n", str(vvp)], capture_output=True, text=True, timeout=300)
    assert sim.returncode == 0 and "PASS" in sim.stdout and "FAIL" not in sim.stdout, sim.stdout + sim.stderr


def test_sources_listed() -> None:
    """hw/rtl/sources.f lists every synthesisable source exactly once."""
    listed = (ROOT / "hw" / "rtl" / "sources.f").read_text().split()
    on_disk = sorted(p.name for p in (ROOT / "hw" / "rtl").glob("*.sv"))
    assert sorted(listed) == on_disk
    assert len(set(listed)) == len(listed)
