"""The host build of the HLS kernel (the hls-csim backend): its square root for the CPU
(-DHETADAM_HOST_ISQRT) and the digit recurrence synthesis keeps are both floor(sqrt(v))
where a double rounds worst (k**2 - 1, k**2, k**2 + 1 up to the top of their ranges); and
the kernel on many pieces and threads gives what one run gives."""

from __future__ import annotations

import ctypes
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hetadam.backends import hls_csim
from hetadam.formats_render import c_defines
from hetadam.numerics import DEFAULT, adam_step, encode_step, golden

COMPILER = hls_csim.find_compiler()
pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C++ compiler: apt-get install g++")

WRAPPER = """
#include "hetadam_adam.cpp"
extern "C" void isqrt_many(const uint64_t *v, int64_t *root, size_t n) {
  for (size_t i = 0; i < n; ++i) root[i] = hetadam::isqrt52(v[i]);
}
"""


def isqrt_library(tmp_path: Path, host: bool) -> ctypes.CDLL:
    source = tmp_path / "isqrt.cpp"
    source.write_text(WRAPPER)
    library = tmp_path / f"isqrt-{'host' if host else 'recurrence'}.so"
    flags = [f for f in hls_csim.CXXFLAGS if host or f != "-DHETADAM_HOST_ISQRT"]
    cmd = [*COMPILER, *flags, *c_defines(DEFAULT), f"-I{hls_csim.HLS_DIR}", str(source), "-o", str(library)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    lib = ctypes.CDLL(str(library))
    lib.isqrt_many.argtypes = [
        np.ctypeslib.ndpointer(np.uint64, flags="C_CONTIGUOUS"),
        np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS"),
        ctypes.c_size_t,
    ]
    return lib


def hard_cases(bits: int) -> np.ndarray:
    """k**2 - 1, k**2 and k**2 + 1 below 2**bits for the smallest and largest roots k and
    random ones, and 2**bits - 1."""
    top = math.isqrt((1 << bits) - 1)
    k = np.concatenate(
        [np.arange(0, 3000), np.arange(top - 3000, top + 1), np.random.default_rng(0).integers(0, top, 20000)]
    )
    k = k.astype(np.uint64)
    v = np.concatenate([k * k, k * k - np.uint64(1), k * k + np.uint64(1), np.array([(1 << bits) - 1], np.uint64)])
    return v[v < np.uint64(1 << bits)]  # k = 0 wraps k**2 - 1 around


@pytest.mark.parametrize(
    ("host", "bits"),
    [(True, 53), (False, 52)],
    ids=["host square root, below 2**53 (a double holds v exactly)", "digit recurrence, below 2**52 (26 digits)"],
)
def test_the_square_root_is_floor_sqrt_where_a_double_rounds_worst(tmp_path: Path, host: bool, bits: int) -> None:
    """Below 2**52 the truncated double root is already exact; from 2**52 on, sqrt(k**2 - 1)
    rounds up to k, which the host root's corrections catch: a margin for wider formats."""
    lib = isqrt_library(tmp_path, host)
    v = hard_cases(bits)
    got = np.zeros(v.size, np.int64)
    lib.isqrt_many(v, got, v.size)
    want = np.array([math.isqrt(int(x)) for x in v], np.int64)
    wrong = np.flatnonzero(got != want)
    assert wrong.size == 0, f"{wrong.size} wrong, first isqrt({int(v[wrong[0]])}) = {got[wrong[0]]}"


def test_the_kernel_on_pieces_and_threads_is_the_kernel_on_the_whole_range() -> None:
    """A run over 5 pieces (and a partial block at the end) on every core, stochastic
    rounding on (its bits depend on each element's global index)."""
    n, idx0 = 5 * hls_csim.CHUNK + 40, 3 * DEFAULT.block
    rng = np.random.default_rng(1)
    state = golden.random_state(rng, n, DEFAULT, -40, 4)
    G, eg = golden.random_grad(rng, n, DEFAULT, -40, 4)
    sc = encode_step(lr=3e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=2, seed=9, stochastic=True)
    kernel = hls_csim.HlsCsimKernel(n, DEFAULT)
    kernel.upload(state)
    want, want_sat = adam_step(state, G, eg, sc, idx0)
    assert kernel.run(G, eg, sc, idx0) == want_sat
    kernel.commit()
    assert kernel.download().equals(want)
