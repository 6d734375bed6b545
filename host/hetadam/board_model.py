"""The modelled board throughput of the FPGA kernel: one place for the model of docs/rtl.md, "Board bandwidth".

A model, not a measurement. The kernel moves, per element, the bytes of the
register map's memory layout (regmap.ELEMENT_BITS: read p, g, ms and a block's
ex word; write p, ms, ex). Its rate is f x min(LANES, each high-performance
port's bound, the DDR's bound), where a port moves its data width per clock in
each direction (read and write channels are separate) and carries the AXI
masters build.tcl gives it (the bundles split over hp_ports in order), and the
DDR's bound is its peak rate times an efficiency eta that interleaved
read/write streams from several ports reach (ETA, an assumption to measure on
a board). The board's part, clock, PS and ports come from
hw/boards/<board>/board.tcl, which the Vivado flow reads too; the DDR and the
parts' capacities are datasheet figures, here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import regmap

BOARDS_DIR = Path(__file__).resolve().parents[2] / "hw" / "boards"
ETA = (0.70, 0.85)
"""The DDR efficiency range assumed for mixed read/write streams from several ports."""
HP_PORT_BITS = {"ps7": 64, "psu": 128}
"""Data width of a PS high-performance port as the block designs configure it (hw/boards/ps.tcl)."""
FAMILY = {"ps7": "xc7", "psu": "xcup"}
"""yosys synth_xilinx -family of each PS's fabric (Zynq-7000: 7 series; Zynq UltraScale+)."""
DDR = {
    "pynq-z2": ("16-bit DDR3-1050", 2.1e9),
    "zcu104": ("64-bit DDR4-2133", 17.0e9),
    "kv260": ("64-bit DDR4-2400", 19.2e9),
}
"""Each board's DDR and its peak rate in bytes/s (the boards' datasheets)."""
CAPACITY = {
    "xc7z020": {"LUT": 53200, "FF": 106400, "DSP": 220, "BRAM36": 140},
    "xczu7ev": {"LUT": 230400, "FF": 460800, "DSP": 1728, "BRAM36": 312},
    "xck26": {"LUT": 117120, "FF": 234240, "DSP": 1248, "BRAM36": 144},
}
"""Fabric resources of each part (AMD's product tables; BRAM in 36 Kb blocks, UltraRAM not counted)."""


@dataclass(frozen=True)
class Board:
    name: str
    part: str
    clock_mhz: float
    ps_kind: str
    hp_ports: tuple[int, ...]
    ddr: str
    ddr_peak: float
    """bytes/s"""

    @property
    def device(self) -> str:
        """The part without package and speed grade: the key of CAPACITY (xc7z020clg400-1 -> xc7z020)."""
        return next(d for d in CAPACITY if self.part.startswith(d))

    @property
    def family(self) -> str:
        return FAMILY[self.ps_kind]

    @property
    def capacity(self) -> dict[str, int]:
        return CAPACITY[self.device]


def load_board(name: str, boards_dir: Path = BOARDS_DIR) -> Board:
    """The board `name` as hw/boards/<name>/board.tcl describes it. ValueError for an unknown board."""
    path = boards_dir / name / "board.tcl"
    if not path.is_file() or name not in DDR:
        known = sorted(p.parent.name for p in boards_dir.glob("*/board.tcl"))
        raise ValueError(f"board {name!r}: no {path} or no DDR figures here; boards: {', '.join(known)}")
    settings = dict(re.findall(r"^set (\w+) +(.+?)\s*$", path.read_text(), re.M))
    ports = tuple(int(p) for p in settings["hp_ports"].strip("{}").split())
    ddr, peak = DDR[name]
    return Board(name, settings["part"], float(settings["clock_mhz"]), settings["ps_kind"], ports, ddr, peak)


def bytes_per_element(block: int) -> dict[str, tuple[float, float]]:
    """(read, written) bytes per element of each array in the kernel's memory layout (ex: a word a block)."""
    size = {name: bits / 8 for name, bits in regmap.ELEMENT_BITS.items()}
    size["ex"] /= block
    written = {"p", "ms", "ex"}  # g is only read
    return {name: (size[name], size[name] if name in written else 0.0) for name in regmap.POINTERS}


def _port_groups(names: list[str], ports: int) -> list[list[str]]:
    """The arrays cut into `ports` runs in order, as build.tcl's hetadam_split cuts the bundles."""
    return [names[k * len(names) // ports : (k + 1) * len(names) // ports] for k in range(ports)]


@dataclass(frozen=True)
class Throughput:
    """Modelled elements per second of one build on one board, and what bounds it."""

    low: float
    """with the DDR at the low end of ETA"""
    high: float
    """with the DDR at the high end of ETA"""
    kernel: float
    """f x LANES: the kernel alone"""
    ports: float
    """f x the tightest high-performance port's elements a clock"""
    ddr: tuple[float, float]
    """the DDR's bound over ETA"""
    bytes_per_element: float

    @property
    def bound(self) -> str:
        """What sets the rate: kernel, ports or DDR (at the high end of ETA)."""
        limits = {"kernel": self.kernel, "ports": self.ports, "DDR": self.ddr[1]}
        return min(limits, key=limits.__getitem__)


def throughput(board: Board, lanes: int, block: int, clock_mhz: float | None = None) -> Throughput:
    """The modelled rate of a LANES-lane kernel with blocks of `block` on `board` (at its clock, or `clock_mhz`)."""
    f = 1e6 * (clock_mhz or board.clock_mhz)
    per = bytes_per_element(block)
    total = sum(r + w for r, w in per.values())
    port_bytes = HP_PORT_BITS[board.ps_kind] / 8
    per_clock = []
    for group in _port_groups(list(regmap.POINTERS), len(board.hp_ports)):
        read = sum(per[a][0] for a in group)
        written = sum(per[a][1] for a in group)
        per_clock.append(port_bytes / max(read, written))
    ports = f * min(per_clock)
    kernel = f * lanes
    ddr = (board.ddr_peak * ETA[0] / total, board.ddr_peak * ETA[1] / total)
    return Throughput(min(kernel, ports, ddr[0]), min(kernel, ports, ddr[1]), kernel, ports, ddr, total)
