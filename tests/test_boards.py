"""The vendor flows (hw/hls/run_hls.tcl, hw/boards/*.tcl, mk/hls.mk) without the
vendor tools: the Tcl runs under tclsh against recording stand-ins of the
Vitis HLS / Vivado commands, and must agree with the kernel and the register
map (top, bundles, ports, parts, clocks, addresses); the Make targets stop at
once, naming the missing tool."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hetadam import regmap

ROOT = Path(__file__).resolve().parents[1]
BOARDS = {
    # board: (part, PS kind, clock MHz, control base)
    "pynq-z2": ("xc7z020clg400-1", "ps7", 100, 0x43C00000),
    "zcu104": ("xczu7ev-ffvc1156-2-e", "psu", 200, 0xA0000000),
    "kv260": ("xck26-sfvc784-2LV-c", "psu", 200, 0xA0000000),
}
PS_PINS = {
    "ps7": {"clk": "ps/FCLK_CLK0", "resetn": "ps/FCLK_RESET0_N", "ctrl": "ps/M_AXI_GP0", "irq": "ps/IRQ_F2P",
            "ctrl_clk": "ps/M_AXI_GP0_ACLK", "act_mhz": "CONFIG.PCW_ACT_FPGA0_PERIPHERAL_FREQMHZ"},
    "psu": {"clk": "ps/pl_clk0", "resetn": "ps/pl_resetn0", "ctrl": "ps/M_AXI_HPM0_FPD", "irq": "ps/pl_ps_irq0",
            "ctrl_clk": "ps/maxihpm0_fpd_aclk", "act_mhz": "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__ACT_FREQMHZ"},
}  # fmt: skip
# The PS's high-performance ports the kernel's masters use, each with its clock and the bundles it carries:
# PYNQ-Z2 splits them over HP0 and HP2 (two DDR controller ports), as PYNQ's base overlay does.
DATA_PORTS = {
    "pynq-z2": [("ps/S_AXI_HP0", "ps/S_AXI_HP0_ACLK", ["gmem_p", "gmem_g"]),
                ("ps/S_AXI_HP2", "ps/S_AXI_HP2_ACLK", ["gmem_ms", "gmem_ex"])],
    "zcu104": [("ps/S_AXI_HP0_FPD", "ps/saxihp0_fpd_aclk", ["gmem_p", "gmem_g", "gmem_ms", "gmem_ex"])],
    "kv260": [("ps/S_AXI_HP0_FPD", "ps/saxihp0_fpd_aclk", ["gmem_p", "gmem_g", "gmem_ms", "gmem_ex"])],
}  # fmt: skip
TCLSH = shutil.which("tclsh")
needs_tclsh = pytest.mark.skipif(TCLSH is None, reason="tclsh not found (apt-get install tcl)")
SEP = "\x1f"

# Recording stand-ins of the Vitis HLS and Vivado Tcl commands the flows use. What the tools
# report is steered by the environment: MOCK_SETUP_SLACK / MOCK_HOLD_SLACK (ns) the worst
# paths' slack (empty: no constrained path), MOCK_ACT_MHZ the PL clock the PS gives (default:
# the one asked for), MOCK_UNKNOWN_OPTION a config_interface option this Vitis HLS lacks.
MOCKS = r"""
set ::calls {}
proc record {args} { lappend ::calls $args; return "" }
foreach cmd {
    open_project set_top add_files open_solution set_part create_clock config_export
    csim_design csynth_design cosim_design export_design
    create_project update_ip_catalog create_bd_design apply_bd_automation
    connect_bd_net connect_bd_intf_net assign_bd_address validate_bd_design save_bd_design
    generate_target update_compile_order launch_runs wait_on_run open_run
    report_utilization report_timing_summary close_project
} {
    proc $cmd {args} [format {record %s {*}$args} $cmd]
}
rename exit __exit
proc exit {args} { record exit }
proc get_board_parts {args} { return $::env(MOCK_BOARD_PARTS) }
proc get_ipdefs {args} {
    regexp {NAME == (\w+)} [lindex $args end] -> name
    return [list xilinx.com:ip:$name:1.9 xilinx.com:ip:$name:1.10]
}
proc create_bd_cell {args} { record create_bd_cell {*}$args; return [lindex $args end] }
proc get_bd_pins {name} { return $name }
proc get_bd_intf_pins {name} { return $name }
proc get_bd_addr_spaces {name} { return $name }
proc get_bd_addr_segs {args} {
    regexp {SEG_(\w+)_\*} [lindex $args end] -> cell
    return [list ps/Data/SEG_${cell}_Reg]
}
proc get_files {name} { return $name }
proc make_wrapper {args} { return /nowhere/hetadam_bd_wrapper.v }
proc current_project {} { return project }
proc current_fileset {} { return sources_1 }
proc get_runs {name} { return $name }
proc config_interface {args} {
    record config_interface {*}$args
    set unknown $::env(MOCK_UNKNOWN_OPTION)
    if {$unknown ne "" && [lsearch -glob $args "$unknown*"] >= 0} {
        error "ERROR: \[HLS 200-1485\] Unknown option '$unknown' for command 'config_interface'"
    }
}
proc set_property {args} {
    record set_property {*}$args
    if {[lindex $args 0] eq "-dict"} {
        foreach {key value} [lindex $args 1] { set ::props([lindex $args 2],$key) $value }
    }
    return ""
}
proc get_bd_cells {name} { return $name }
proc get_timing_paths {args} {
    set kind [expr {[lsearch $args min] >= 0 || [lsearch $args -hold] >= 0 ? "hold" : "setup"}]
    if {$::env(MOCK_[string toupper $kind]_SLACK) eq ""} { return "" }
    return ${kind}_path
}
proc get_property {name args} {
    set obj [lindex $args end]
    switch -glob -- $name {
        PROGRESS { return 100% }
        STATUS { return "write_bitstream Complete!" }
        DIRECTORY { return $::env(MOCK_RUN_DIR) }
        SLACK { return $::env(MOCK_[string toupper [lindex [split $obj _] 0]]_SLACK) }
        STARTPOINT_PIN { return "hetadam/inst/${obj}_from_reg/C" }
        ENDPOINT_PIN { return "hetadam/inst/${obj}_to_reg/D" }
        CONFIG.*_ACT_*FREQMHZ {
            if {$::env(MOCK_ACT_MHZ) ne ""} { return $::env(MOCK_ACT_MHZ) }
            set asked [string map {PCW_ACT_ PCW_ __ACT_FREQMHZ __FREQMHZ} $name]
            return [format %.6f $::props($obj,$asked)]
        }
    }
    error "get_property $name: not mocked"
}
namespace eval ipx {
    foreach cmd {
        package_project infer_bus_interfaces infer_bus_interface associate_bus_interfaces add_bus_parameter
        create_xgui_files update_checksums check_integrity save_core
    } {
        proc $cmd {args} [format {::record ipx::%s {*}$args} $cmd]
    }
    proc current_core {} { return core }
    proc get_bus_interfaces {name args} { return $name }
    proc get_bus_parameters {args} { return "" }
    proc get_memory_maps {args} { return "" }
    proc get_address_spaces {args} { return "" }
    proc add_memory_map {name args} { ::record ipx::add_memory_map $name; return map_$name }
    proc add_address_block {name args} { ::record ipx::add_address_block $name; return block_$name }
    proc add_address_space {name args} { ::record ipx::add_address_space $name; return space_$name }
}
set status [catch {source [lindex $argv 0]} err]
foreach call $::calls { puts "CALL\x1f[join $call \x1f]" }
if {$status} { puts "ERROR\x1f$err"; __exit 1 }
__exit 0
"""


@dataclass
class TclRun:
    calls: list[list[str]]
    """The recorded vendor commands, each as [name, *args]."""
    error: str
    """The error the script stopped with; empty when none."""
    output: str
    """What the script printed (warnings, the closing summary)."""


def run_tcl(tmp_path: Path, script: Path, env: dict[str, str]) -> tuple[list[list[str]], str]:
    """Source `script` under the mocks; returns the recorded calls and the error (empty when none)."""
    run = run_tcl_full(tmp_path, script, env)
    return run.calls, run.error


def run_tcl_full(tmp_path: Path, script: Path, env: dict[str, str]) -> TclRun:
    driver = tmp_path / "mock_driver.tcl"
    driver.write_text(MOCKS)
    mocked = {"MOCK_SETUP_SLACK": "0.250", "MOCK_HOLD_SLACK": "0.031", "MOCK_ACT_MHZ": "", "MOCK_UNKNOWN_OPTION": ""}
    outside = {k: v for k, v in os.environ.items() if not k.startswith("HETADAM_")}  # only what the test sets
    full_env = {**outside, "MOCK_BOARD_PARTS": "", "MOCK_RUN_DIR": str(tmp_path / "run"), **mocked, **env}
    done = subprocess.run([TCLSH, driver, script], capture_output=True, text=True, env=full_env, cwd=tmp_path)
    calls = [line.split(SEP)[1:] for line in done.stdout.splitlines() if line.startswith("CALL" + SEP)]
    errors = [line.split(SEP, 1)[1] for line in done.stdout.splitlines() if line.startswith("ERROR" + SEP)]
    assert (done.returncode != 0) == bool(errors), done.stdout + done.stderr
    printed = [line for line in done.stdout.splitlines() if not line.startswith(("CALL" + SEP, "ERROR" + SEP))]
    return TclRun(calls, "".join(errors), "\n".join(printed))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of hw/ (the flows find the repository root from their own path)."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "hw" / "hls", root / "hw" / "hls")
    shutil.copytree(ROOT / "hw" / "boards", root / "hw" / "boards")
    return root


def find(calls: list[list[str]], name: str) -> list[list[str]]:
    return [c[1:] for c in calls if c[0] == name]


def option(call: list[str], flag: str) -> str:
    return call[call.index(flag) + 1]


def board_settings(board: str) -> dict[str, str]:
    text = (ROOT / "hw" / "boards" / board / "board.tcl").read_text()
    return dict(re.findall(r"^set (\w+) (.+)$", text, re.M))


# -- the boards --------------------------------------------------------------------------


def test_every_board_has_its_settings() -> None:
    folders = sorted(p.name for p in (ROOT / "hw" / "boards").iterdir() if p.is_dir())
    assert folders == sorted(BOARDS)
    for board, (part, kind, mhz, base) in BOARDS.items():
        s = board_settings(board)
        assert s["board_name"] == board
        assert s["part"] == part
        assert s["ps_kind"] == kind
        assert int(s["clock_mhz"]) == mhz
        assert int(s["ctrl_base"], 16) == base
        assert s["board_part_pattern"]


def test_flow_interface_matches_the_register_map() -> None:
    build = (ROOT / "hw" / "boards" / "build.tcl").read_text()
    assert re.search(r"^set hetadam_top (\w+)$", build, re.M).group(1) == regmap.KERNEL_NAME
    assert re.search(r"^set hetadam_control (\w+)$", build, re.M).group(1) == f"s_axi_{regmap.CONTROL_BUNDLE}"
    bundles = re.search(r"^set hetadam_bundles \{(.*)\}$", build, re.M).group(1).split()
    assert bundles == [regmap.M_AXI_BUNDLES[p] for p in regmap.POINTERS]
    hls = (ROOT / "hw" / "hls" / "run_hls.tcl").read_text()
    assert re.search(r"^set_top (\w+)$", hls, re.M).group(1) == regmap.KERNEL_NAME


def test_rtl_top_has_the_ports_the_flow_packages() -> None:
    sources = ROOT / "hw" / "rtl" / "sources.f"
    if not sources.exists():
        pytest.skip(reason="hw/rtl/sources.f is not there yet")
    files = [line.split("//")[0].strip() for line in sources.read_text().splitlines()]
    paths = [ROOT / "hw" / "rtl" / f for f in files if f and f[0] not in "+-#"]
    assert all(p.exists() for p in paths), [p for p in paths if not p.exists()]
    tops = [p for p in paths if re.search(rf"^module {regmap.KERNEL_NAME}\b", p.read_text(), re.M)]
    assert len(tops) == 1
    ports = set(re.findall(r"^\s*(?:input|output)\b[^,;]*?(\w+)\s*,?\s*(?://.*)?$", tops[0].read_text(), re.M))
    assert {"ap_clk", "ap_rst_n", "interrupt"} <= ports
    for prefix in ["s_axi_control", *(f"m_axi_{b}" for b in regmap.M_AXI_BUNDLES.values())]:
        assert f"{prefix}_ARADDR" in ports and f"{prefix}_RDATA" in ports, prefix
    for bundle in ("gmem_p", "gmem_ms", "gmem_ex"):
        assert f"m_axi_{bundle}_AWADDR" in ports and f"m_axi_{bundle}_WDATA" in ports, bundle


# -- Vitis HLS: run_hls.tcl ----------------------------------------------------------------


@needs_tclsh
@pytest.mark.parametrize("board", sorted(BOARDS))
def test_hls_flow_runs_every_step_for_the_board(tree: Path, board: str) -> None:
    part, _, mhz, _ = BOARDS[board]
    golden = tree / "build" / "golden"
    golden.mkdir(parents=True)
    for name in ("a.vec", "b.vec"):
        (golden / name).write_text("")
    env = {"HETADAM_STEP": "all", "HETADAM_BOARD": board}
    calls, error = run_tcl(tree.parent, tree / "hw" / "hls" / "run_hls.tcl", env)
    assert not error
    assert [c[0] for c in calls] == [
        "open_project", "set_top", "add_files", "add_files", "open_solution", "set_part", "create_clock",
        "config_interface", "config_interface", "config_export", "csim_design", "csynth_design", "cosim_design",
        "export_design", "exit",
    ]  # fmt: skip
    assert find(calls, "set_top") == [[regmap.KERNEL_NAME]]
    assert find(calls, "set_part") == [[part]]
    assert float(option(find(calls, "create_clock")[0], "-period")) == pytest.approx(1000 / mhz)
    kernel, testbench = find(calls, "add_files")
    assert Path(kernel[0]).name == "hetadam_adam.cpp"
    assert testbench[0] == "-tb" and Path(testbench[1]).name == "hetadam_adam_tb.cpp"
    export = find(calls, "config_export")[0]
    vlnv = ":".join(
        [option(export, "-vendor"), option(export, "-library"), regmap.KERNEL_NAME, option(export, "-version")]
    )
    assert vlnv == "hetadam.org:hls:hetadam_adam:1.0", "the VLNV build.tcl instantiates"
    assert option(export, "-format") == "ip_catalog"
    argv = option(find(calls, "csim_design")[0], "-argv").split()
    assert [Path(a).name for a in argv] == ["a.vec", "b.vec"]
    assert option(find(calls, "cosim_design")[0], "-argv") == " ".join(argv)
    assert (tree / "build" / "hls" / part / "reports").is_dir()


@needs_tclsh
@pytest.mark.parametrize(
    ("step", "expected"),
    [("csim", ["csim_design"]), ("csynth", ["csynth_design"]), ("cosim", ["csynth_design", "cosim_design"]),
     ("export", ["csynth_design", "export_design"])],
)  # fmt: skip
def test_hls_flow_runs_one_step(tree: Path, step: str, expected: list[str]) -> None:
    golden = tree / "build" / "golden"
    golden.mkdir(parents=True)
    (golden / "a.vec").write_text("")
    calls, error = run_tcl(tree.parent, tree / "hw" / "hls" / "run_hls.tcl", {"HETADAM_STEP": step})
    assert not error
    steps = ("csim_design", "csynth_design", "cosim_design", "export_design")
    assert [c[0] for c in calls if c[0] in steps] == expected


@needs_tclsh
def test_hls_flow_pins_the_interface_settings_the_driver_depends_on(tree: Path) -> None:
    """64-bit m_axi addresses (the register map gives each pointer two words; UG1399 2023.1 documents
    32 bits as the Vivado IP flow's default) and the ISR mode the RTL kernel has."""
    calls, error = run_tcl(tree.parent, tree / "hw" / "hls" / "run_hls.tcl", {"HETADAM_STEP": "csynth"})
    assert not error
    assert find(calls, "config_interface") == [["-m_axi_addr64=true"], ["-s_axilite_interrupt_mode", regmap.ISR_MODE]]
    names = [c[0] for c in calls]
    assert names.index("set_part") < names.index("config_interface") < names.index("csynth_design")


@needs_tclsh
def test_hls_flow_on_a_release_without_the_isr_mode_option_warns_and_goes_on(tree: Path) -> None:
    env = {"HETADAM_STEP": "csynth", "MOCK_UNKNOWN_OPTION": "-s_axilite_interrupt_mode"}
    run = run_tcl_full(tree.parent, tree / "hw" / "hls" / "run_hls.tcl", env)
    assert not run.error
    assert [c[0] for c in run.calls].count("csynth_design") == 1
    warning = next(line for line in run.output.splitlines() if line.startswith("WARNING"))
    assert "-s_axilite_interrupt_mode" in warning and "Unknown option" in warning
    assert "toggle-on-write or clear-on-read" in warning and "the driver acknowledges either" in warning


@needs_tclsh
def test_hls_flow_errors(tree: Path) -> None:
    script = tree / "hw" / "hls" / "run_hls.tcl"
    _, error = run_tcl(tree.parent, script, {"HETADAM_STEP": "csim"})
    assert "no golden vectors" in error and "make csim" in error
    _, error = run_tcl(tree.parent, script, {"HETADAM_STEP": "place"})
    assert "choose one of" in error
    _, error = run_tcl(tree.parent, script, {"HETADAM_STEP": "csynth", "HETADAM_BOARD": "zedboard"})
    assert "no board 'zedboard'" in error
    calls, error = run_tcl(
        tree.parent, script, {"HETADAM_STEP": "csynth", "HETADAM_PART": "xc7z010clg400-1", "HETADAM_CLOCK_MHZ": "50"}
    )
    assert not error
    assert find(calls, "set_part") == [["xc7z010clg400-1"]]
    assert float(option(find(calls, "create_clock")[0], "-period")) == pytest.approx(20.0)


# -- Vivado: build.tcl ---------------------------------------------------------------------


def prepare_board_run(tree: Path, board: str, kernel: str, part: str | None = None) -> None:
    """What the tools would leave: the run's .bit and .hwh, and the HLS IP for `part` (default: the board's)."""
    part = part or BOARDS[board][0]
    run_dir = tree.parent / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "hetadam_bd_wrapper.bit").write_text("bit")
    hwh = tree / "build" / "boards" / board / kernel / "hetadam.gen" / "sources_1" / "bd" / "hetadam_bd" / "hw_handoff"
    hwh.mkdir(parents=True)
    (hwh / "hetadam_bd.hwh").write_text("hwh")
    if kernel == "hls":
        ip = tree / "build" / "hls" / part / "hetadam_prj" / "sol" / "impl" / "ip"
        ip.mkdir(parents=True)
        (ip / "component.xml").write_text("")
    else:
        rtl = tree / "hw" / "rtl"
        rtl.mkdir(parents=True)
        (rtl / "sources.f").write_text("// the RTL kernel\nadam_pkg.sv\n+incdir+inc\nhw/rtl/hetadam_adam.sv  # top\n")
        (rtl / "adam_pkg.sv").write_text("")
        (rtl / "hetadam_adam.sv").write_text("")


@needs_tclsh
@pytest.mark.parametrize("kernel", ["hls", "rtl"])
@pytest.mark.parametrize("board", sorted(BOARDS))
def test_board_flow_builds_the_block_design(tree: Path, board: str, kernel: str) -> None:
    part, kind, mhz, base = BOARDS[board]
    prepare_board_run(tree, board, kernel)
    env = {"HETADAM_BOARD": board, "HETADAM_KERNEL": kernel}
    calls, error = run_tcl(tree.parent, tree / "hw" / "boards" / "build.tcl", env)
    assert not error
    pins = PS_PINS[kind]
    bundles = [regmap.M_AXI_BUNDLES[p] for p in regmap.POINTERS]

    projects = find(calls, "create_project")
    assert option(projects[-1], "-part") == part
    cells = {c[-1]: option(c, "-vlnv") for c in find(calls, "create_bd_cell")}
    assert cells["hetadam"] == f"hetadam.org:{kernel}:{regmap.KERNEL_NAME}:1.0"
    ps_ip = "processing_system7" if kind == "ps7" else "zynq_ultra_ps_e"
    assert cells["ps"] == f"xilinx.com:ip:{ps_ip}:1.10", "the newest version in the catalog"
    intf = {tuple(c) for c in find(calls, "connect_bd_intf_net")}
    ports = DATA_PORTS[board]
    assert sorted(b for *_, group in ports for b in group) == sorted(bundles), "every master on one port"
    expected = {
        (pins["ctrl"], "ctrl_sc/S00_AXI"),
        ("ctrl_sc/M00_AXI", f"hetadam/s_axi_{regmap.CONTROL_BUNDLE}"),
        ("ctrl_sc/M01_AXI", "intc/s_axi"),
    }
    for k, (port, _, group) in enumerate(ports):
        expected.add((f"data_sc{k}/M00_AXI", port))
        expected |= {(f"hetadam/m_axi_{b}", f"data_sc{k}/S{i:02d}_AXI") for i, b in enumerate(group)}
    assert intf == expected
    nets = [set(c) for c in find(calls, "connect_bd_net")]
    clocked = {"hetadam/ap_clk", "intc/s_axi_aclk", "rst/slowest_sync_clk", "ctrl_sc/aclk"}
    port_clocks = {clk for _, clk, _ in ports} | {f"data_sc{k}/aclk" for k in range(len(ports))}
    assert {pins["clk"], pins["ctrl_clk"], *port_clocks, *clocked} in nets
    assert {pins["resetn"], "rst/ext_reset_in"} in nets
    reset = {"rst/peripheral_aresetn", "hetadam/ap_rst_n", "intc/s_axi_aresetn", "ctrl_sc/aresetn"}
    assert reset | {f"data_sc{k}/aresetn" for k in range(len(ports))} in nets
    assert {"hetadam/interrupt", "intc/intr"} in nets
    assert {"intc/irq", pins["irq"]} in nets
    props = find(calls, "set_property")
    assert ["-dict", "CONFIG.C_IRQ_CONNECTION 1", "intc"] in props, "a single irq output, as PYNQ wants"
    assert ["offset", f"0x{base:08X}", "ps/Data/SEG_hetadam_Reg"] in props
    assert ["range", "64K", "ps/Data/SEG_hetadam_Reg"] in props
    assert ["offset", f"0x{base + 0x10000:08X}", "ps/Data/SEG_intc_Reg"] in props
    assert ["range", "64K", "ps/Data/SEG_intc_Reg"] in props
    for k, (_, _, group) in enumerate(ports):
        assert ["-dict", f"CONFIG.NUM_SI {len(group)} CONFIG.NUM_MI 1", f"data_sc{k}"] in props
    ps_config = " ".join(p[1] for p in props if p[0] == "-dict" and p[2] == "ps")
    clock_key = "CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ" if kind == "ps7" else "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ"
    assert re.search(rf"{clock_key} {mhz}\b", ps_config)
    for port, _, _ in ports:
        if kind == "ps7":  # S_AXI_HP<n>, 64 bits
            hp = port[-1]
            assert f"CONFIG.PCW_USE_S_AXI_HP{hp} 1" in ps_config
            assert f"CONFIG.PCW_S_AXI_HP{hp}_DATA_WIDTH 64" in ps_config
        else:  # S_AXI_HP<n>_FPD is S_AXI_GP<n + 2>, 128 bits
            gp = int(port[-5]) + 2
            assert f"CONFIG.PSU__USE__S_AXI_GP{gp} 1" in ps_config
            assert f"CONFIG.PSU__SAXIGP{gp}__DATA_WIDTH 128" in ps_config
    enabled = re.findall(r"CONFIG.PCW_USE_S_AXI_HP(\d) 1|CONFIG.PSU__USE__S_AXI_GP([2-5]) 1", ps_config)
    assert len(enabled) == len(ports), "no high-performance port the design leaves unconnected"
    assert ["-to_step", "write_bitstream"] == find(calls, "launch_runs")[0][1:3]
    out = tree / "build" / "boards" / board
    assert (out / "hetadam.bit").read_text() == "bit"
    assert (out / "hetadam.hwh").read_text() == "hwh"
    report = json.loads((out / "reports" / f"build_{kernel}.json").read_text())
    assert report == {
        "board": board, "kernel": kernel, "format": "default", "part": part, "clock_mhz_requested": mhz,
        "clock_mhz_actual": mhz,
        "wns_ns": 0.25, "whs_ns": 0.031, "timing_met": True,
    }  # fmt: skip
    if kernel == "rtl":
        added = [c for c in find(calls, "add_files") if c[0] == "-norecurse" and "sv" in c[1]]
        assert [Path(f).name for f in added[0][1].split()] == ["adam_pkg.sv", "hetadam_adam.sv"]
        assoc = [option(c, "-busif") for c in find(calls, "ipx::associate_bus_interfaces") if "-busif" in c]
        assert assoc == [f"s_axi_{regmap.CONTROL_BUNDLE}", *(f"m_axi_{b}" for b in bundles)]
        assert find(calls, "ipx::add_address_space") == [[f"m_axi_{b}"] for b in bundles]


@needs_tclsh
def test_board_flow_uses_board_files_when_installed(tree: Path) -> None:
    prepare_board_run(tree, "kv260", "hls")
    env = {
        "HETADAM_BOARD": "kv260",
        "MOCK_BOARD_PARTS": "xilinx.com:kv260_carrier:part0:1.3",  # the mock answers every pattern with it
    }
    calls, error = run_tcl(tree.parent, tree / "hw" / "boards" / "build.tcl", env)
    assert not error
    props = find(calls, "set_property")
    assert ["board_part", "xilinx.com:kv260_carrier:part0:1.3", "project"] in props
    connection = "som240_1_connector xilinx.com:kv260_carrier:som240_1_connector:1.3"
    assert ["board_connections", connection, "project"] in props
    rules = [option(c, "-rule") for c in find(calls, "apply_bd_automation")]
    assert rules == ["xilinx.com:bd_rule:zynq_ultra_ps_e"], "the board preset"


BUILD_TCL = ("hw", "boards", "build.tcl")


@needs_tclsh
@pytest.mark.parametrize(
    ("slacks", "check", "slack", "path"),
    [({"MOCK_SETUP_SLACK": "-0.412"}, "setup", "-0.412", "setup_path"),
     ({"MOCK_HOLD_SLACK": "-0.007"}, "hold", "-0.007", "hold_path"),
     ({"MOCK_SETUP_SLACK": "-1.5", "MOCK_HOLD_SLACK": "-0.2"}, "setup", "-1.500", "setup_path")],
    ids=["setup", "hold", "both"],
)  # fmt: skip
def test_a_bitstream_that_misses_timing_is_not_shipped(
    tree: Path, slacks: dict[str, str], check: str, slack: str, path: str
) -> None:
    prepare_board_run(tree, "zcu104", "rtl")
    out = tree / "build" / "boards" / "zcu104"
    (out / "hetadam.bit").write_text("an earlier build's")
    env = {"HETADAM_BOARD": "zcu104", "HETADAM_KERNEL": "rtl", **slacks}
    _, error = run_tcl(tree.parent, tree.joinpath(*BUILD_TCL), env)
    assert f"timing not met at 200.000 MHz: worst {check} slack {slack} ns" in error
    assert f"from hetadam/inst/{path}_from_reg/C to hetadam/inst/{path}_to_reg/D" in error
    assert "timing_rtl.rpt" in error and "HETADAM_CLOCK_MHZ" in error, "where to look, what to do"
    assert not (out / "hetadam.bit").exists() and not (out / "hetadam.hwh").exists(), "nothing left to deploy"
    report = json.loads((out / "reports" / "build_rtl.json").read_text())
    assert report["timing_met"] is False
    assert report["wns_ns"] == float(slacks.get("MOCK_SETUP_SLACK", "0.250"))
    assert report["whs_ns"] == float(slacks.get("MOCK_HOLD_SLACK", "0.031"))


@needs_tclsh
@pytest.mark.parametrize("slack", ["", "inf"], ids=["no-path", "unconstrained"])
def test_a_design_without_timed_paths_is_not_shipped(tree: Path, slack: str) -> None:
    prepare_board_run(tree, "pynq-z2", "hls")
    env = {"HETADAM_BOARD": "pynq-z2", "MOCK_SETUP_SLACK": slack}
    _, error = run_tcl(tree.parent, tree.joinpath(*BUILD_TCL), env)
    assert f"no timed setup path in the routed design (slack '{slack}')" in error
    assert not (tree / "build" / "boards" / "pynq-z2" / "hetadam.bit").exists()


@needs_tclsh
def test_the_pl_clock_the_ps_gives_is_recorded_and_a_shortfall_named(tree: Path) -> None:
    """ZCU104's PL PLL may give 187.5 MHz for a 200 MHz request: timing is met at what it gives,
    and the build says so rather than reporting the request."""
    prepare_board_run(tree, "zcu104", "hls")
    env = {"HETADAM_BOARD": "zcu104", "MOCK_ACT_MHZ": "187.498123"}
    run = run_tcl_full(tree.parent, tree.joinpath(*BUILD_TCL), env)
    assert not run.error
    report = json.loads((tree / "build" / "boards" / "zcu104" / "reports" / "build_hls.json").read_text())
    assert report["clock_mhz_requested"] == 200 and report["clock_mhz_actual"] == 187.498
    assert "WARNING: the PS gives the fabric 187.498 MHz, not the 200 MHz asked for" in run.output
    assert "(hls kernel, zcu104, 187.498 MHz" in run.output


@needs_tclsh
def test_the_pl_clock_asked_for_and_given_raises_no_warning(tree: Path) -> None:
    prepare_board_run(tree, "pynq-z2", "hls")
    env = {"HETADAM_BOARD": "pynq-z2", "MOCK_ACT_MHZ": "100.000000"}
    run = run_tcl_full(tree.parent, tree.joinpath(*BUILD_TCL), env)
    assert not run.error and "WARNING: the PS gives" not in run.output
    assert "(hls kernel, pynq-z2, 100.000 MHz" in run.output


@needs_tclsh
def test_board_flow_honours_hetadam_part_and_clock(tree: Path) -> None:
    """As run_hls.tcl does: the part (its HLS IP under build/hls/<part>) and the clock; the board
    files, which fix the board's own part, are then left out."""
    prepare_board_run(tree, "pynq-z2", "hls", part="xc7z010clg400-1")
    env = {
        "HETADAM_BOARD": "pynq-z2",
        "HETADAM_PART": "xc7z010clg400-1",
        "HETADAM_CLOCK_MHZ": "50",
        "MOCK_BOARD_PARTS": "tul.com.tw:pynq-z2:part0:1.0",
    }
    run = run_tcl_full(tree.parent, tree.joinpath(*BUILD_TCL), env)
    assert not run.error
    assert option(find(run.calls, "create_project")[-1], "-part") == "xc7z010clg400-1"
    assert not [c for c in find(run.calls, "set_property") if c[0] == "board_part"]
    assert "HETADAM_PART=xc7z010clg400-1 is not the board's part xc7z020clg400-1" in run.output
    ps_config = " ".join(c[1] for c in find(run.calls, "set_property") if c[0] == "-dict" and c[2] == "ps")
    assert "CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ 50 " in ps_config + " "
    report = json.loads((tree / "build" / "boards" / "pynq-z2" / "reports" / "build_hls.json").read_text())
    assert report["part"] == "xc7z010clg400-1" and report["clock_mhz_requested"] == 50


NARROW = {"HETADAM_FORMAT": "b32-g16-m8-s8", "HETADAM_FORMAT_GENERICS": "BLOCK=32 G_BITS=16 M_BITS=8 S_BITS=8"}
"""A FORMAT as mk/hls.mk hands it to both flows."""


@needs_tclsh
def test_hls_flow_builds_a_format_into_its_own_folder(tree: Path) -> None:
    calls, error = run_tcl(tree.parent, tree / "hw" / "hls" / "run_hls.tcl", {"HETADAM_STEP": "csynth", **NARROW})
    assert not error
    for call in find(calls, "add_files"):
        flags = option(call, "-cflags").split()
        assert flags[-4:] == ["-DHETADAM_BLOCK=32", "-DHETADAM_G_BITS=16", "-DHETADAM_M_BITS=8", "-DHETADAM_S_BITS=8"]
    assert (tree / "build" / "hls" / "xc7z020clg400-1-b32-g16-m8-s8" / "reports").is_dir()
    assert not (tree / "build" / "hls" / "xc7z020clg400-1").exists(), "the default's IP stays as it was"


@needs_tclsh
@pytest.mark.parametrize(
    ("env", "message"),
    [({"HETADAM_FORMAT": "b32-g16-m8-s8"}, "go together"),
     ({**NARROW, "HETADAM_FORMAT_GENERICS": "BLOCK=32 M_BITS=eight"}, "'M_BITS=eight' is not one of")],
)  # fmt: skip
def test_both_flows_refuse_a_half_given_format(tree: Path, env: dict[str, str], message: str) -> None:
    prepare_board_run(tree, "zcu104", "rtl")
    for script in (tree / "hw" / "hls" / "run_hls.tcl", tree.joinpath(*BUILD_TCL)):
        _, error = run_tcl(tree.parent, script, {"HETADAM_STEP": "csynth", "HETADAM_BOARD": "zcu104", **env})
        assert message in error, script.name


@needs_tclsh
def test_board_flow_sets_the_rtl_kernels_format_and_records_it(tree: Path) -> None:
    prepare_board_run(tree, "zcu104", "rtl")
    env = {"HETADAM_BOARD": "zcu104", "HETADAM_KERNEL": "rtl", **NARROW}
    calls, error = run_tcl(tree.parent, tree.joinpath(*BUILD_TCL), env)
    assert not error
    generics = "CONFIG.BLOCK 32 CONFIG.G_BITS 16 CONFIG.M_BITS 8 CONFIG.S_BITS 8"
    assert ["-dict", generics, "hetadam"] in find(calls, "set_property")
    report = json.loads((tree / "build" / "boards" / "zcu104" / "reports" / "build_rtl.json").read_text())
    assert report["format"] == "b32-g16-m8-s8"


@needs_tclsh
def test_board_flow_takes_the_hls_ip_of_the_format(tree: Path) -> None:
    prepare_board_run(tree, "zcu104", "hls")  # the default format's IP only
    env = {"HETADAM_BOARD": "zcu104", "HETADAM_KERNEL": "hls", **NARROW}
    _, error = run_tcl(tree.parent, tree.joinpath(*BUILD_TCL), env)
    folder = "xczu7ev-ffvc1156-2-e-b32-g16-m8-s8"
    assert folder in error and "make hls-export BOARD=zcu104 FORMAT=b32-g16-m8-s8" in error
    ip = tree / "build" / "hls" / folder / "hetadam_prj" / "sol" / "impl" / "ip"
    ip.mkdir(parents=True)
    (ip / "component.xml").write_text("")
    calls, error = run_tcl(tree.parent, tree.joinpath(*BUILD_TCL), env)
    assert not error
    assert [ip.as_posix()] == [c[1] for c in find(calls, "set_property") if c[0] == "ip_repo_paths"]
    assert not [c for c in find(calls, "set_property") if c[-1] == "hetadam"], "the HLS IP is built for it already"


@needs_tclsh
def test_board_flow_wants_the_hls_ip_of_the_part_it_builds_for(tree: Path) -> None:
    prepare_board_run(tree, "pynq-z2", "hls")  # the IP of the board's part only
    env = {"HETADAM_BOARD": "pynq-z2", "HETADAM_PART": "xc7z010clg400-1"}
    _, error = run_tcl(tree.parent, tree.joinpath(*BUILD_TCL), env)
    assert "no HLS IP for xc7z010clg400-1" in error


@needs_tclsh
@pytest.mark.parametrize(("ports", "message"), [("{0 5}", "ports 0 to 3, not 5"), ("{}", "name one or more")])
def test_board_flow_refuses_high_performance_ports_a_zynq_lacks(tree: Path, ports: str, message: str) -> None:
    prepare_board_run(tree, "pynq-z2", "hls")
    board_tcl = tree / "hw" / "boards" / "pynq-z2" / "board.tcl"
    board_tcl.write_text(re.sub(r"^set hp_ports .*$", f"set hp_ports {ports}", board_tcl.read_text(), flags=re.M))
    _, error = run_tcl(tree.parent, tree.joinpath(*BUILD_TCL), {"HETADAM_BOARD": "pynq-z2"})
    assert message in error


@needs_tclsh
def test_board_flow_errors(tree: Path) -> None:
    script = tree / "hw" / "boards" / "build.tcl"
    _, error = run_tcl(tree.parent, script, {"HETADAM_BOARD": "pynq-z2", "HETADAM_KERNEL": "hls"})
    assert "no HLS IP" in error and "make hls-export BOARD=pynq-z2" in error
    _, error = run_tcl(tree.parent, script, {"HETADAM_KERNEL": "opencl"})
    assert "choose hls or rtl" in error
    _, error = run_tcl(tree.parent, script, {"HETADAM_KERNEL": "rtl"})
    assert "sources.f not found" in error


# -- make ----------------------------------------------------------------------------------

MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="make not found")


def run_make(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = subprocess.run([MAKE, "--no-print-directory", *args], capture_output=True, text=True, cwd=ROOT, timeout=60)
    return done, time.monotonic() - start


@needs_make
@pytest.mark.parametrize(
    ("goal", "tool"),
    [(["bitstream", "BOARD=pynq-z2", "KERNEL=hls"], "VIVADO"), (["bitstream", "BOARD=kv260", "KERNEL=rtl"], "VIVADO"),
     (["hls-csynth"], "VITIS_HLS"), (["hls", "STEP=cosim", "BOARD=zcu104"], "VITIS_HLS"),
     (["hls-export"], "VITIS_HLS"), (["bitstream", "KERNEL=hls", "VIVADO=true"], "VITIS_HLS")],
)  # fmt: skip
def test_make_vendor_targets_stop_at_once_without_the_tool(tmp_path: Path, goal: list[str], tool: str) -> None:
    missing = tmp_path / tool.lower()
    done, seconds = run_make(*goal, f"{tool}={missing}")
    assert done.returncode != 0
    assert f"{missing} not found on PATH" in done.stderr
    assert "settings64.sh" in done.stderr
    assert seconds < 20


@needs_make
def test_make_bitstream_checks_board_and_kernel() -> None:
    done, _ = run_make("bitstream", "BOARD=zedboard", "VIVADO=true")
    assert done.returncode != 0 and "kv260 pynq-z2 zcu104" in done.stderr
    done, _ = run_make("bitstream", "KERNEL=opencl", "VIVADO=true")
    assert done.returncode != 0 and "choose hls or rtl" in done.stderr


@needs_make
def test_make_bitstream_runs_vivado_on_the_board_flow() -> None:
    done, _ = run_make("-n", "bitstream", "BOARD=kv260", "KERNEL=rtl", "VIVADO=true")
    assert done.returncode == 0, done.stderr
    assert "HETADAM_BOARD=kv260 HETADAM_KERNEL=rtl" in done.stdout
    assert re.search(r"true -mode batch .*-source \S*hw/boards/build\.tcl", done.stdout)


@needs_make
def test_make_hands_the_format_to_both_flows_and_refuses_one_no_kernel_takes() -> None:
    args = ["-n", "bitstream", "BOARD=zcu104", "KERNEL=hls", "VIVADO=true", "VITIS_HLS=true", "FORMAT=b32-g16-m8-s8"]
    done, _ = run_make(*args)
    assert done.returncode == 0, done.stderr
    handed = 'HETADAM_FORMAT=b32-g16-m8-s8 HETADAM_FORMAT_GENERICS="BLOCK=32 G_BITS=16 M_BITS=8 S_BITS=8"'
    assert re.search(rf"HETADAM_STEP=export HETADAM_BOARD=zcu104 HETADAM_PART=\S+ {handed}", done.stdout)
    assert re.search(rf"HETADAM_KERNEL=hls HETADAM_PART=\S+ {handed}", done.stdout)
    done, _ = run_make("-n", "csim", "FORMAT=b32-g16-m8-s8")
    assert "-DHETADAM_M_BITS=8" in done.stdout and "--format b32-g16-m8-s8 build/golden-b32-g16-m8-s8" in done.stdout
    done, _ = run_make("-n", "bitstream", "BOARD=zcu104", "KERNEL=rtl", "VIVADO=true", "FORMAT=b48-g16-m8-s8")
    assert done.returncode != 0
    assert "FORMAT=b48-g16-m8-s8" in done.stderr and "power of two from 32 to 4096" in done.stderr


@needs_make
def test_make_hands_hetadam_part_to_both_flows() -> None:
    """The HLS IP is exported for, looked for under and instantiated for the same part."""
    part = "xc7z010clg400-1"
    args = ["-n", "bitstream", "BOARD=pynq-z2", "KERNEL=hls", "VIVADO=true", "VITIS_HLS=true", f"HETADAM_PART={part}"]
    done, _ = run_make(*args)
    assert done.returncode == 0, done.stderr
    assert re.search(rf"HETADAM_STEP=export HETADAM_BOARD=pynq-z2 HETADAM_PART={part}\s", done.stdout)
    assert re.search(rf"HETADAM_KERNEL=hls HETADAM_PART={part}\s", done.stdout)
    done, _ = run_make("-n", "bitstream", "BOARD=kv260", "KERNEL=rtl", "VIVADO=true")
    assert re.search(r"HETADAM_KERNEL=rtl HETADAM_PART=xck26-sfvc784-2LV-c\s", done.stdout), "the board's by default"
