"""The `hls-csim` backend: the HLS C++ kernel (hw/hls/) built by the host C++
compiler as a shared library and called in-process through ctypes.

It runs the very source Vitis HLS synthesises (hetadam_adam.cpp, compiled as
C++17 without vendor headers), so training with it exercises the kernel's
arithmetic on real workloads. The library is built on first use with `$CXX`
(else g++, c++ or clang++) and cached under build/hls-csim/ in the source tree
(or ~/.cache/hetadam/hls-csim/ when that is not writable), keyed by a hash of
the sources, the compiler, the flags and the format (one library per format's
widths, -DHETADAM_BLOCK=... from formats_render.c_defines). Concurrent processes build it once:
the build holds a file lock and publishes the library by an atomic rename.

The kernel updates p, ms and ex in place, so `HlsCsimKernel` keeps two sets of
packed buffers (the regmap.py memory layout): a run copies the committed set
into the pending one and runs the kernel there; commit swaps the sets.

Speed. A step is one ctypes call (the GIL released) into sim/hls/parallel.cpp,
linked into the library: it runs the kernel on block-aligned pieces of CHUNK
elements on every core the process may use, bit-exact with one run over the
whole range. The build adds `-march=native` where the compiler takes it and
-DHETADAM_HOST_ISQRT (an exact double-precision square root in place of the
26-stage digit recurrence, which took ~85% of a CPU's time). docs/hls.md has
the profile and the figures.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import regmap
from ..filelock import file_lock
from ..formats_render import c_defines
from ..numerics import DEFAULT, FixedFormat, FixedState
from ..numerics.convert import pack_ex, pack_ms, unpack_ex, unpack_ms
from ..numerics.formats import hardware_problem, n_blocks
from ..numerics.scalars import StepScalars
from .base import Availability, Backend, BackendError, BackendUnavailable, FixedKernel, FixedShard, Shard

ROOT = Path(__file__).resolve().parents[3]
HLS_DIR = ROOT / "hw" / "hls"
SOURCES = ("hetadam_adam.cpp", "hetadam_adam.h", "hetadam_fifo.h", "adam_regmap.h", "adam_format.h")
"""Every file of hw/hls the library is built from (the first is the one compiled)."""
PARALLEL = ROOT / "sim" / "hls" / "parallel.cpp"
"""The kernel over many pieces on many threads: the library's entry point (hetadam_adam_parallel)."""
CXXFLAGS = (
    "-std=c++17", "-O3", "-fPIC", "-shared", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-label",
    "-fno-math-errno", "-DHETADAM_HOST_ISQRT",
)  # fmt: skip
"""-DHETADAM_HOST_ISQRT: the square root of step 4 as a corrected double sqrt, exact (see isqrt52 in
hetadam_adam.cpp) and 3x faster on a CPU than the 26-stage recurrence synthesis (and `make csim`) keep;
-fno-math-errno lets that sqrt be one instruction.
`-march=native` is added where the compiler takes it (native_flags)."""
COMPILERS = ("g++", "c++", "clang++")
CHUNK = 2048
"""Elements per run of the kernel (rounded down to whole blocks): C simulation's FIFOs hold one
run, and at this size they stay in the cache (1.8x faster than 64Ki-element runs, measured)."""


class BuildError(RuntimeError):
    """The C++ compiler failed on the HLS sources."""


def find_compiler() -> list[str] | None:
    """The host C++ compiler as a command line: `$CXX` when set, else the first
    of COMPILERS on PATH. ValueError when $CXX is not a valid command line."""
    cxx = os.environ.get("CXX")
    if cxx:
        try:
            argv = shlex.split(cxx)
        except ValueError as exc:
            raise ValueError(f"$CXX={cxx!r} is not a valid command line ({exc}): fix its quoting") from exc
        path = shutil.which(argv[0]) if argv else None
        return [path, *argv[1:]] if path else None
    for name in COMPILERS:
        path = shutil.which(name)
        if path:
            return [path]
    return None


def cache_dir() -> Path:
    """build/hls-csim/ in the source tree when writable, else ~/.cache/hetadam/hls-csim/."""
    build = ROOT / "build"
    if os.access(build if build.exists() else ROOT, os.W_OK):
        return build / "hls-csim"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hetadam" / "hls-csim"


@functools.cache
def native_flags(compiler: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """(("-march=native",), what it means here: the compiler's predefined macros with it) when
    `compiler` takes the flag, else ((), ""). The meaning is part of the build key, so a cache
    shared by machines of different CPUs holds a library for each, never one another cannot run."""
    cmd = [*compiler, "-march=native", "-x", "c++", "-E", "-dM", "-"]
    probe = subprocess.run(cmd, input="", capture_output=True, text=True, check=False)
    return (("-march=native",), probe.stdout) if probe.returncode == 0 else ((), "")


def _build_key(compiler: list[str], defines: list[str]) -> str:
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, check=False).stdout
    native, target = native_flags(tuple(compiler))
    digest = hashlib.sha256()
    for part in (*compiler, version, *CXXFLAGS, *native, target, *defines):
        digest.update(part.encode() + b"\0")
    for path in (*(HLS_DIR / name for name in SOURCES), PARALLEL):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build_library(compiler: list[str] | None = None, directory: Path | None = None, fmt: FixedFormat = DEFAULT) -> Path:
    """The shared library of the kernel for `fmt`'s widths, compiled unless a cached build of the same
    sources and widths exists."""
    compiler = compiler or find_compiler()
    if compiler is None:
        raise BuildError("no C++ compiler found ($CXX, " + ", ".join(COMPILERS) + ")")
    directory = directory or cache_dir()
    defines = c_defines(fmt)
    library = directory / f"hetadam_adam-{_build_key(compiler, defines)}.so"
    if library.exists():
        return library
    directory.mkdir(parents=True, exist_ok=True)
    with file_lock(directory / ".lock"):
        if library.exists():  # built by another process while this one waited
            return library
        partial = directory / f".{library.name}.{os.getpid()}.tmp"
        native, _ = native_flags(tuple(compiler))
        sources = [str(HLS_DIR / SOURCES[0]), str(PARALLEL)]
        cmd = [*compiler, *CXXFLAGS, *native, *defines, "-pthread", f"-I{HLS_DIR}", *sources, "-o", str(partial)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not partial.exists():
            partial.unlink(missing_ok=True)
            why = f"exit status {done.returncode}" if done.returncode else "no library written"
            raise BuildError(f"{shlex.join(cmd)} failed ({why}):\n{done.stderr}")
        os.replace(partial, library)
    return library


@functools.cache
def build_problem(compiler: tuple[str, ...]) -> str | None:
    """Why `compiler` cannot build and load the kernel library (the first error
    line of its output), or None when it can. Tried once per compiler and
    process; a library that builds is cached on disk, so the next try is a lookup."""
    try:
        ctypes.CDLL(str(build_library(list(compiler))))
    except (BuildError, OSError) as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]
        return (errors or lines or [str(exc).splitlines()[0]])[0]
    return None


def load_kernel(fmt: FixedFormat = DEFAULT) -> Callable[..., int]:
    """`hetadam_adam_parallel` (sim/hls/parallel.cpp) for `fmt`'s widths from the (built on first
    use) shared library, with its C signature: the scalars, p, g, ms, ex, chunk, threads; it
    returns sat_count. A wrong dtype or a strided array is refused at the call."""
    return _load_kernel(replace(fmt, p_frac=DEFAULT.p_frac))  # the kernel never sees p_frac


@functools.cache
def _load_kernel(fmt: FixedFormat) -> Callable[..., int]:
    fn = ctypes.CDLL(str(build_library(fmt=fmt))).hetadam_adam_parallel
    u32 = ctypes.c_uint32
    scalars = [ctypes.c_int32 if name == "eps_e" else u32 for name in regmap.SCALARS]
    arrays = [
        np.ctypeslib.ndpointer(dtype, flags="C_CONTIGUOUS") for dtype in (np.int32, np.int16, np.uint32, np.uint32)
    ]
    fn.argtypes = [*scalars, *arrays, u32, u32]  # p, g, ms, ex; chunk, threads
    fn.restype = u32
    return fn


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Buffers:
    """One set of the kernel's in-place arrays, packed as in the register map's memory layout."""

    def __init__(self, n: int, nb: int) -> None:
        self.p = np.zeros(n, np.int32)
        self.ms = np.zeros(n, np.uint32)
        self.ex = np.zeros(nb, np.uint32)

    def pack(self, state: FixedState) -> None:
        self.p[:] = state.P
        self.ms[:] = pack_ms(state.M, state.S)
        self.ex[:] = pack_ex(np.zeros_like(state.em), state.em, state.es)

    def unpack(self) -> FixedState:
        M, S = unpack_ms(self.ms)
        _, em, es = unpack_ex(self.ex)
        return FixedState(P=self.p.copy(), M=M, em=em, S=S, es=es)


class HlsCsimKernel(FixedKernel):
    """The HLS kernel over two buffer sets: `run` writes the pending set, `commit` swaps."""

    def __init__(self, n: int, fmt: FixedFormat = DEFAULT) -> None:
        problem = hardware_problem(fmt)
        if problem is not None:
            raise ValueError(f"the HLS kernel cannot be built for the format {fmt.name}: {problem}")
        self.n = n
        self.fmt = fmt
        try:
            self.kernel = load_kernel(fmt)
        except (BuildError, OSError) as exc:
            raise BackendError(f"backend 'hls-csim' could not build the HLS kernel for {fmt.name}: {exc}") from exc
        nb = n_blocks(n, fmt.block)
        self.sets = (_Buffers(n, nb), _Buffers(n, nb))
        self.current = 0
        self.has_pending = False

    @property
    def _committed(self) -> _Buffers:
        return self.sets[self.current]

    @property
    def _pending(self) -> _Buffers:
        return self.sets[1 - self.current]

    def upload(self, state: FixedState) -> None:
        self._committed.pack(state)
        self.has_pending = False

    def download(self) -> FixedState:
        return self._committed.unpack()

    def run(self, G: np.ndarray, eg: np.ndarray, sc: StepScalars, idx0: int) -> int:
        old, new = self._committed, self._pending
        np.copyto(new.p, old.p)
        np.copyto(new.ms, old.ms)
        np.bitwise_or(old.ex & np.uint32(0xFFFFFF00), eg.astype(np.int8).view(np.uint8), out=new.ex)
        G = np.ascontiguousarray(G, np.int16)
        values = {**sc.as_dict(), "n": self.n, "idx0": idx0}
        scalars = [values[name] for name in regmap.SCALARS]
        sat = self.kernel(*scalars, new.p, G, new.ms, new.ex, CHUNK, usable_cores())
        self.has_pending = True
        return int(sat)

    def stage(self, state: FixedState) -> None:
        self._pending.pack(state)
        self.has_pending = True

    def commit(self) -> None:
        if self.has_pending:
            self.current = 1 - self.current
            self.has_pending = False

    def discard(self) -> None:
        self.has_pending = False

    def params(self) -> np.ndarray:
        return self._committed.p

    def pending_params(self) -> np.ndarray:
        return self._pending.p


class HlsCsimBackend(Backend):
    """The HLS C++ kernel in C simulation, in-process (see the module docstring)."""

    name = "hls-csim"
    numerics = ("fixed",)

    def __init__(self) -> None:
        try:
            load_kernel()
        except (BuildError, OSError) as exc:  # OSError: the library does not load
            raise BackendUnavailable(f"backend {self.name!r} could not build the HLS kernel: {exc}") from exc

    @classmethod
    def availability(cls) -> Availability:
        if not all((HLS_DIR / name).is_file() for name in SOURCES):
            return Availability(
                False,
                f"the HLS sources are not in {HLS_DIR}",
                "install hetadam from its source tree: pip install -e .",
            )
        try:
            compiler = find_compiler()
        except ValueError as exc:
            return Availability(False, str(exc), "Unset $CXX to use g++ instead")
        if compiler is None:
            return Availability(
                False, "no C++ compiler found ($CXX, " + ", ".join(COMPILERS) + ")", "install g++: apt-get install g++"
            )
        problem = build_problem(tuple(compiler))
        if problem is not None:
            return Availability(
                False,
                f"{shlex.join(compiler)} cannot build the HLS kernel: {problem}",
                "Set $CXX to a working C++17 compiler, or install g++: apt-get install g++",
            )
        return Availability(True)

    def create_shard(self, start: int, n: int, numerics: str, fmt: FixedFormat) -> Shard:
        if numerics != "fixed":
            raise ValueError(f"backend {self.name!r} runs only the 'fixed' numerics, not {numerics!r}")
        return FixedShard(start, n, HlsCsimKernel(n, fmt), fmt)
