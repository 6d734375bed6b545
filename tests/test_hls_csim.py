"""The HLS C++ kernel in C simulation: its testbench over the golden vectors (and
failing on a wrong one), C++14 and UB-free; the `hls-csim` backend's library
build, cache and availability. The backend against the golden vectors, the
model and the cpu backend runs in test_backend_matrix.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hetadam import backends
from hetadam.backends import hls_csim
from hetadam.numerics import DEFAULT, FixedFormat

COMPILER = hls_csim.find_compiler()
needs_compiler = pytest.mark.skipif(
    COMPILER is None, reason="no C++ compiler ($CXX, g++, c++, clang++): install g++ (apt-get install g++)"
)
TB_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unknown-pragmas", "-Wno-unused-label", f"-I{hls_csim.HLS_DIR}"]
TB_SOURCES = [str(hls_csim.HLS_DIR / "hetadam_adam_tb.cpp"), str(hls_csim.HLS_DIR / "hetadam_adam.cpp")]


@pytest.fixture(scope="module")
def testbench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("csim") / "hetadam_adam_tb"
    done = subprocess.run(
        [*COMPILER, "-std=c++17", *TB_FLAGS, *TB_SOURCES, "-o", str(exe)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return exe


@needs_compiler
def test_csim_testbench_passes_every_golden_vector(testbench: Path, golden_dir: Path) -> None:
    vectors = sorted(golden_dir.glob("*.vec"))
    done = subprocess.run([testbench, *vectors], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(vectors)} case(s)" in done.stdout
    assert "0 mismatching word(s): PASS" in done.stdout


@needs_compiler
def test_csim_testbench_fails_on_a_wrong_expectation(testbench: Path, golden_dir: Path, tmp_path: Path) -> None:
    lines = (golden_dir / "stochastic.vec").read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if line.startswith("expect_ms "))
    words = lines[k].split()
    words[5] = f"{int(words[5], 16) ^ 1:08x}"
    lines[k] = " ".join(words)
    bad = tmp_path / "bad.vec"
    bad.write_text("\n".join(lines) + "\n")
    done = subprocess.run([testbench, golden_dir / "zeros.vec", bad], capture_output=True, text=True)
    assert done.returncode == 1
    assert "ms[4]" in done.stdout and "FAIL" in done.stdout


@needs_compiler
def test_kernel_is_valid_cxx14_for_vitis_hls() -> None:
    """run_hls.tcl compiles with -std=c++14 (what every Vitis HLS release accepts)."""
    cmd = [*COMPILER, "-std=c++14", "-fsyntax-only", "-Wall", "-Wextra", "-pedantic", *TB_FLAGS[3:]]
    for source in TB_SOURCES:
        done = subprocess.run([*cmd, source], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


@needs_compiler
def test_csim_has_no_undefined_behaviour(golden_dir: Path, tmp_path: Path) -> None:
    exe = tmp_path / "tb_ubsan"
    flags = ["-std=c++17", "-fsanitize=undefined", "-fno-sanitize-recover=all", *TB_FLAGS]
    built = subprocess.run([*COMPILER, *flags, *TB_SOURCES, "-o", str(exe)], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(reason=f"the compiler cannot build with -fsanitize=undefined: {built.stderr[-300:]}")
    done = subprocess.run([exe, *sorted(golden_dir.glob("*.vec"))], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_kernel_rejects_formats_no_hardware_build_takes() -> None:
    with pytest.raises(ValueError, match=r"cannot be built for the format b48.*power of two"):
        hls_csim.HlsCsimKernel(96, FixedFormat(block=48))


@needs_compiler
def test_backend_is_registered_and_available() -> None:
    assert backends.availability("hls-csim").usable
    backend = backends.create("hls-csim")
    assert backend.name == "hls-csim" and backend.numerics == ("fixed",)
    with pytest.raises(ValueError, match="only the 'fixed'"):
        backend.create_shard(0, 10, "fp32", DEFAULT)


def test_unavailable_without_a_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    av = hls_csim.HlsCsimBackend.availability()
    assert not av.usable
    assert "no C++ compiler" in av.reason and av.remedy == "install g++: apt-get install g++"
    monkeypatch.setenv("CXX", "no-such-compiler++")
    assert hls_csim.find_compiler() is None


@needs_compiler
def test_library_build_is_cached_and_safe_under_concurrent_processes(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from hetadam.backends import hls_csim; "
        "print(hls_csim.build_library(directory=Path(sys.argv[1])))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    paths = {p.communicate()[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(paths) == 1
    built = sorted(tmp_path.iterdir())
    assert [p.name for p in built if p.suffix == ".so"] == [Path(paths.pop()).name]
    assert not [p for p in built if p.name.endswith(".tmp")]
    mtime = next(p for p in built if p.suffix == ".so").stat().st_mtime_ns
    again = hls_csim.build_library(directory=tmp_path)
    assert again.stat().st_mtime_ns == mtime, "a cached build is reused"


@needs_compiler
def test_build_errors_carry_the_compiler_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hls_csim, "CXXFLAGS", (*hls_csim.CXXFLAGS, "-include", "nonexistent.h"))
    with pytest.raises(hls_csim.BuildError, match=r"nonexistent\.h"):
        hls_csim.build_library(directory=tmp_path)
