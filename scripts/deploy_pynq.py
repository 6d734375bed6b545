#!/usr/bin/env python3
"""Deploy hetadam to a PYNQ board: package, copy over SSH, smoke-test there.

    python scripts/deploy_pynq.py --board pynq-z2 --host xilinx@192.168.2.99

1. package: the overlay (hetadam.bit + hetadam.hwh from build/boards/<board>/,
   as `make bitstream` leaves them), the hetadam wheel (`pip wheel --no-deps`),
   the smoke test (scripts/board_smoke.py) and manifest.json with the SHA-256
   of every file, in build/deploy/<board>/hetadam-<board>/;
2. copy it to the board (rsync when both ends have it, else scp) into
   --remote-dir/hetadam-<board>/, or with --target DIR into DIR/hetadam-<board>/
   (no SSH at all). Only that folder is ever replaced: the board must be a
   plain name, the remote folder neither / nor ~, and a local destination must
   not overlap the package it copies;
3. run the smoke test there (it verifies the manifest first and refuses a
   corrupted package), optionally `pip install` the wheel (--install), and
   report the smoke test's JSON. With --board-check, run the first-run
   sequence instead (BOARD_CHECK: the smoke test polling, then waiting on the
   interrupt, then a short training through the driver), each stage a smoke
   test of its own, stopping at the first that fails;
4. with --serve (a board over ssh only), in named steps: `root` (sudo works
   without a password; a running service stops before the smoke test reloads
   the overlay), then after the smoke test and the install: `python` (the
   board's Python that now imports hetadam), `token` (made once on the board,
   mode 600, never printed; --new-token replaces it), `unit` (the systemd
   unit of hetadam/remote/systemd.py), `start` (daemon-reload, enable,
   restart), `ready` (the server answers the handshake from this host,
   through an ssh tunnel when it listens on the board's loopback), and the
   smoke test run here through the server; then it says where the server
   listens, where the token is and how to copy it here.
Exit status: the smoke test's (0 ok, 1 a mismatch or a kernel failure, 3
refused), 2 for a deployment error.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import ipaddress
import json
import posixpath
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hetadam.filelock import file_lock
from hetadam.kernels import BackendError
from hetadam.remote import systemd
from hetadam.remote.client import Link
from hetadam.remote.serve import parse_listen
from hetadam.remote.server import DEFAULT_PORT
from hetadam.remote.token import DEFAULT_FILE, TokenError, check_token

ROOT = Path(__file__).resolve().parents[1]
OVERLAY_FILES = ("hetadam.bit", "hetadam.hwh")
SMOKE = "board_smoke.py"
MANIFEST = "manifest.json"
PYNQ_PYTHON = f"sudo -E env {systemd.XRT} /usr/local/share/pynq-venv/bin/python3"
"""The Python that sees pynq on PYNQ 3.x images: pynq needs root for the PL, and
finds the board's device only with XILINX_XRT set, which a command over ssh lacks
(the images export it in login shells)."""
SUDO = "sudo -n"
"""How --serve runs a command as root on the board (-n: fail rather than ask for a password)."""
BOARD_TOKEN = "/etc/hetadam/token"
UNIT_DIR = "/etc/systemd/system"
BOARD_CHECK = (
    ("polling", ["--wait", "poll", "--driver-only"]),
    ("interrupts", ["--wait", "interrupt", "--driver-only"]),
    ("training", ["--driver-only", "--train", "30"]),
)
"""The first run on a new board (`make board-check`): the board_smoke.py arguments of each stage, in order."""


BOARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class DeployError(RuntimeError):
    pass


def package_name(board: str) -> str:
    """`hetadam-<board>`: the only folder a deployment replaces, here or on the board."""
    if not BOARD_NAME.fullmatch(board):
        raise DeployError(
            f"board {board!r} is not a plain name (letters, digits, '.', '_', '-', not starting with '.'; "
            "e.g. pynq-z2, zcu104, kv260)"
        )
    return f"hetadam-{board}"


def refuse_overlap(dest: Path, source: Path) -> None:
    """Refuse to replace `dest` with a copy of `source` when either lies in the other:
    removing dest first would delete the source (or copy a folder into itself)."""
    dest, source = dest.resolve(), source.resolve()
    if dest == source or dest.is_relative_to(source) or source.is_relative_to(dest):
        raise DeployError(f"refusing to replace {dest}: it overlaps {source}, which it is made from")


def replace_tree(dest: Path, source: Path) -> None:
    """Make `dest` (a folder named hetadam-<board>) a copy of `source`."""
    refuse_overlap(dest, source)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()  # a link is replaced, never followed
    elif dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest)


def remote_package_dir(remote_dir: str, name: str) -> str:
    """`<remote_dir>/<name>` on the board; refuses a remote_dir that is /, ~ or empty."""
    if not remote_dir.strip():
        raise DeployError("--remote-dir is empty: give a folder relative to the login's home, e.g. hetadam")
    if remote_dir.startswith("~"):
        raise DeployError(
            f"--remote-dir {remote_dir!r}: ~ is not expanded in the remote command; "
            "give the folder relative to the login's home (e.g. hetadam) or as an absolute path"
        )
    folder = posixpath.normpath(remote_dir)
    if folder == "/" or folder == "//":  # normpath keeps a leading "//"
        raise DeployError(f"--remote-dir {remote_dir!r} is the root folder: give a folder of its own, e.g. hetadam")
    return posixpath.join(folder, name)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_wheel(out: Path) -> Path:
    """The hetadam wheel of this tree, copied into `out`. setuptools builds in the
    tree (build/, host/hetadam.egg-info), so concurrent builds take turns."""
    with tempfile.TemporaryDirectory() as tmp, file_lock(ROOT / "build" / "wheel.lock"):
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp, str(ROOT)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("hetadam-*.whl"))
        if done.returncode or len(wheels) != 1:
            raise DeployError(f"pip wheel failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        return Path(shutil.copy2(wheels[0], out / wheels[0].name))


def package(board: str, overlay_dir: Path, out_dir: Path, wheel: Path | None = None) -> Path:
    """Assemble the package folder and its manifest; returns the folder."""
    missing = [name for name in OVERLAY_FILES if not (overlay_dir / name).is_file()]
    if missing:
        raise DeployError(
            f"no overlay in {overlay_dir} (missing {', '.join(missing)}): run `make bitstream BOARD={board}` first"
        )
    pkg = out_dir.resolve() / package_name(board)
    for source in (overlay_dir, ROOT, *([wheel] if wheel else [])):
        if source.resolve().is_relative_to(pkg):
            raise DeployError(f"refusing to replace {pkg}: {source}, which goes into the package, lies in it")
    shutil.rmtree(pkg, ignore_errors=True)
    (pkg / "overlay").mkdir(parents=True)
    for name in OVERLAY_FILES:
        shutil.copy2(overlay_dir / name, pkg / "overlay" / name)
    shutil.copy2(ROOT / "scripts" / SMOKE, pkg / SMOKE)
    whl = Path(shutil.copy2(wheel, pkg / wheel.name)) if wheel else build_wheel(pkg)
    files = {p.relative_to(pkg).as_posix(): sha256(p) for p in sorted(pkg.rglob("*")) if p.is_file()}
    version = whl.name.split("-")[1]
    manifest = {"board": board, "version": version, "wheel": whl.name, "files": files}
    (pkg / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return pkg


class Remote:
    """The board over SSH: `ssh` and `rsync`/`scp` with the same options."""

    def __init__(self, host: str, port: int | None, identity: Path | None, options: list[str]) -> None:
        self.host = host
        self.opts = ["-o", "BatchMode=yes"]
        for opt in options:
            self.opts += ["-o", opt]
        if identity:
            self.opts += ["-i", str(identity)]
        self.port = port

    def ssh_cmd(self) -> list[str]:
        return ["ssh", *self.opts, *(["-p", str(self.port)] if self.port else [])]

    def run(self, command: str, *, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.ssh_cmd(), self.host, command], capture_output=True, text=True, input=input)
        if check and done.returncode:
            raise DeployError(f"ssh {self.host} {command!r} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    @contextmanager
    def tunnel(self, host: str, port: int) -> Iterator[int]:
        """A port on this machine's loopback forwarded over ssh to host:port as the board sees it."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            local = s.getsockname()[1]
        target = f"[{host}]" if ":" in host else host
        forward = ["-N", "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:{target}:{port}"]
        proc = subprocess.Popen(
            [*self.ssh_cmd(), *forward, self.host], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise DeployError(f"ssh could not forward a port to {self.host}: {proc.stderr.read().strip()}")
                try:
                    socket.create_connection(("127.0.0.1", local), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise DeployError(f"ssh did not forward a port to {self.host} within 30 s") from None
                    time.sleep(0.1)
            yield local
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    def copy(self, pkg: Path, remote_dir: str) -> str:
        """Make remote_dir, the package's own folder (remote_package_dir), a copy of the package;
        returns the method used. Nothing outside remote_dir is removed."""
        if not posixpath.basename(remote_dir).startswith("hetadam-"):
            raise DeployError(f"refusing to replace {self.host}:{remote_dir}: not a package folder (hetadam-<board>)")
        q = shlex.quote(remote_dir)
        self.run(f"mkdir -p {q}")
        has_rsync = shutil.which("rsync") and self.run("command -v rsync", check=False).returncode == 0
        if has_rsync:
            cmd = ["rsync", "-a", "--delete", "-e", shlex.join(self.ssh_cmd()), f"{pkg}/", f"{self.host}:{remote_dir}/"]
        else:
            self.run(f"rm -rf -- {q} && mkdir -p -- {q}")
            cmd = ["scp", "-r", "-q", *self.opts, *(["-P", str(self.port)] if self.port else [])]
            cmd += [*(str(p) for p in sorted(pkg.iterdir())), f"{self.host}:{remote_dir}/"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise DeployError(f"{cmd[0]} to {self.host}:{remote_dir} failed ({done.returncode}): {done.stderr.strip()}")
        return cmd[0]


def smoke_command(python: str, where: str, smoke_args: list[str], install: bool, wheel: str) -> str:
    q = shlex.quote
    cmd = f"cd {q(where)} && {python} {SMOKE} --package . {shlex.join(smoke_args)}"
    if install:  # only a package that passed the smoke test is installed
        cmd += f" && {python} -m pip install --no-deps --force-reinstall -q {q(wheel)}"
    return cmd


def summary(report: dict) -> str:
    """One line on a smoke test's report: passed (with what), refused or FAILED (with why)."""
    if report.get("refused"):
        return report["refused"]
    facts = []
    if "driver" in report:
        d = report["driver"]
        facts.append(f"{d['runs']} kernel runs waited for by {report['wait']}, mismatched steps {d['mismatches']}")
    if "kernel" in report:
        k = report["kernel"]
        facts.append(f"{k['steps']} steps through the server at {report['remote']}, mismatched steps {k['mismatches']}")
    if "backend" in report:
        facts.append(f"backend shard against the cpu shard: mismatched steps {report['backend']['mismatches']}")
    if "train" in report:
        t = report["train"]
        facts.append(f"training loss {t['loss_first']:g} -> {t['loss_last']:g} in {t['steps']} steps")
    if report.get("error"):
        facts.append(report["error"])
    verdict = "passed" if report.get("ok") else "FAILED"
    return f"{verdict} ({'; '.join(facts)})" if facts else verdict


def parse_report(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return {}


def load_smoke():
    """scripts/board_smoke.py as a module: its checks also run on this host (--serve)."""
    spec = importlib.util.spec_from_file_location("board_smoke", Path(__file__).with_name(SMOKE))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return False


class Service:
    """--serve: `hetadam serve` as a systemd service on the board, in named steps
    (see the module docstring). Each step says what it did on stderr; a step that
    fails raises DeployError."""

    def __init__(self, remote: Remote, args: argparse.Namespace, folder: str) -> None:
        self.remote = remote
        self.python = args.python or PYNQ_PYTHON
        self.folder = folder
        self.listen = args.listen
        self.host, self.port = parse_listen(args.listen)
        self.token_file = args.token_file
        self.new_token = args.new_token
        self.unit_path = posixpath.join(args.unit_dir, systemd.UNIT)
        self.wait = args.serve_wait
        self.backend = "cpu" if args.transport == "fake" else "pynq"
        """The dry run serves the golden model, which the fake transport computes too."""

    def say(self, step: str, what: str) -> None:
        print(f"serve, {step}, on {self.remote.host}: {what}", file=sys.stderr)

    def sudo(self, command: str, **kwargs) -> subprocess.CompletedProcess:
        return self.remote.run(f"{SUDO} {command}", **kwargs)

    def root(self) -> None:
        done = self.sudo("true", check=False)
        if done.returncode:
            raise DeployError(
                f"--serve needs root on {self.remote.host} without a password ({SUDO}: {done.stderr.strip()}): "
                "give the login passwordless sudo, or log in as root"
            )
        stopped = self.sudo(f"systemctl stop {systemd.UNIT}", check=False).returncode == 0
        self.say("root", f"sudo works; {'stopped the running' if stopped else 'no'} {systemd.UNIT}")

    def interpreter(self) -> str:
        """The absolute path of the board's Python that imports the installed hetadam."""
        probe = shlex.quote("import sys, hetadam.remote.serve; print(sys.executable)")
        done = self.remote.run(f"{self.python} -c {probe}", check=False)
        path = done.stdout.strip()
        if done.returncode or not path.startswith("/"):
            raise DeployError(f"the board's Python ({self.python}) does not import hetadam: {done.stderr.strip()}")
        self.say("python", path)
        return path

    def token(self, python: str) -> bytes:
        """The service's token (made unless it exists and --new-token is not given), read over ssh."""
        q = shlex.quote(self.token_file)
        exists = self.sudo(f"test -e {q}", check=False).returncode == 0
        if exists and self.new_token:
            self.sudo(f"rm -f -- {q}")
        if not exists or self.new_token:
            self.sudo(f"{shlex.quote(python)} -m hetadam.remote --make-token {q}")
        try:
            token = check_token(self.sudo(f"cat -- {q}").stdout, f"{self.remote.host}:{self.token_file}")
        except TokenError as exc:
            raise DeployError(f"{exc} (or deploy with --new-token)") from None
        made = "replaced" if exists and self.new_token else "kept" if exists else "made"
        self.say("token", f"{made} {self.token_file} (mode 600, owned by root)")
        return token

    def unit(self, python: str) -> None:
        bitfile = None
        if self.backend == "pynq":
            folder = self.remote.run(f"cd {shlex.quote(self.folder)} && pwd -P").stdout.strip()
            bitfile = posixpath.join(folder, "overlay", "hetadam.bit")
        try:
            command = systemd.exec_start(python, self.backend, self.listen, self.token_file, bitfile)
        except ValueError as exc:
            raise DeployError(f"cannot write the service's unit: {exc}") from None
        directory, name = posixpath.split(self.unit_path)
        q, tmp = shlex.quote, shlex.quote(posixpath.join(directory, f".{name}.tmp"))
        write = f"umask 022 && mkdir -p {q(directory)} && cat > {tmp} && mv -f {tmp} {q(self.unit_path)}"
        self.sudo(f"sh -c {shlex.quote(write)}", input=systemd.unit_text(command, self.backend))
        self.say("unit", f"wrote {self.unit_path}: {' '.join(command)}")

    def start(self) -> None:
        steps = ("daemon-reload", f"enable {systemd.UNIT}", f"restart {systemd.UNIT}")
        self.remote.run(" && ".join(f"{SUDO} systemctl {step}" for step in steps))
        self.say("start", f"{systemd.UNIT} enabled and (re)started")

    @contextmanager
    def reach(self) -> Iterator[tuple[str, int, str]]:
        """(host, port) at which this machine reaches the server, and how: through an
        ssh tunnel when it listens on the board's loopback, else directly."""
        if is_loopback(self.host):
            with self.remote.tunnel(self.host, self.port) as local:
                yield "127.0.0.1", local, "an ssh tunnel"
            return
        every = self.host in ("0.0.0.0", "::")  # every interface: the board's own address then
        yield (self.remote.host.rpartition("@")[2] if every else self.host), self.port, "directly"

    def ready(self, host: str, port: int, token: bytes) -> None:
        """Wait until the server answers the handshake, serving the backend the unit names."""
        deadline = time.monotonic() + self.wait
        while True:
            link = Link(f"tcp://{host}:{port}", host, port, token, timeout=5)
            try:
                served = link.open().backend
                if served != self.backend:
                    raise DeployError(
                        f"the server at {self.listen} on the board serves {served}, not {self.backend}: "
                        f"another `hetadam serve` holds the port; stop it, or deploy with another --listen"
                    )
                self.say("ready", f"the server answers and serves {served}")
                return
            except BackendError as exc:
                last = str(exc)
            finally:
                link.close()
            if time.monotonic() > deadline:
                state = self.sudo(f"systemctl is-active {systemd.UNIT}", check=False).stdout.strip()
                raise DeployError(
                    f"the service did not answer at {self.listen} on the board within {self.wait:g} s "
                    f"(systemctl is-active: {state or 'unknown'}; last try: {last}); "
                    f"see `sudo journalctl -u {systemd.UNIT} -n 50` there"
                )
            time.sleep(0.5)

    def announce(self) -> None:
        """Where the server listens, where the token is, how to copy it here and how to reach the server."""
        board = self.remote.host
        ssh = self.remote.ssh_cmd()
        copy = shlex.join([*ssh, board, f"{SUDO} cat {shlex.quote(self.token_file)}"])
        lines = [
            f"serving {self.backend} on {board} at {self.listen} ({systemd.UNIT}, started at boot)",
            f"the token is in {self.token_file} on the board (mode 600, root); copy it to this host with",
            f"    (umask 077 && mkdir -p {DEFAULT_FILE.parent} && {copy} > {DEFAULT_FILE})",
        ]
        if is_loopback(self.host):
            target = f"[{self.host}]" if ":" in self.host else self.host
            tunnel = shlex.join([*ssh, "-N", "-L", f"{self.port}:{target}:{self.port}", board])
            lines += [
                "it listens on the board's loopback only: reach it through ssh,",
                f"    {tunnel}",
                f'and use backend="tcp://127.0.0.1:{self.port}" (docs/remote.md says how to open it to a LAN)',
            ]
        else:
            lines.append(f"open TCP {self.port} on the board to the training hosts only (docs/remote.md)")
        print("\n".join(lines), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Package hetadam for a PYNQ board, copy it there, smoke-test it.")
    parser.add_argument("--board", required=True, help="pynq-z2, zcu104 or kv260")
    parser.add_argument("--host", help="user@address of the board (ssh)")
    parser.add_argument("--target", type=Path, help="deploy into this local folder instead of a board")
    parser.add_argument("--port", type=int, help="ssh port")
    parser.add_argument("--identity", type=Path, help="ssh private key")
    parser.add_argument("--ssh-option", action="append", default=[], help="an ssh -o option (repeatable)")
    parser.add_argument(
        "--remote-dir", default="hetadam", help="folder on the board (relative to the login's home) for the package"
    )
    parser.add_argument("--python", default=None, help=f"Python on the target (board default: {PYNQ_PYTHON!r})")
    parser.add_argument("--overlay-dir", type=Path, help="where hetadam.bit/.hwh are (default build/boards/BOARD)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "deploy", help="where packages are assembled")
    parser.add_argument("--wheel", type=Path, help="ship this wheel instead of building one")
    parser.add_argument("--transport", choices=("pynq", "fake"), default="pynq", help="fake: a dry run without a board")
    parser.add_argument("--install", action="store_true", help="pip install the wheel after the smoke test")
    parser.add_argument("--package-only", action="store_true", help="stop after packaging")
    parser.add_argument("--from-package", type=Path, help="deploy this package folder as it is (no packaging)")
    parser.add_argument("--driver-only", action="store_true", help="smoke-test the driver only, not the backend too")
    parser.add_argument(
        "--board-check", action="store_true",
        help="the first-run sequence: the smoke test polling, then on the interrupt, then a short training",
    )  # fmt: skip
    serve = parser.add_argument_group("--serve: hetadam serve as a service on the board (docs/remote.md)")
    serve.add_argument(
        "--serve", action="store_true",
        help="install the wheel and a systemd service running `hetadam serve --backend pynq` with a token made "
        "on the board, then run the smoke test through it from this host",
    )  # fmt: skip
    serve.add_argument(
        "--listen", default=f"127.0.0.1:{DEFAULT_PORT}",
        help=f"where the service listens on the board (default 127.0.0.1:{DEFAULT_PORT}: its loopback only, "
        "reached through ssh; 0.0.0.0:PORT opens it to every network the board is on)",
    )  # fmt: skip
    serve.add_argument("--token-file", default=BOARD_TOKEN, help=f"the service's token on the board ({BOARD_TOKEN})")
    serve.add_argument("--new-token", action="store_true", help="replace the board's token (old copies stop working)")
    serve.add_argument("--unit-dir", default=UNIT_DIR, help=f"where the unit is written on the board ({UNIT_DIR})")
    serve.add_argument("--serve-wait", type=float, default=60.0, help="seconds the service may take to answer")
    args = parser.parse_args(argv)
    if not args.package_only and bool(args.host) == bool(args.target):
        parser.error("give either --host (a board over ssh) or --target (a local folder)")
    if args.serve and not args.host:
        parser.error("--serve needs --host: the service runs on a board reached over ssh")
    if args.serve:
        try:
            parse_listen(args.listen)
        except ValueError as exc:
            parser.error(str(exc))

    service: Service | None = None
    try:
        name = package_name(args.board)
        if args.from_package:
            pkg = args.from_package.resolve()
        else:
            overlay_dir = args.overlay_dir or ROOT / "build" / "boards" / args.board
            pkg = package(args.board, overlay_dir, args.out / args.board, args.wheel)
            print(f"packaged {pkg}", file=sys.stderr)
        if args.package_only:
            return 0
        try:
            manifest = json.loads((pkg / MANIFEST).read_text())
            wheel, board = manifest["wheel"], manifest["board"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DeployError(f"{pkg} is not a package ({exc!r})") from exc
        if board != args.board:
            raise DeployError(f"{pkg} is a package for {board!r}, not for --board {args.board!r}")
        # the package lands in a folder of its own name, the only one replaced
        if args.target:
            folder = str(args.target.resolve() / name)
            replace_tree(Path(folder), pkg)
            python = args.python or shlex.quote(sys.executable)
            where = folder

            def run_there(command: str) -> subprocess.CompletedProcess:
                return subprocess.run(["sh", "-c", command], capture_output=True, text=True)

        else:
            folder = remote_package_dir(args.remote_dir, name)
            remote = Remote(args.host, args.port, args.identity, args.ssh_option)
            if args.serve:
                service = Service(remote, args, folder)
                service.root()
            method = remote.copy(pkg, folder)
            print(f"copied to {args.host}:{folder} with {method}", file=sys.stderr)
            python = args.python or PYNQ_PYTHON
            where = f"{args.host}:{folder}"

            def run_there(command: str) -> subprocess.CompletedProcess:
                return remote.run(command, check=False)

    except (DeployError, OSError) as exc:
        print(f"deploy failed: {exc}", file=sys.stderr)
        return 2
    stages = BOARD_CHECK if args.board_check else (("smoke test", ["--driver-only"] if args.driver_only else []),)
    for i, (stage, extra) in enumerate(stages, 1):
        install = (args.install or args.serve) and i == len(stages)  # only after every stage passed
        done = run_there(smoke_command(python, folder, ["--transport", args.transport, *extra], install, wheel))
        report = parse_report(done.stdout)
        label = f"board check {i}/{len(stages)}, {stage}," if args.board_check else stage
        if not report:
            print(f"the {label} at {where} gave no report ({done.returncode}): {done.stderr.strip()}", file=sys.stderr)
            return 2
        print(json.dumps(report))
        print(f"{label} at {where}: {summary(report)}", file=sys.stderr)
        if done.returncode:
            return done.returncode
    if args.board_check:
        print(f"board check at {where}: all {len(stages)} stages passed", file=sys.stderr)
    return run_service(service) if service else 0


def run_service(service: Service) -> int:
    """--serve once the package passed its smoke test and is installed: the steps
    after `root`, then the smoke test through the server from this host."""
    try:
        python = service.interpreter()
        token = service.token(python)
        service.unit(python)
        service.start()
        with service.reach() as (host, port, via):
            service.ready(host, port, token)
            report = load_smoke().check_remote(host, port, token, n=1000, chunk=384, steps=4, seed=1)
    except (DeployError, OSError) as exc:
        print(f"deploy failed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    print(f"smoke test through the server ({via}): {summary(report)}", file=sys.stderr)
    if not report["ok"]:
        return 1
    service.announce()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
