"""The co-design sweep (scripts/dse.py) and the board model it uses (hetadam.board_model): the model
reproduces docs/rtl.md's figures, the Pareto marking and the recommendation follow their definitions, and
`--quick` runs every stage for real into a folder whose table states facts that hold."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from hetadam.board_model import load_board, throughput
from hetadam.charlm import CORPUS_PATH

ROOT = Path(__file__).resolve().parents[1]


def _dse():
    spec = importlib.util.spec_from_file_location("dse", ROOT / "scripts" / "dse.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["dse"] = module
    spec.loader.exec_module(module)
    return module


# ---- the board model ------------------------------------------------------------------------------


def test_the_model_gives_the_board_bandwidth_figures_of_the_rtl_docs() -> None:
    """docs/rtl.md, "Board bandwidth": 18.25 bytes an element; PYNQ-Z2 on HP0 alone 79 M/s, on HP0 and
    HP2 the DDR's 81-98 M/s; ZCU104 one lane 200 M/s, the DDR >= 650 M/s; KV260 >= 730 M/s."""
    pynq = load_board("pynq-z2")
    assert (pynq.part, pynq.clock_mhz, pynq.hp_ports, pynq.family) == ("xc7z020clg400-1", 100.0, (0, 2), "xc7")
    t = throughput(pynq, 1, 32)
    assert t.bytes_per_element == 18.25
    assert (round(t.low / 1e6), round(t.high / 1e6), t.bound) == (81, 98, "DDR")
    assert round(throughput(replace(pynq, hp_ports=(0,)), 1, 32).high / 1e6) == 79
    zcu = throughput(load_board("zcu104"), 1, 32)
    assert (zcu.high, zcu.bound) == (200e6, "kernel") and zcu.ddr[0] >= 650e6
    assert throughput(load_board("kv260"), 1, 32).ddr[0] >= 730e6


def test_more_lanes_meet_the_ports_then_the_ddr() -> None:
    zcu = load_board("zcu104")
    rates = [throughput(zcu, lanes, 32).high for lanes in (1, 2, 4, 8, 16)]
    assert rates == sorted(rates) and rates[1] < 2 * rates[0], "one 128-bit port bounds two lanes"
    assert throughput(zcu, 2, 32).bound == "ports"
    split = throughput(replace(zcu, hp_ports=(0, 2)), 16, 32)
    assert split.high > rates[-1] and split.high <= split.ddr[1]
    assert throughput(zcu, 1, 256).bytes_per_element == 18 + 8 / 256, "ex: a word read and written a block"


def test_an_unknown_board_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="boards: kv260, pynq-z2, zcu104"):
        load_board("zedboard")


# ---- Pareto points and the recommendation -----------------------------------------------------------


def _row(board: str, fmt: str, excess: float, share: float, rate: float, *, fits: bool = True) -> dict:
    return {"board": board, "format": fmt, "lanes": 1, "lm_excess": excess, "share": {"LUT": share},
            "throughput": rate, "fits": fits, "holds": excess <= 0.01}  # fmt: skip


def test_a_point_is_pareto_unless_another_is_as_good_in_all_and_better_in_one() -> None:
    dse = _dse()
    rows = [
        _row("b", "b32-g16-m16-s16", 0.000, 0.2, 100),
        _row("b", "b32-g16-m8-s8", 0.000, 0.3, 100),  # as accurate, as fast, larger: dominated
        _row("b", "b32-g16-m4-s4", 0.023, 0.1, 100),  # smaller, less accurate: a trade
        _row("b", "b32-g16-m6-s6", 0.001, 0.4, 200),  # faster: a trade
        _row("other", "b32-g16-m8-s8", 0.000, 0.3, 100),  # another board is not compared
    ]
    dse.mark_pareto(rows)
    assert [r["pareto"] for r in rows] == [True, False, True, True, True]


def test_the_recommendation_is_the_fastest_point_that_fits_and_holds_then_the_smallest() -> None:
    dse = _dse()
    rows = [
        _row("b", "b32-g16-m16-s16", 0.000, 0.5, 300),
        _row("b", "b32-g16-m8-s8", 0.000, 0.4, 299),  # as fast within 1%, smaller: chosen
        _row("b", "b32-g16-m4-s4", 0.023, 0.1, 400),  # faster, but below parity
        _row("b", "b32-g16-m12-s12", 0.000, 0.9, 500, fits=False),
    ]
    assert dse.recommend(rows, "b")["format"] == "b32-g16-m8-s8"
    assert dse.recommend([rows[2], rows[3]], "b") is None


# ---- `make dse QUICK=1` -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not found: apt-get install yosys")
@pytest.mark.skipif(not CORPUS_PATH.exists(), reason=f"no {CORPUS_PATH}: apt-get install dict-devil")
def test_the_quick_sweep_writes_a_table_whose_facts_hold_and_a_rerun_comes_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dse = _dse()
    out, cache = tmp_path / "dse", tmp_path / "cache"
    assert dse.main(["--quick", "--out", str(out), "--cache", str(cache)]) == 0
    report = json.loads((out / "dse.json").read_text())
    sweep = dse.QUICK
    rows = report["points"]
    assert len(rows) == len(sweep.boards) * len(sweep.variants) * len(sweep.lanes)
    for r in rows:
        board = load_board(r["board"])
        assert r["part"] == board.part
        for key, used in r["used"].items():
            assert used > 0 or key == "BRAM36"
            assert r["share"][key] == pytest.approx(used / board.capacity[key])
        assert r["fits"] == all(v <= dse.FIT_LIMIT for v in r["share"].values())
        assert r["dsp_headroom"] == board.capacity["DSP"] - r["used"]["DSP"]
        assert r["throughput"] <= r["lanes"] * board.clock_mhz * 1e6
        assert r["throughput_low"] <= r["throughput"] <= r["throughput_split"] * 1.000001
        assert r["bytes_per_param"] == 18 + 8 / 32
        assert r["holds"] == (r["digits_parity"] and r["lm_parity"])
    assert any(r["pareto"] for r in rows)
    for name, choice in report["recommendations"].items():
        if choice is not None:
            chosen = [r for r in rows if r["board"] == name and r["format"] == choice["format"]]
            assert chosen and all(r["fits"] and r["holds"] for r in chosen)
    md = (out / "dse.md").read_text()
    for name in sweep.boards:
        assert f"## {name} (" in md and f"**{name}: " in md
    assert (out / "dse.png").stat().st_size > 10_000

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("a re-run of the same sweep must not synthesise or train again")

    monkeypatch.setattr(dse.resource_report, "synth", no_work)
    monkeypatch.setattr(dse.study, "lm_run", no_work)
    monkeypatch.setattr(dse.study, "train_run", no_work)
    start = time.monotonic()
    assert dse.main(["--quick", "--out", str(tmp_path / "again"), "--cache", str(cache)]) == 0
    assert time.monotonic() - start < 30
    assert json.loads((tmp_path / "again" / "dse.json").read_text())["points"] == rows
