"""pytest launchers of the cocotb benches in tb_adam.py (RTL under Verilator).

Each Verilator model is built once per lane count (sim/rtl_build.py caches it
by a hash of the sources and parameters, under a file lock), then the benches
run on it. Figures go to build/rtl/figures-<lanes>.json.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
from rtl_build import BUILD, ROOT, build, build_icarus, icarus_missing, missing_tools, run

pytestmark = pytest.mark.slow

WHY = missing_tools()
needs_verilator = pytest.mark.skipif(WHY is not None, reason=WHY or "")
WHY_ICARUS = icarus_missing()
needs_icarus = pytest.mark.skipif(WHY_ICARUS is not None, reason=WHY_ICARUS or "")

# Icarus is slower: the golden cases without the long sequences
ICARUS_CASES = "zeros,one_element,partial_block,extremes,saturation,tiny_grads,huge_grads,stochastic,adamw_decay"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Golden vectors generated from the model in this session (not committed)."""
    from hetadam.numerics import golden

    out = BUILD / "golden"
    out.mkdir(parents=True, exist_ok=True)
    with open(BUILD / "golden.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if not (out / ".done").exists():
            golden.write_all(out)
            (out / ".done").write_text("ok\n")
    return out


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
@pytest.mark.parametrize("lanes", [2])
def test_icarus(lanes: int, golden_dir: Path) -> None:
    """The same benches on Icarus Verilog (a second simulator): golden edge cases and ap_ctrl_hs."""
    model = build_icarus({"LANES": lanes})
    env = {"RTL_LANES": str(lanes), "RTL_GOLDEN": str(golden_dir), "RTL_GOLDEN_CASES": ICARUS_CASES}
    run(model, ["golden_vectors", "control_protocol"], env)


def test_sources_listed() -> None:
    """hw/rtl/sources.f lists every synthesisable source exactly once."""
    listed = (ROOT / "hw" / "rtl" / "sources.f").read_text().split()
    on_disk = sorted(p.name for p in (ROOT / "hw" / "rtl").glob("*.sv"))
    assert sorted(listed) == on_disk
    assert len(set(listed)) == len(listed)
