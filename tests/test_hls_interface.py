"""The HLS kernel's interface and constants agree with the one register map
(host/hetadam/regmap.py) and the numerics spec: top name, argument order,
AXI4-Lite offsets, AXI4 master bundles, pragmas, format constants."""

from __future__ import annotations

import re
import subprocess

import pytest

from hetadam import formats_render, regmap
from hetadam.backends.hls_csim import HLS_DIR, find_compiler
from hetadam.numerics import DEFAULT, formats, golden, lfsr

KERNEL = HLS_DIR / "hetadam_adam.cpp"
HEADER = HLS_DIR / "hetadam_adam.h"
TESTBENCH = HLS_DIR / "hetadam_adam_tb.cpp"
REGMAP_HEADER = HLS_DIR / "adam_regmap.h"
HLS_FORMAT_HEADER = HLS_DIR / "adam_format.h"


def defines() -> dict[str, str]:
    """The register-map macros and the pragma sizes of the DEFAULT format (adam_format.h)."""
    sizes = {f"HETADAM_{name}": str(v) for name, v in formats_render.hls_sizes(DEFAULT.block).items()}
    return dict(re.findall(r"^#define (\w+) (\S+)$", REGMAP_HEADER.read_text(), re.M)) | sizes


def parse_pragma(text: str) -> tuple[str, dict[str, str]]:
    """'INTERFACE m_axi port=p bundle=gmem_p' -> ('INTERFACE m_axi', {'port': 'p', 'bundle': 'gmem_p'})."""
    words = text.split()
    head = " ".join(w for w in words if "=" not in w)
    return head, dict(w.split("=", 1) for w in words if "=" in w)


def kernel_pragmas(source: str) -> list[tuple[str, dict[str, str]]]:
    """The HLS pragmas of the kernel, with the register-map macros substituted as the preprocessor does."""
    macros = defines()
    found = re.findall(r"^\s*(?:#pragma HLS (.+)|HETADAM_PRAGMA\(HLS (.+)\))\s*$", source, re.M)
    pragmas = []
    for plain, wrapped in found:
        text = re.sub(r"\b\w+\b", lambda m: macros.get(m.group(0), m.group(0)), plain or wrapped)
        pragmas.append(parse_pragma(text))
    return pragmas


def interface(kind: str) -> dict[str, dict[str, str]]:
    return {kv["port"]: kv for head, kv in kernel_pragmas(KERNEL.read_text()) if head == f"INTERFACE {kind}"}


def signature(text: str) -> tuple[str, list[tuple[str, str]]]:
    name, params = re.search(r'extern "C" void (\w+)\(([^)]*)\)', text).groups()
    args = [re.match(r"(.*?)(\w+)$", " ".join(p.split())).groups() for p in params.split(",")]
    return name, [(kind.strip(), arg) for kind, arg in args]


CONSTANTS = (
    "BLOCK", "G_MAG", "M_MAG", "S_BITS", "EPS_BITS", "WORK_FRAC", "EXTRA_FRAC", "COEF_FRAC", "RATIO_FRAC",
    "EXP_ZERO", "M_MAX", "S_MAX", "INDEX_MUL", "COSIM_DEPTH", "COSIM_DEPTH_BLOCKS",
)  # fmt: skip


@pytest.fixture(scope="module")
def header_constants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """The constants of hetadam_adam.h with DEFAULT's widths, as the compiler sees them."""
    compiler = find_compiler()
    if compiler is None:
        pytest.skip(reason="no C++ compiler: apt-get install g++")
    prints = "".join(f'std::printf("{c} %lld\\n", (long long)hetadam::{c});' for c in CONSTANTS)
    source = tmp_path_factory.mktemp("hls") / "constants.cpp"
    source.write_text(f'#include <cstdio>\n#include "hetadam_adam.h"\nint main() {{ {prints} }}\n')
    exe = source.with_suffix("")
    done = subprocess.run([*compiler, "-std=c++17", f"-I{HLS_DIR}", str(source), "-o", str(exe)], capture_output=True)
    assert done.returncode == 0, done.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_regmap_header_is_generated_from_regmap() -> None:
    assert REGMAP_HEADER.read_text() == regmap.render_c_header()


@pytest.mark.parametrize("path", [KERNEL, HEADER])
def test_top_function_name_and_arguments_follow_the_register_map(path) -> None:
    name, args = signature(path.read_text())
    assert name == regmap.KERNEL_NAME
    assert [a for _, a in args] == [a.name for a in regmap.ARGS]
    for (kind, arg), spec in zip(args, regmap.ARGS, strict=True):
        pointer = spec.bits == 64 or spec.direction == "out"
        assert kind.endswith("*") == pointer, arg
        assert kind.startswith("const") == (spec.bits == 64 and arg == "g"), f"only g is read-only: {arg}"
    assert {arg: kind for kind, arg in args}["eps_e"] == "int32_t", "eps_e is two's complement"


def test_axilite_offsets_and_bundle_follow_the_register_map() -> None:
    axil = interface("s_axilite")
    assert axil.pop("return") == {"port": "return", "bundle": regmap.CONTROL_BUNDLE}
    assert set(axil) == set(regmap.BY_NAME)
    for a in regmap.ARGS:
        assert int(axil[a.name]["offset"], 16) == a.offset, a.name
        assert axil[a.name]["bundle"] == regmap.CONTROL_BUNDLE


def test_the_block_protocol_is_ap_ctrl_hs_on_the_control_bundle() -> None:
    """Stated, not left to the flow's default (ap_ctrl_chain in the Vitis kernel flow): the driver
    speaks ap_ctrl_hs (regmap: CTRL_AP_START ... CTRL_AUTO_RESTART)."""
    assert interface("ap_ctrl_hs") == {"return": {"port": "return", "bundle": regmap.CONTROL_BUNDLE}}
    assert not interface("ap_ctrl_chain") and not interface("ap_ctrl_none")


def test_preprocessor_expands_the_offset_pragmas() -> None:
    compiler = find_compiler()
    if compiler is None:
        pytest.skip(reason="no C++ compiler")
    done = subprocess.run([*compiler, "-std=c++17", "-E", f"-I{HLS_DIR}", str(KERNEL)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expanded = re.findall(r"^#pragma HLS (INTERFACE s_axilite .+)$", done.stdout, re.M)
    assert [parse_pragma(p) for p in expanded] == [
        p for p in kernel_pragmas(KERNEL.read_text()) if p[0] == "INTERFACE s_axilite"
    ]


def test_axi_masters_follow_the_register_map(header_constants: dict[str, int]) -> None:
    maxi = interface("m_axi")
    assert {port: kv["bundle"] for port, kv in maxi.items()} == regmap.M_AXI_BUNDLES
    depth = header_constants["COSIM_DEPTH"]
    assert header_constants["COSIM_DEPTH_BLOCKS"] == depth // DEFAULT.block
    largest = max(case.n for case in golden.cases())
    assert depth >= largest and depth % DEFAULT.block == 0
    for port, kv in maxi.items():
        assert kv["offset"] == "slave", port
        assert int(kv["depth"]) == (depth // DEFAULT.block if port == "ex" else depth), port
        for key in ("max_read_burst_length", "max_write_burst_length", "num_read_outstanding", "latency"):
            assert int(kv[key]) > 0, (port, key)


def test_dataflow_pipelines_and_streams() -> None:
    source = KERNEL.read_text()
    pragmas = kernel_pragmas(source)
    heads = [head for head, _ in pragmas]
    assert heads.count("DATAFLOW") == 1
    assert [kv for head, kv in pragmas if head == "PIPELINE"] == [{"II": "1"}] * 3
    for loop in ("load_elems", "compute_elems", "store_elems"):
        assert re.search(rf"^{loop}:\n\s+for .*\n#pragma HLS PIPELINE II=1$", source, re.M), loop
    streams = {kv["variable"]: int(kv["depth"]) for head, kv in pragmas if head == "STREAM"}
    assert streams["moments"] >= 2 * DEFAULT.block, "store waits for a whole block: compute runs a block ahead"
    body = source[source.index("#pragma HLS DATAFLOW") :]
    assert re.findall(r"^  (?!HETADAM_PRAGMA)(\w+)\(", body, re.M) == ["load", "compute", "store"]


def test_kernel_constants_are_the_spec(header_constants: dict[str, int]) -> None:
    """hetadam_adam.h takes the format from the generated adam_format.h (tests/test_formats_render.py checks that
    it is current), so the compiled constants are DEFAULT's and the spec's."""
    f = DEFAULT
    assert HLS_FORMAT_HEADER.read_text() == formats_render.render_c_header()
    want = {
        "BLOCK": f.block, "G_MAG": f.g_bits - 1, "M_MAG": f.m_bits - 1, "S_BITS": f.s_bits,
        "EPS_BITS": formats.EPS_BITS, "WORK_FRAC": formats.WORK_FRAC, "EXTRA_FRAC": formats.EXTRA_FRAC,
        "COEF_FRAC": formats.COEF_FRAC, "RATIO_FRAC": formats.RATIO_FRAC, "EXP_ZERO": formats.EXP_ZERO,
        "M_MAX": f.m_max, "S_MAX": f.s_max, "INDEX_MUL": lfsr.INDEX_MUL,
    }  # fmt: skip
    assert {k: header_constants[k] for k in want} == want
    n_scalars = re.search(r"constexpr int N_SCALARS = (\d+);", TESTBENCH.read_text()).group(1)
    assert int(n_scalars) == len(regmap.SCALARS)
