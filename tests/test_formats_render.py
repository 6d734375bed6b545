"""The format's one source (numerics/formats.py) and the files rendered from it (hetadam.formats_render):
the SV package, the HLS header and the OpenCL include are current, carry the spec's values, and a build
for another format's widths gets that format's constants, or stops when no kernel takes it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hetadam import formats_render
from hetadam.backends.hls_csim import find_compiler
from hetadam.numerics import DEFAULT, FixedFormat, formats, lfsr
from hetadam.numerics.formats import hardware_problem, kernel_generics

ROOT = Path(__file__).resolve().parents[1]
NARROW = FixedFormat(m_bits=8, s_bits=8)


def test_the_generated_files_are_current() -> None:
    for rel, render in formats_render.GENERATED.items():
        assert (ROOT / rel).read_text() == render(), f"{rel} is stale: run `python -m hetadam.formats_render`"


def test_check_names_a_stale_file_and_writing_makes_it_current(tmp_path: Path, capsys) -> None:
    for rel in formats_render.GENERATED:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    assert formats_render.main(["--root", str(tmp_path)]) == 0
    assert formats_render.main(["--root", str(tmp_path), "--check"]) == 0
    stale = tmp_path / "hw" / "opencl" / "adam_format.h"
    stale.write_text(stale.read_text().replace("#define HETADAM_WORK_FRAC (16)", "#define HETADAM_WORK_FRAC (17)"))
    assert formats_render.main(["--root", str(tmp_path), "--check"]) == 1
    assert "hw/opencl/adam_format.h" in capsys.readouterr().out


def test_the_sv_package_holds_the_default_widths_and_the_spec_constants() -> None:
    text = formats_render.render_sv()
    values = {name: int(v) for name, v in re.findall(r"localparam int (\w+) = (-?\d+);", text)}
    assert {k: values[k] for k in kernel_generics(DEFAULT)} == kernel_generics(DEFAULT)
    for name in ("WORK_FRAC", "EXTRA_FRAC", "COEF_FRAC", "RATIO_FRAC", "EPS_BITS", "ALPHA_BITS", "EXP_ZERO"):
        assert values[name] == getattr(formats, name), name
    assert (values["BLOCK_MIN"], values["BLOCK_MAX"]) == (formats.HW_BLOCK_MIN, formats.HW_BLOCK_MAX)
    assert f"INDEX_MUL = 32'h{lfsr.INDEX_MUL:08X};" in text


def _c_constants(tmp_path: Path, header: Path, defines: list[str]) -> subprocess.CompletedProcess[str]:
    """Compile and run a C program that prints the header's constants with `defines`."""
    compiler = find_compiler()
    if compiler is None:
        pytest.skip(reason="no C++ compiler: apt-get install g++")
    names = ["BLOCK", "G_MAG", "M_MAG", "S_BITS", "M_MAX", "S_MAX", "WORK_FRAC", "EXP_ZERO", "INDEX_MUL"]
    prints = "".join(f'printf("{n} %lld\\n", (long long)(HETADAM_{n}));' for n in names)
    source = tmp_path / "constants.cpp"
    source.write_text(f'#include <cstdio>\n#include "{header.name}"\nint main() {{ {prints} }}\n')
    exe = tmp_path / "constants"
    built = subprocess.run(
        [*compiler, f"-I{header.parent}", *defines, str(source), "-o", str(exe)], capture_output=True, text=True
    )
    if built.returncode != 0:
        return built
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True)


@pytest.mark.parametrize("header", ["hw/hls/adam_format.h", "hw/opencl/adam_format.h"])
@pytest.mark.parametrize("fmt", [DEFAULT, NARROW, FixedFormat(block=4096, g_bits=2, m_bits=2, s_bits=1)], ids=str)
def test_a_c_build_gets_the_constants_of_the_format_it_names(tmp_path: Path, header: str, fmt: FixedFormat) -> None:
    defines = [] if fmt == DEFAULT else formats_render.c_defines(fmt)
    done = _c_constants(tmp_path, ROOT / header, defines)
    assert done.returncode == 0, done.stderr
    got = {name: int(v) for name, v in (line.split() for line in done.stdout.splitlines())}
    assert got == {
        "BLOCK": fmt.block, "G_MAG": fmt.g_bits - 1, "M_MAG": fmt.m_bits - 1, "S_BITS": fmt.s_bits,
        "M_MAX": fmt.m_max, "S_MAX": fmt.s_max, "WORK_FRAC": formats.WORK_FRAC, "EXP_ZERO": formats.EXP_ZERO,
        "INDEX_MUL": lfsr.INDEX_MUL,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("defines", "message"),
    [(["-DHETADAM_BLOCK=48"], "power of two"), (["-DHETADAM_BLOCK=8192"], "power of two"),
     (["-DHETADAM_M_BITS=17"], "HETADAM_M_BITS must lie"), (["-DHETADAM_S_BITS=0"], "HETADAM_S_BITS must lie")],
)  # fmt: skip
def test_a_c_build_for_widths_no_kernel_takes_stops(tmp_path: Path, defines: list[str], message: str) -> None:
    done = _c_constants(tmp_path, ROOT / "hw" / "hls" / "adam_format.h", defines)
    assert done.returncode != 0 and message in done.stderr


def test_generics_prints_a_formats_widths_for_the_build_scripts(capsys) -> None:
    assert formats_render.main(["--generics", "b64-g12-m12-s10"]) == 0
    assert capsys.readouterr().out.split() == ["BLOCK=64", "G_BITS=12", "M_BITS=12", "S_BITS=10"]
    assert formats_render.main(["--generics", "b48-g16-m8-s8"]) == 2
    assert "block 48: the hardware kernels take a power of two from 32 to 4096" in capsys.readouterr().err
    assert formats_render.main(["--generics", "m8s8"]) == 2
    assert "expected b<block>-g<bits>-m<bits>-s<bits>" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "fmt"),
    [(DEFAULT.name, DEFAULT), ("b32-g16-m8-s8", NARROW), (" b256-g8-m12-s12-q15.16 ", FixedFormat(256, 8, 12, 12, 16))],
)  # fmt: skip
def test_a_format_parses_from_its_name(text: str, fmt: FixedFormat) -> None:
    assert FixedFormat.parse(text) == fmt
    assert FixedFormat.parse(fmt.name) == fmt
    assert FixedFormat.parse(fmt.hardware_name) == FixedFormat(fmt.block, fmt.g_bits, fmt.m_bits, fmt.s_bits)


@pytest.mark.parametrize("text", ["", "b32", "b32-g16-m8", "b32-g16-m8-s8-q15", "b32-g16-m8-s8-q1.24", "x1-g2-m2-s2"])
def test_a_malformed_format_name_is_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected b<block>-g<bits>-m<bits>-s<bits>.*e\.g\. b32-g16-m16-s16-q7\.24"):
        FixedFormat.parse(text)


def test_hardware_takes_power_of_two_blocks_from_32_to_4096() -> None:
    assert all(hardware_problem(FixedFormat(block=b)) is None for b in (32, 64, 256, 4096))
    for block in (16, 48, 8192):
        assert "power of two from 32 to 4096" in (hardware_problem(FixedFormat(block=block)) or "")
