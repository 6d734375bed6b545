"""scripts/resource_report.py without running yosys: the report's arithmetic and its skip path."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("resource_report", ROOT / "scripts" / "resource_report.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_markdown_against_capacity() -> None:
    rr = _module()
    result = {
        "part": "xc7z020",
        "format": "b32-g16-m8-s8",
        "lanes": 2,
        "used": {"LUT": 5320, "FF": 10640, "DSP": 22, "BRAM36": 14.0},
        "percent": {"LUT": 10.0, "FF": 10.0, "DSP": 10.0, "BRAM36": 10.0},
        "cells": {"INV": 7},
    }
    md = rr.markdown([result], "Yosys test")
    assert "| xc7z020 | b32-g16-m8-s8 | 2 | 5320 (10.0%) | 10640 (10.0%) | 22 (10.0%) | 14.0 (10.0%) | 7 |" in md
    assert "| xc7z020 capacity | | | 53200 | 106400 | 220 | 140 | |" in md


def test_design_totals_are_read_from_yosys_0_23s_broken_stat_json() -> None:
    """yosys 0.23 prints the hierarchy as text inside `stat -json -top`; the totals are the "design" object."""
    rr = _module()
    text = (
        '{ "modules": { "adam_lane": { "num_cells_by_type": { "LUT6": 5 } } },\n'
        "     adam_lane      4\n"
        '  "design": { "num_cells": 21, "num_cells_by_type": { "LUT6": 20, "DSP48E2": 1 } }\n}\n'
    )
    assert rr._design_stats(text) == {"LUT6": 20, "DSP48E2": 1}


def test_skip_reason_without_yosys(monkeypatch) -> None:
    rr = _module()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "yosys not found" in (rr.why_not() or "")
    assert rr.main(["--out", str(ROOT / "build" / "resources-skip-test")]) == 0
