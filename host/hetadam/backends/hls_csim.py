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
from concurrent.futures import ThreadPoolExecutor
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
"""Every file the library is built from (the first is the one compiled)."""
CXXFLAGS = ("-std=c++17", "-O3", "-fPIC", "-shared", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-label")
COMPILERS = ("g++", "c++", "clang++")
CHUNK = 1 << 16
"""Elements per kernel call (a multiple of the block size): calls on chunks run
on all cores, and C simulation's FIFOs hold one chunk."""


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


def _build_key(compiler: list[str], defines: list[str]) -> str:
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, check=False).stdout
    digest = hashlib.sha256()
    for part in (*compiler, version, *CXXFLAGS, *defines):
        digest.update(part.encode() + b"\0")
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (HLS_DIR / name).read_bytes())
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
        cmd = [*compiler, *CXXFLAGS, *defines, f"-I{HLS_DIR}", str(HLS_DIR / SOURCES[0]), "-o", str(partial)]
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


def load_kernel(fmt: FixedFormat = DEFAULT) -> Callable[..., None]:
    """`hetadam_adam` for `fmt`'s widths from the (built on first use) shared library, with its C signature."""
    return _load_kernel(replace(fmt, p_frac=DEFAULT.p_frac))  # the kernel never sees p_frac


@functools.cache
def _load_kernel(fmt: FixedFormat) -> Callable[..., None]:
    fn = getattr(ctypes.CDLL(str(build_library(fmt=fmt))), regmap.KERNEL_NAME)
    u32, ptr = ctypes.c_uint32, ctypes.c_void_p
    scalars = [ctypes.c_int32 if name == "eps_e" else u32 for name in regmap.SCALARS]
    fn.argtypes = [*scalars, ctypes.POINTER(u32), ptr, ptr, ptr, ptr]  # sat_count, p, g, ms, ex
    fn.restype = None
    return fn


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
        self.workers: ThreadPoolExecutor | None = None

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
        registers = sc.as_dict()
        B = self.fmt.block

        def call(lo: int) -> int:
            sat = ctypes.c_uint32(0)
            values = {**registers, "n": min(CHUNK, self.n - lo), "idx0": idx0 + lo}
            self.kernel(
                *(values[name] for name in regmap.SCALARS),
                ctypes.byref(sat),
                new.p.ctypes.data + 4 * lo,
                G.ctypes.data + 2 * lo,
                new.ms.ctypes.data + 4 * lo,
                new.ex.ctypes.data + 4 * (lo // B),
            )
            return sat.value

        starts = range(0, self.n, CHUNK)
        if len(starts) == 1:
            sat = call(0)
        else:
            if self.workers is None:
                self.workers = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
            sat = sum(self.workers.map(call, starts))
        self.has_pending = True
        return sat

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

    def close(self) -> None:
        if self.workers is not None:
            self.workers.shutdown()
            self.workers = None


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
