"""Resource counts of the RTL kernel on the PYNQ-Z2's xc7z020 (yosys synth_xilinx).

For each lane count, yosys (`read_verilog -sv` of hw/rtl/sources.f, the top's
LANES parameter set, `synth_xilinx -family xc7 -flatten`) maps the design to
7-series cells; the cells are summed into LUT / FF / DSP48E1 / BRAM36 and set
against the part's capacity. Writes build/resources/resources.json and
build/resources/resources.md. Yosys's mapping is an estimate: Vivado's results
differ (it packs and optimises more), but the scaling with lanes is the point.

    python scripts/resource_report.py [--lanes 1 2 4] [--out build/resources]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RTL = ROOT / "hw" / "rtl"
TOP = "hetadam_adam"
PART = "xc7z020 (PYNQ-Z2)"
CAPACITY = {"LUT": 53200, "FF": 106400, "DSP": 220, "BRAM36": 140}

# LUTs a cell occupies (distributed RAM and shift registers live in SLICEM LUTs)
LUT_CELLS = {f"LUT{i}": 1 for i in range(1, 7)}
LUTRAM_CELLS = {
    "RAM32M": 4,
    "RAM64M": 4,
    "RAM32X1D": 2,
    "RAM64X1D": 2,
    "RAM128X1D": 4,
    "RAM256X1S": 4,
    "RAM32X1S": 1,
    "RAM64X1S": 1,
    "RAM128X1S": 2,
    "RAM32M16": 8,
    "RAM64M8": 8,
}
SRL_CELLS = {"SRL16E": 1, "SRLC32E": 1, "SRLC16E": 1}
FF_CELLS = ("FDRE", "FDSE", "FDCE", "FDPE", "FDRE_1", "FDSE_1", "FDCE_1", "FDPE_1")


def sources() -> list[Path]:
    return [RTL / name for name in (RTL / "sources.f").read_text().split() if not name.startswith("#")]


def why_not() -> str | None:
    if shutil.which("yosys") is None:
        return "yosys not found (Debian: apt-get install yosys; 0.23 is known to work)"
    return None


def synth(lanes: int, out: Path) -> dict[str, object]:
    stat_json = out / f"stat-{lanes}.json"
    log = out / f"yosys-{lanes}.log"
    files = " ".join(str(s) for s in sources())
    script = (
        f"read_verilog -sv {files}; chparam -set LANES {lanes} {TOP}; "
        f"synth_xilinx -family xc7 -flatten -top {TOP}; "
        f"tee -q -o {stat_json} stat -json"
    )
    t0 = time.monotonic()
    proc = subprocess.run(["yosys", "-q", "-l", str(log), "-p", script], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"yosys failed for LANES={lanes} (see {log}):\n{proc.stderr[-2000:]}")
    text = stat_json.read_text()
    data = json.loads(text[text.index("{") :])
    cells: dict[str, int] = {}
    for mod in data["modules"].values():
        for name, count in mod.get("num_cells_by_type", {}).items():
            cells[name] = cells.get(name, 0) + int(count)
    lut_logic = sum(n * LUT_CELLS.get(c, 0) for c, n in cells.items())
    lut_ram = sum(n * LUTRAM_CELLS.get(c, 0) for c, n in cells.items())
    lut_srl = sum(n * SRL_CELLS.get(c, 0) for c, n in cells.items())
    ff = sum(cells.get(c, 0) for c in FF_CELLS)
    dsp = cells.get("DSP48E1", 0)
    bram36 = cells.get("RAMB36E1", 0) + 0.5 * cells.get("RAMB18E1", 0)
    used = {"LUT": lut_logic + lut_ram + lut_srl, "FF": ff, "DSP": dsp, "BRAM36": bram36}
    return {
        "lanes": lanes,
        "used": used,
        "percent": {k: round(100.0 * v / CAPACITY[k], 2) for k, v in used.items()},
        "lut_breakdown": {"logic": lut_logic, "distributed_ram": lut_ram, "shift_register": lut_srl},
        "inverters": cells.get("INV", 0),
        "carry4": cells.get("CARRY4", 0),
        "cells": dict(sorted(cells.items())),
        "synth_seconds": round(time.monotonic() - t0, 1),
    }


def markdown(results: list[dict[str, object]], yosys_version: str) -> str:
    lines = [
        f"# RTL resources on {PART}",
        "",
        f"yosys `synth_xilinx -family xc7 -flatten` ({yosys_version}); top `{TOP}`, all four AXI masters and the",
        "AXI4-Lite control included. LUT counts logic, distributed RAM and shift-register LUTs; BRAM in RAMB36",
        "equivalents (a RAMB18 is a half). yosys also leaves INV cells (listed apart, not counted: Vivado folds",
        "them into the LUTs that feed the carry chains).",
        "",
        "| lanes | LUT | FF | DSP48E1 | BRAM36 | INV |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        u, p = r["used"], r["percent"]
        lines.append(
            f"| {r['lanes']} | {u['LUT']} ({p['LUT']}%) | {u['FF']} ({p['FF']}%) | "
            f"{u['DSP']} ({p['DSP']}%) | {u['BRAM36']} ({p['BRAM36']}%) | {r['cells'].get('INV', 0)} |"
        )
    lines.append(f"| capacity | {CAPACITY['LUT']} | {CAPACITY['FF']} | {CAPACITY['DSP']} | {CAPACITY['BRAM36']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "resources")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--render", action="store_true", help="only rewrite resources.md from resources.json")
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads((args.out / "resources.json").read_text())
        md = markdown(report["results"], report["tool"])
        (args.out / "resources.md").write_text(md)
        sys.stdout.write(md)
        return 0
    reason = why_not()
    if reason:
        print(f"SKIP resources: {reason}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    version = subprocess.run(["yosys", "-V"], capture_output=True, text=True).stdout.strip()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda n: synth(n, args.out), args.lanes))
    report = {"part": PART, "capacity": CAPACITY, "tool": version, "top": TOP, "results": results}
    (args.out / "resources.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(results, version)
    (args.out / "resources.md").write_text(md)
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
