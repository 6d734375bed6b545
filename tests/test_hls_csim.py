"""The HLS C++ kernel in C simulation: its testbench over the golden vectors, the
ctypes library of the `hls-csim` backend, the backend's shards and training
through HetAdam, all bit-exact with the golden model and the cpu backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hetadam import HetAdam, backends
from hetadam.backends import hls_csim
from hetadam.backends.base import Segment, StepHyper
from hetadam.backends.cpu import CpuBackend
from hetadam.numerics import DEFAULT, FixedFormat, FixedState, adam_step, encode_step, golden
from hetadam.numerics.convert import quantize_grad, state_from_float
from hetadam.numerics.formats import n_blocks

B = DEFAULT.block
COMPILER = hls_csim.find_compiler()
needs_compiler = pytest.mark.skipif(COMPILER is None, reason="no C++ compiler ($CXX, g++, c++, clang++)")
TB_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unknown-pragmas", "-Wno-unused-label", f"-I{hls_csim.HLS_DIR}"]
TB_SOURCES = [str(hls_csim.HLS_DIR / "hetadam_adam_tb.cpp"), str(hls_csim.HLS_DIR / "hetadam_adam.cpp")]


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("golden")
    golden.write_all(directory)
    return directory


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


def _run_library(step: golden.Step) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    kernel = hls_csim.load_kernel()
    p, ms, ex = step.p.copy(), step.ms.copy(), step.ex.copy()
    g = step.g.copy()
    sat = hls_csim.ctypes.c_uint32()
    pointers = (p.ctypes.data, g.ctypes.data, ms.ctypes.data, ex.ctypes.data)
    kernel(*step.scalars.values(), hls_csim.ctypes.byref(sat), *pointers)
    return p, ms, ex, sat.value


@needs_compiler
def test_library_is_bit_exact_on_golden_vectors(golden_dir: Path) -> None:
    for case in golden.load(golden_dir):
        for k, step in enumerate(case.steps):
            p, ms, ex, sat = _run_library(step)
            where = f"{case.name} step {k + 1}"
            assert np.array_equal(p, step.expect_p), where
            assert np.array_equal(ms, step.expect_ms), where
            assert np.array_equal(ex, step.expect_ex), where
            assert sat == step.expect_sat, where


def _random_state(rng: np.random.Generator, n: int) -> FixedState:
    p = rng.normal(0, 1, n).astype(np.float32)
    m = rng.normal(0, 1e-3, n) * rng.choice([1e-6, 1e-2, 1.0], n)
    v = rng.uniform(0, 1e-6, n) * rng.choice([1e-8, 1.0, 1e3], n)
    return state_from_float(p, m, v, DEFAULT)


def _random_grad(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    g = rng.normal(0, 1, n) * rng.choice([0.0, 1e-30, 1e-6, 1e-2, 10.0], n_blocks(n, B)).repeat(B)[:n]
    G, eg, _ = quantize_grad(g, DEFAULT)
    return G, eg


@needs_compiler
@pytest.mark.parametrize(
    ("n", "idx0", "stochastic"),
    [(1, 0, False), (B + 7, 3 * B, True), (hls_csim.CHUNK + 3 * B + 5, 64 * B, True), (2000, 0, False)],
)
def test_kernel_is_bit_exact_over_random_multi_step_sequences(n: int, idx0: int, stochastic: bool) -> None:
    """Runs span chunk boundaries (several library calls on worker threads) and commit, discard and stage."""
    rng = np.random.default_rng(n)
    state = _random_state(rng, n)
    kernel = hls_csim.HlsCsimKernel(n)
    kernel.upload(state)
    for t in range(1, 6):
        G, eg = _random_grad(rng, n)
        sc = encode_step(
            lr=10 ** rng.uniform(-5, -1), beta1=0.9, beta2=0.999, eps=1e-8, step=t, weight_decay=0.01,
            decoupled_weight_decay=True, seed=11, stochastic=stochastic,
        )  # fmt: skip
        want, want_sat = adam_step(state, G, eg, sc, idx0)
        assert kernel.run(G, eg, sc, idx0) == want_sat
        assert kernel.download().equals(state), "run must leave the committed state alone"
        if t == 3:
            kernel.discard()
            assert kernel.download().equals(state)
            kernel.stage(want)
        kernel.commit()
        assert kernel.download().equals(want), f"step {t}"
        assert np.array_equal(kernel.params(), want.P)
        state = want
    kernel.close()


def test_kernel_rejects_other_formats() -> None:
    with pytest.raises(ValueError, match="implements the format"):
        hls_csim.HlsCsimKernel(64, FixedFormat(block=64))


@needs_compiler
def test_backend_shards_match_cpu_fixed_shards() -> None:
    rng = np.random.default_rng(3)
    sizes = [300, 45, 1000]
    offsets = [0, 320, 384]  # each parameter starts on a block, as optim's layout places them
    n = offsets[-1] + sizes[-1]
    start = 2 * B
    shards = [cls().create_shard(start, n, "fixed", DEFAULT) for cls in (hls_csim.HlsCsimBackend, CpuBackend)]
    params = [[torch.from_numpy(rng.normal(0, 1, k).astype(np.float32)) for k in sizes] for _ in shards]
    flat = np.zeros(n, np.float32)
    for o, p in zip(offsets, params[0], strict=True):
        flat[o : o + p.numel()] = p.numpy()
    for shard, ps in zip(shards, params, strict=True):
        for p, q in zip(ps, params[0], strict=True):
            p.copy_(q)
        shard.import_state({}, flat)
    for t in range(1, 8):
        grads = [torch.from_numpy(rng.normal(0, 10 ** rng.uniform(-6, 0), k).astype(np.float32)) for k in sizes]
        skip = 1 if t == 4 else None  # a parameter without a gradient: the shard's partial step
        hyper = StepHyper(
            lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, step=t,
            decoupled_weight_decay=t % 2 == 0, seed=5, stochastic=t > 4,
        )  # fmt: skip
        sats = []
        for shard, ps in zip(shards, params, strict=True):
            segments = [
                Segment(o, p, None if i == skip else g)
                for i, (o, p, g) in enumerate(zip(offsets, ps, grads, strict=True))
            ]
            sats.append(shard.step(segments, hyper))
            shard.commit()
        assert sats[0] == sats[1]
        for a, b in zip(*params, strict=True):
            assert torch.equal(a, b), f"step {t}"
    mine, ref = (s.export_state() for s in shards)
    for key in ref:
        assert np.array_equal(mine[key], ref[key]), key
    for shard in shards:
        shard.close()


@needs_compiler
def test_hetadam_trains_bit_identically_to_the_cpu_backend() -> None:
    def train(backend: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(12, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3))
        opt = HetAdam(model.parameters(), lr=3e-3, weight_decay=1e-2, backend=backend, numerics="fixed")
        x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(2))
        for _ in range(10):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        opt.close()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(train("hls-csim"), train("cpu"), strict=True):
        assert torch.equal(a, b)


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
