"""Resource counts of the RTL kernel (yosys synth_xilinx) on the boards' parts.

For each lane count (and format), yosys reads hw/rtl/sources.f (`read_verilog
-sv`), sets the top's parameters (LANES and the format's widths, `chparam`),
maps the design to the part's family (`synth_xilinx -family xc7` for the
Zynq-7000 parts, `-family xcup` for Zynq UltraScale+) and sums the cells into
LUT / FF / DSP / BRAM36, set against the part's capacity
(hetadam.board_model.CAPACITY). Writes <out>/resources.json and resources.md.

The design is mapped with its hierarchy kept, so each module (one adam_lane
for all lanes) is mapped once: about 30 s a configuration here, against 17 to
29 minutes with -flatten (--flatten), whose counts differ by a few per cent
(docs/dse.md). Yosys's mapping is an estimate: Vivado packs and optimises
more, but the scaling with lanes and formats is the point.

    python scripts/resource_report.py [--lanes 1 2 4] [--part xc7z020 xczu7ev] [--format b32-g16-m8-s8]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hetadam.board_model import CAPACITY
from hetadam.numerics import DEFAULT, FixedFormat
from hetadam.numerics.formats import hardware_problem, kernel_generics

ROOT = Path(__file__).resolve().parents[1]
RTL = ROOT / "hw" / "rtl"
TOP = "hetadam_adam"
FAMILY = {"xc7z020": "xc7", "xczu7ev": "xcup", "xck26": "xcup"}
"""synth_xilinx -family of each part."""

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
DSP_CELLS = ("DSP48E1", "DSP48E2")
BRAM36_CELLS = ("RAMB36E1", "RAMB36E2")
BRAM18_CELLS = ("RAMB18E1", "RAMB18E2")


def sources() -> list[Path]:
    return [RTL / name for name in (RTL / "sources.f").read_text().split() if not name.startswith("#")]


def why_not() -> str | None:
    if shutil.which("yosys") is None:
        return "yosys not found (Debian: apt-get install yosys; 0.23 is known to work)"
    return None


def yosys_version() -> str:
    return subprocess.run(["yosys", "-V"], capture_output=True, text=True).stdout.strip()


def config_key(part: str, lanes: int, fmt: FixedFormat, flatten: bool, version: str) -> str:
    """A hash of everything a synthesis result depends on: the sources, the parameters, the flow, yosys."""
    h = hashlib.sha256(f"{FAMILY[part]} {lanes} {fmt.hardware_name} {flatten} {version}".encode())
    for path in sources():
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _design_stats(text: str) -> dict[str, int]:
    """Cell counts of the whole design from `stat -json -top`: yosys 0.23 writes the hierarchy as plain text
    inside the JSON, so the "design" object (the totals with every instance counted) is cut out first."""
    start = text.index('"design":')
    brace = text.index("{", start)
    depth = 0
    for end in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            break
    design = json.loads(text[brace : end + 1])
    return {name: int(n) for name, n in design["num_cells_by_type"].items()}


def synth(
    lanes: int, out: Path, part: str = "xc7z020", fmt: FixedFormat = DEFAULT, flatten: bool = False
) -> dict[str, object]:
    """Synthesise one configuration; its log and stat in `out`. RuntimeError when yosys fails."""
    problem = hardware_problem(fmt)
    if problem is not None:
        raise ValueError(f"format {fmt.name}: {problem}")
    tag = f"{part}-{fmt.hardware_name}-l{lanes}{'-flat' if flatten else ''}"
    stat_json = out / f"stat-{tag}.json"
    log = out / f"yosys-{tag}.log"
    files = " ".join(str(s) for s in sources())
    params = {"LANES": lanes, **kernel_generics(fmt)}
    chparam = " ".join(f"-set {name} {value}" for name, value in params.items())
    script = (
        f"read_verilog -sv {files}; chparam {chparam} {TOP}; "
        f"synth_xilinx -family {FAMILY[part]}{' -flatten' if flatten else ''} -top {TOP}; "
        f"tee -q -o {stat_json} stat -json -top {TOP}"
    )
    t0 = time.monotonic()
    proc = subprocess.run(["yosys", "-q", "-l", str(log), "-p", script], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"yosys failed for {tag} (see {log}):\n{proc.stderr[-2000:]}")
    cells = _design_stats(stat_json.read_text())
    lut_logic = sum(n * LUT_CELLS.get(c, 0) for c, n in cells.items())
    lut_ram = sum(n * LUTRAM_CELLS.get(c, 0) for c, n in cells.items())
    lut_srl = sum(n * SRL_CELLS.get(c, 0) for c, n in cells.items())
    ff = sum(cells.get(c, 0) for c in FF_CELLS)
    dsp = sum(cells.get(c, 0) for c in DSP_CELLS)
    bram36 = sum(cells.get(c, 0) for c in BRAM36_CELLS) + 0.5 * sum(cells.get(c, 0) for c in BRAM18_CELLS)
    used = {"LUT": lut_logic + lut_ram + lut_srl, "FF": ff, "DSP": dsp, "BRAM36": bram36}
    capacity = CAPACITY[part]
    return {
        "part": part,
        "family": FAMILY[part],
        "lanes": lanes,
        "format": fmt.hardware_name,
        "flatten": flatten,
        "used": used,
        "percent": {k: round(100.0 * v / capacity[k], 2) for k, v in used.items()},
        "lut_breakdown": {"logic": lut_logic, "distributed_ram": lut_ram, "shift_register": lut_srl},
        "inverters": cells.get("INV", 0),
        "cells": dict(sorted(cells.items())),
        "synth_seconds": round(time.monotonic() - t0, 1),
    }


def markdown(results: list[dict[str, object]], yosys_version: str) -> str:
    lines = [
        "# RTL resources",
        "",
        f"yosys `synth_xilinx` ({yosys_version}); top `{TOP}`, all four AXI masters and the AXI4-Lite control",
        "included. LUT counts logic, distributed RAM and shift-register LUTs; BRAM in RAMB36 equivalents (a RAMB18",
        "is a half). yosys also leaves INV cells (listed apart, not counted: Vivado folds them into the LUTs that",
        "feed the carry chains).",
        "",
        "| part | format | lanes | LUT | FF | DSP | BRAM36 | INV |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        u, p = r["used"], r["percent"]
        lines.append(
            f"| {r.get('part', 'xc7z020')} | {r.get('format', DEFAULT.hardware_name)} | {r['lanes']} | "
            f"{u['LUT']} ({p['LUT']}%) | {u['FF']} ({p['FF']}%) | {u['DSP']} ({p['DSP']}%) | "
            f"{u['BRAM36']} ({p['BRAM36']}%) | {r['cells'].get('INV', 0)} |"
        )
    for part in dict.fromkeys(r.get("part", "xc7z020") for r in results):
        c = CAPACITY[part]
        lines.append(f"| {part} capacity | | | {c['LUT']} | {c['FF']} | {c['DSP']} | {c['BRAM36']} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--part", nargs="+", choices=sorted(FAMILY), default=["xc7z020"])
    parser.add_argument("--format", type=FixedFormat.parse, default=DEFAULT, help=f"default {DEFAULT.hardware_name}")
    parser.add_argument("--flatten", action="store_true", help="synth_xilinx -flatten (minutes to tens of minutes)")
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
    version = yosys_version()
    configs = [(lanes, part) for part in args.part for lanes in args.lanes]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda c: synth(c[0], args.out, c[1], args.format, args.flatten), configs))
    report = {"tool": version, "top": TOP, "capacity": {p: CAPACITY[p] for p in args.part}, "results": results}
    (args.out / "resources.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(results, version)
    (args.out / "resources.md").write_text(md)
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
