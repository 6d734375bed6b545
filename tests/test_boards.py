"""The vendor flows (hw/hls/run_hls.tcl, hw/boards/*.tcl, mk/hls.mk) without the
vendor tools: the Tcl runs under tclsh against recording stand-ins of the
Vitis HLS / Vivado commands, and must agree with the kernel and the register
map (top, bundles, ports, parts, clocks, addresses); the Make targets stop at
once, naming the missing tool."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
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
    "ps7": {"clk": "ps/FCLK_CLK0", "resetn": "ps/FCLK_RESET0_N", "ctrl": "ps/M_AXI_GP0", "data": "ps/S_AXI_HP0",
            "irq": "ps/IRQ_F2P", "port_clks": ["ps/M_AXI_GP0_ACLK", "ps/S_AXI_HP0_ACLK"]},
    "psu": {"clk": "ps/pl_clk0", "resetn": "ps/pl_resetn0", "ctrl": "ps/M_AXI_HPM0_FPD", "data": "ps/S_AXI_HP0_FPD",
            "irq": "ps/pl_ps_irq0", "port_clks": ["ps/maxihpm0_fpd_aclk", "ps/saxihp0_fpd_aclk"]},
}  # fmt: skip
TCLSH = shutil.which("tclsh")
needs_tclsh = pytest.mark.skipif(TCLSH is None, reason="tclsh not found (apt-get install tcl)")
SEP = "\x1f"

# Recording stand-ins of the Vitis HLS and Vivado Tcl commands the flows use.
MOCKS = r"""
set ::calls {}
proc record {args} { lappend ::calls $args; return "" }
foreach cmd {
    open_project set_top add_files open_solution set_part create_clock config_export
    csim_design csynth_design cosim_design export_design
    create_project set_property update_ip_catalog create_bd_design apply_bd_automation
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
proc get_timing_paths {args} { return path }
proc get_property {name args} {
    switch -- $name {
        PROGRESS { return 100% }
        STATUS { return "write_bitstream Complete!" }
        DIRECTORY { return $::env(MOCK_RUN_DIR) }
        SLACK { return 0.25 }
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


def run_tcl(tmp_path: Path, script: Path, env: dict[str, str]) -> tuple[list[list[str]], str]:
    """Source `script` under the mocks; returns the recorded calls and the error (empty when none)."""
    driver = tmp_path / "mock_driver.tcl"
    driver.write_text(MOCKS)
    full_env = {**os.environ, "MOCK_BOARD_PARTS": "", "MOCK_RUN_DIR": str(tmp_path / "run"), **env}
    done = subprocess.run([TCLSH, driver, script], capture_output=True, text=True, env=full_env, cwd=tmp_path)
    calls = [line.split(SEP)[1:] for line in done.stdout.splitlines() if line.startswith("CALL" + SEP)]
    errors = [line.split(SEP, 1)[1] for line in done.stdout.splitlines() if line.startswith("ERROR" + SEP)]
    assert (done.returncode != 0) == bool(errors), done.stdout + done.stderr
    return calls, "".join(errors)


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
        "config_export", "csim_design", "csynth_design", "cosim_design", "export_design", "exit",
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


def prepare_board_run(tree: Path, board: str, kernel: str) -> None:
    part = BOARDS[board][0]
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
    expected = {
        (pins["ctrl"], "ctrl_sc/S00_AXI"),
        ("ctrl_sc/M00_AXI", f"hetadam/s_axi_{regmap.CONTROL_BUNDLE}"),
        ("ctrl_sc/M01_AXI", "intc/s_axi"),
        ("data_sc/M00_AXI", pins["data"]),
    } | {(f"hetadam/m_axi_{b}", f"data_sc/S{i:02d}_AXI") for i, b in enumerate(bundles)}
    assert intf == expected
    nets = [set(c) for c in find(calls, "connect_bd_net")]
    clocked = {"hetadam/ap_clk", "intc/s_axi_aclk", "rst/slowest_sync_clk", "ctrl_sc/aclk", "data_sc/aclk"}
    assert {pins["clk"], *pins["port_clks"], *clocked} in nets
    assert {pins["resetn"], "rst/ext_reset_in"} in nets
    reset = {"rst/peripheral_aresetn", "hetadam/ap_rst_n", "intc/s_axi_aresetn", "ctrl_sc/aresetn", "data_sc/aresetn"}
    assert reset in nets
    assert {"hetadam/interrupt", "intc/intr"} in nets
    assert {"intc/irq", pins["irq"]} in nets
    props = find(calls, "set_property")
    assert ["-dict", "CONFIG.C_IRQ_CONNECTION 1", "intc"] in props, "a single irq output, as PYNQ wants"
    assert ["offset", f"0x{base:08X}", "ps/Data/SEG_hetadam_Reg"] in props
    assert ["range", "64K", "ps/Data/SEG_hetadam_Reg"] in props
    assert ["offset", f"0x{base + 0x10000:08X}", "ps/Data/SEG_intc_Reg"] in props
    assert ["range", "64K", "ps/Data/SEG_intc_Reg"] in props
    assert ["-dict", f"CONFIG.NUM_SI {len(bundles)} CONFIG.NUM_MI 1", "data_sc"] in props
    clock_key = "CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ" if kind == "ps7" else "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ"
    assert any(p[0] == "-dict" and re.search(rf"{clock_key} {mhz}\b", p[1]) for p in props)
    assert ["-to_step", "write_bitstream"] == find(calls, "launch_runs")[0][1:3]
    out = tree / "build" / "boards" / board
    assert (out / "hetadam.bit").read_text() == "bit"
    assert (out / "hetadam.hwh").read_text() == "hwh"
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
