"""Build (once) and run the RTL under Verilator through cocotb_tools.runner.

The models come from hetadam.hdl.verilator (profile BENCH), the one Verilator
builder of the benches and the rtl-sim backend: one per configuration (top
parameters, waves) in build/verilator/bench-<key>/, the key a hash of the
sources in hw/rtl/sources.f order, the parameters, the flags and the tool
versions; a file lock makes concurrent pytest-xdist workers share one build.
Figures and golden vectors go to build/rtl/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from hetadam.hdl import verilator
from hetadam.hdl.verilator import verilator_environ, verilator_missing

ROOT = verilator.source_root()
BUILD = ROOT / "build" / "rtl"
SIM = ROOT / "sim"
TOP = verilator.TOP


def sources() -> list[Path]:
    """The synthesisable sources in compile order (hw/rtl/sources.f)."""
    return verilator.rtl_sources(ROOT)


def missing_tools() -> str | None:
    """Why the Verilator flow cannot run here, or None."""
    try:
        import cocotb  # noqa: F401
        import cocotb_tools.runner  # noqa: F401
        import cocotbext.axi  # noqa: F401
    except ImportError as exc:
        return f"cocotb / cocotbext-axi not installed ({exc.name}): pip install -e '.[sim]'"
    return verilator_missing()


def build(parameters: Mapping[str, int], waves: bool | None = None) -> Path:
    """The bench model of the top with these parameters (built once); returns its folder."""
    if waves is None:
        waves = os.environ.get("WAVES", "0") not in ("", "0")
    return verilator.build(verilator.BENCH, parameters, waves=waves, root=ROOT)


def lint(parameters: Mapping[str, int], top: str = TOP) -> subprocess.CompletedProcess[str]:
    """`verilator --lint-only -Wall` of the sources with these top parameters, as `make lint-rtl` runs it.

    Without -Wno-fatal a failed elaboration check (`$fatal`) fails the run."""
    with tempfile.TemporaryDirectory() as tmp:
        return verilator.run_verilator(["--lint-only", "-Wall"], parameters, top=top, root=ROOT, cwd=Path(tmp))


def port_widths(parameters: Mapping[str, int], top: str = TOP) -> dict[str, int]:
    """The top's ports and their widths in bits as Verilator elaborates them (`--json-only`) with these
    parameters; raises RuntimeError with Verilator's messages when elaboration fails."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tree.json"
        args = ["--json-only", "--json-only-output", str(out), "--Mdir", tmp]
        done = verilator.run_verilator(args, parameters, top=top, root=ROOT, cwd=Path(tmp))
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

    waves = bool(json.loads((build_dir / "config.json").read_text())["waves"])
    name = "-".join(testcases)[:80] or "all"
    test_dir = build_dir / f"run-{name}"
    results = test_dir / "results.xml"
    env = {"PYTHONPATH": os.pathsep.join([str(SIM), str(ROOT / "host"), os.environ.get("PYTHONPATH", "")])}
    env.update(extra_env or {})
    if seed is not None:
        env["COCOTB_RANDOM_SEED"] = str(seed)
    with verilator_environ():
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
