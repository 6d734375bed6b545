"""Deployment to a board (scripts/deploy_pynq.py + scripts/board_smoke.py), end to
end against this machine: into a local folder, and over SSH to an sshd on
loopback started for the test. The overlay is dummy bytes and the smoke test
runs dry (`--transport fake`: the golden-model double instead of a board).
What a deployment may delete (only `hetadam-<board>/`) is checked locally, over
a recorded ssh, and over the loopback sshd.

`--serve` runs against a stand-in board behind the same sshd: a `sudo` and a
`systemctl` of its own on the sessions' PATH (the latter records its calls and
runs the unit's ExecStart in the background), and a Python of its own into
which the wheel is installed."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hetadam.driver.fake import FakeTransport
from hetadam.filelock import file_lock
from hetadam.kernels import HostKernel
from hetadam.numerics import FixedFormat
from hetadam.remote.devices import HostSource
from hetadam.remote.server import Server

ROOT = Path(__file__).resolve().parents[1]
SSHD = Path("/usr/sbin/sshd")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


deploy = load_script("deploy_pynq")
smoke = load_script("board_smoke")


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("overlay")
    (d / "hetadam.bit").write_bytes(bytes(range(256)) * 64)
    (d / "hetadam.hwh").write_text("<?xml version='1.0'?><EDKSYSTEM/>\n")
    return d


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One wheel for the whole run: pytest-xdist workers share their run's folder and build it once, in turn."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    with file_lock(root / "wheel.lock"):
        built = sorted((root / "wheel").glob("hetadam-*.whl"))
        if built:
            return built[0]
        (root / "wheel").mkdir()
        return deploy.build_wheel(root / "wheel")


def flip_byte(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(data)


def test_package_lists_every_file_with_its_hash(overlay: Path, wheel: Path, tmp_path: Path) -> None:
    pkg = deploy.package("kv260", overlay, tmp_path, wheel)
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["board"] == "kv260" and manifest["wheel"] == wheel.name
    assert sorted(manifest["files"]) == sorted(
        ["board_smoke.py", wheel.name, "overlay/hetadam.bit", "overlay/hetadam.hwh"]
    )
    for rel, digest in manifest["files"].items():
        assert deploy.sha256(pkg / rel) == digest


def test_package_needs_the_overlay(tmp_path: Path, wheel: Path) -> None:
    with pytest.raises(deploy.DeployError, match="make bitstream BOARD=zcu104"):
        deploy.package("zcu104", tmp_path, tmp_path / "out", wheel)


def run_deploy(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict, str]:
    rc = deploy.main(list(args))
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return rc, json.loads(lines[-1]) if lines else {}, err


def shipped_and_gone(report: dict) -> bool:
    """The smoke test imported hetadam from the shipped wheel, unpacked into a folder it removed at exit."""
    site = Path(report["site"])
    return Path(report["hetadam"]) == site / "hetadam" and site.name.startswith("hetadam-smoke-") and not site.exists()


def test_local_target_dry_run_builds_the_wheel_and_checks_the_backend(
    overlay: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc, report, err = run_deploy(
        capsys, "--board", "pynq-z2", "--overlay-dir", str(overlay), "--out", str(tmp_path / "out"),
        "--target", str(tmp_path), "--transport", "fake",
    )  # fmt: skip
    target = tmp_path / "hetadam-pynq-z2"
    assert rc == 0, err
    assert report["ok"] and report["board"] == "pynq-z2" and report["transport"] == "fake"
    assert report["driver"]["mismatches"] == [] and report["driver"]["runs"] == 4 * 3
    assert report["backend"]["mismatches"] == []
    assert shipped_and_gone(report), "the smoke test must use the shipped wheel"
    pkg = tmp_path / "out" / "pynq-z2" / "hetadam-pynq-z2"
    assert file_tree(target) == file_tree(pkg), "the smoke test (root's, on a board) leaves the copy as it was"
    assert (tmp_path / "out" / "pynq-z2").is_dir(), "only the package's own folder in the target is replaced"
    assert "smoke test at" in err and "passed" in err


@pytest.mark.parametrize("damage", ["flip", "remove"])
def test_corrupted_package_is_refused(
    overlay: Path, wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
    damage: str,
) -> None:  # fmt: skip
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where the smoke test would unpack the wheel
    out = tmp_path / "out"
    assert deploy.main(["--board", "pynq-z2", "--overlay-dir", str(overlay), "--out", str(out), "--wheel", str(wheel),
                        "--package-only"]) == 0  # fmt: skip
    pkg = out / "pynq-z2" / "hetadam-pynq-z2"
    if damage == "flip":
        flip_byte(pkg / "overlay" / "hetadam.bit")
    else:
        (pkg / "overlay" / "hetadam.hwh").unlink()
    capsys.readouterr()
    rc, report, _ = run_deploy(
        capsys, "--board", "pynq-z2", "--from-package", str(pkg), "--target", str(tmp_path / "board"),
        "--transport", "fake",
    )  # fmt: skip
    assert rc == 3
    assert not report["ok"]
    expect = "overlay/hetadam.bit does not match" if damage == "flip" else "overlay/hetadam.hwh is missing"
    assert expect in report["refused"]
    assert not any((tmp_path / "tmp").iterdir()), "nothing may be unpacked when refused"


def test_smoke_refuses_a_tampered_manifest(overlay: Path, wheel: Path, tmp_path: Path) -> None:
    pkg = deploy.package("pynq-z2", overlay, tmp_path, wheel)
    flip_byte(pkg / "manifest.json", at=20)
    done = subprocess.run(
        [sys.executable, str(pkg / "board_smoke.py"), "--transport", "fake"], capture_output=True, text=True
    )
    assert done.returncode == 3
    assert "package refused" in json.loads(done.stdout)["refused"]


def edit_manifest(pkg: Path, edit: str, wheel: str) -> None:
    """Damage the package's manifest (and, for "empty files", its bitstream) as `edit` says."""
    path = pkg / "manifest.json"
    manifest = json.loads(path.read_text())
    files = manifest["files"]
    if edit == "not JSON":
        path.write_text("{")
        return
    if edit == "not an object":
        manifest = list(manifest)
    elif edit == "files a list":
        manifest["files"] = sorted(files)
    elif edit == "no wheel key":
        del manifest["wheel"]
    elif edit == "wheel outside":
        manifest["wheel"] = f"../{wheel}"
    elif edit == "no board":
        del manifest["board"]
    elif edit == "empty files":  # and a replaced bitstream, which nothing then checks
        manifest["files"] = {}
        (pkg / "overlay" / "hetadam.bit").write_bytes(b"another design")
    elif edit == "digest a number":
        files["overlay/hetadam.hwh"] = 5
    elif edit == "path outside":
        files["../manifest.json"] = "0" * 64
    else:
        del files[{"no bit": "overlay/hetadam.bit", "no hwh": "overlay/hetadam.hwh", "no wheel": wheel,
                   "no smoke script": "board_smoke.py"}[edit]]  # fmt: skip
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ("not JSON", "unreadable manifest.json"),
        ("not an object", "manifest.json is not a JSON object"),
        ("files a list", "'files' is not an object of file names and SHA-256 digests"),
        ("digest a number", "'files' is not an object of file names and SHA-256 digests"),
        ("no wheel key", "'wheel' is not the file name of a wheel (None)"),
        ("wheel outside", "'wheel' is not the file name of a wheel ('../hetadam-"),
        ("no board", "'board' is not a board name (None)"),
        ("empty files", "manifest.json lists no overlay/hetadam.bit"),
        ("no bit", "manifest.json lists no overlay/hetadam.bit"),
        ("no hwh", "manifest.json lists no overlay/hetadam.hwh"),
        ("no smoke script", "manifest.json lists no board_smoke.py"),
        ("no wheel", "manifest.json lists no hetadam-"),
        ("path outside", "manifest.json lists '../manifest.json', which is not a path inside the package"),
    ],
)
def test_smoke_refuses_a_malformed_or_incomplete_manifest_in_one_line(
    built: Path, wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
    edit: str, reason: str,
) -> None:  # fmt: skip
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(smoke.tempfile, "tempdir", str(tmp_path / "tmp"))
    edit_manifest(built, edit, wheel.name)
    rc = smoke.main(["--package", str(built), "--transport", "fake"])
    out, err = capsys.readouterr()
    assert rc == 3
    assert err == "", "no traceback"
    [line] = out.splitlines()
    refused = json.loads(line)["refused"]
    assert refused.startswith("package refused: ") and reason in refused
    assert not any((tmp_path / "tmp").iterdir()), "nothing may be unpacked when refused"


def test_smoke_refuses_a_wheel_that_does_not_match_its_hash(
    built: Path, wheel: Path, capsys: pytest.CaptureFixture
) -> None:
    flip_byte(built / wheel.name, at=1000)
    assert smoke.main(["--package", str(built), "--transport", "fake"]) == 3
    refused = json.loads(capsys.readouterr().out)["refused"]
    assert refused == f"package refused: {wheel.name} does not match its SHA-256 in the manifest"


# -- what a deployment may delete: only hetadam-<board>/ ------------------


def file_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("board", ["x/..", "../x", "..", ".", "", "a/b", "/tmp", "-rf", "pynq z2"])
def test_a_board_name_that_is_not_a_plain_name_is_refused(
    overlay: Path, wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture, board: str
) -> None:
    zone = tmp_path / "zone"  # anything the old code deleted stays in here
    (zone / "target").mkdir(parents=True)
    (zone / "keep.txt").write_text("the user's file")
    (zone / "target" / "keep.txt").write_text("the user's file")
    before = file_tree(tmp_path)
    rc = deploy.main([
        f"--board={board}", "--overlay-dir", str(overlay), "--out", str(zone / "out"), "--wheel", str(wheel),
        "--target", str(zone / "target"), "--transport", "fake", "--driver-only",
    ])  # fmt: skip
    assert rc == 2
    assert f"deploy failed: board {board!r} is not a plain name" in capsys.readouterr().err
    assert file_tree(tmp_path) == before, "nothing may be created or deleted"


@pytest.fixture
def built(overlay: Path, wheel: Path, tmp_path: Path) -> Path:
    """A package for pynq-z2, as `make deploy-package` leaves it."""
    return deploy.package("pynq-z2", overlay, tmp_path / "out" / "pynq-z2", wheel)


def test_from_package_dot_inside_the_package_replaces_only_its_own_folder(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    board = tmp_path / "board"
    (board / "hetadam-kv260").mkdir(parents=True)
    (board / "hetadam-kv260" / "manifest.json").write_text("another board's package")
    (board / "keep.txt").write_text("the user's file")
    monkeypatch.chdir(built)
    rc, report, err = run_deploy(
        capsys, "--board", "pynq-z2", "--from-package", ".", "--target", str(board), "--transport", "fake",
        "--driver-only",
    )  # fmt: skip
    assert rc == 0, err
    assert report["ok"] and Path(report["package"]) == board / "hetadam-pynq-z2"
    assert (board / "keep.txt").read_text() == "the user's file"
    assert (board / "hetadam-kv260" / "manifest.json").read_text() == "another board's package"


@pytest.mark.parametrize("where", ["parent", "package", "inside", "holds-source"])
def test_a_destination_overlapping_the_package_is_refused(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    source = built
    if where == "holds-source":  # the source lies in the folder the deployment would replace
        source = tmp_path / "board" / "hetadam-pynq-z2" / "incoming"
        shutil.copytree(built, source)
    target = {
        "parent": built.parent,  # target/hetadam-pynq-z2 is the package itself
        "package": built,
        "inside": built / "overlay",
        "holds-source": tmp_path / "board",
    }[where]
    before = file_tree(tmp_path)
    rc = deploy.main(["--board", "pynq-z2", "--from-package", str(source), "--target", str(target),
                      "--transport", "fake", "--driver-only"])  # fmt: skip
    assert rc == 2
    assert "deploy failed: refusing to replace" in capsys.readouterr().err
    assert file_tree(tmp_path) == before


def test_packaging_refuses_an_out_folder_that_holds_the_overlay(overlay: Path, wheel: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    inside = out / "hetadam-pynq-z2" / "from-vivado"
    shutil.copytree(overlay, inside)
    with pytest.raises(deploy.DeployError, match=r"refusing to replace .*: .*from-vivado, which goes into the package"):
        deploy.package("pynq-z2", inside, out, wheel)
    assert file_tree(inside) == file_tree(overlay)


def test_a_package_for_another_board_is_refused(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = deploy.main(["--board", "kv260", "--from-package", str(built), "--target", str(tmp_path / "board")])
    assert rc == 2
    assert "is a package for 'pynq-z2', not for --board 'kv260'" in capsys.readouterr().err
    assert not (tmp_path / "board").exists()


@pytest.mark.parametrize("remote_dir", ["/", "//", "/srv/..", "~", "~/hetadam", "", " "])
def test_a_remote_dir_of_root_or_home_is_refused_before_connecting(
    built: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, remote_dir: str
) -> None:
    monkeypatch.setattr(deploy, "subprocess", None)  # any command run would fail this test
    rc = deploy.main(["--board", "pynq-z2", "--from-package", str(built), "--host", "xilinx@board",
                      "--remote-dir", remote_dir])  # fmt: skip
    assert rc == 2
    expect = "--remote-dir is empty" if not remote_dir.strip() else f"--remote-dir {remote_dir!r}"
    assert f"deploy failed: {expect}" in capsys.readouterr().err


class RecordedSsh:
    """deploy_pynq's `subprocess` with every command recorded and none run: the
    board has no rsync; its smoke tests give `results` (exit status, report) in
    turn, success when none are left; the remote commands in `answers` give
    that (exit status, stdout, stderr)."""

    CompletedProcess = subprocess.CompletedProcess

    def __init__(
        self, results: list[tuple[int, dict]] | None = None, answers: dict[str, tuple[int, str, str]] | None = None
    ) -> None:
        self.commands: list[list[str]] = []
        self.inputs: list[object] = []
        self.results = list(results or [])
        self.answers = answers or {}

    def run(self, cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        self.commands.append(cmd)
        self.inputs.append(kwargs.get("input"))
        remote = cmd[-1] if cmd[0] == "ssh" else ""
        if remote in self.answers:
            return subprocess.CompletedProcess(cmd, *self.answers[remote])
        if remote == "command -v rsync":
            return subprocess.CompletedProcess(cmd, 1, "", "")
        if "board_smoke.py" in remote:
            rc, report = self.results.pop(0) if self.results else (0, {"ok": True})
            return subprocess.CompletedProcess(cmd, rc, json.dumps(report) + "\n", "")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def remote(self, word: str) -> list[str]:
        """The remote commands that contain `word`."""
        return [cmd[-1] for cmd in self.commands if cmd[0] == "ssh" and word in cmd[-1]]

    def removed(self) -> list[str]:
        """The operands of every rm the ssh commands ran."""
        out = []
        for command in self.remote("rm "):
            words = shlex.split(command)
            for i, word in enumerate(words):
                if word == "rm":
                    out += [w for w in words[i + 1 : words.index("&&", i)] if not w.startswith("-")]
        return out


@pytest.mark.parametrize(("remote_dir", "expect"), [("hetadam", "hetadam"), ("/srv/boards/", "/srv/boards")])
def test_over_scp_only_the_package_folder_is_removed(
    built: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, remote_dir: str, expect: str
) -> None:
    ssh = RecordedSsh()
    monkeypatch.setattr(deploy, "subprocess", ssh)
    monkeypatch.setattr(deploy.shutil, "which", lambda name: None)
    monkeypatch.chdir(built)
    rc = deploy.main(
        ["--board", "pynq-z2", "--from-package", ".", "--host", "xilinx@board", "--remote-dir", remote_dir]
    )
    assert rc == 0, capsys.readouterr().err
    assert ssh.removed() == [f"{expect}/hetadam-pynq-z2"]
    scp = next(cmd for cmd in ssh.commands if cmd[0] == "scp")
    assert scp[-1] == f"xilinx@board:{expect}/hetadam-pynq-z2/"


# -- make board-check: the first run on a new board -----------------------


def test_board_check_dry_run_polls_then_waits_on_the_interrupt_then_trains(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = deploy.main(["--board", "pynq-z2", "--from-package", str(built), "--target", str(tmp_path / "board"),
                      "--transport", "fake", "--board-check"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    poll, irq, train = (json.loads(line) for line in out.splitlines())
    assert (poll["wait"], irq["wait"], train["wait"]) == ("poll", "interrupt", "interrupt")
    assert all(r["ok"] and r["driver"]["mismatches"] == [] and "backend" not in r for r in (poll, irq, train))
    assert "train" not in poll and "train" not in irq
    assert train["train"]["mismatches"] == [] and train["train"]["steps"] == 30
    assert train["train"]["loss_last"] < train["train"]["loss_first"] / 10
    for i, stage in enumerate(["polling", "interrupts", "training"], 1):
        assert f"board check {i}/3, {stage}, at {tmp_path / 'board' / 'hetadam-pynq-z2'}: passed (" in err
    assert "all 3 stages passed" in err


def test_board_check_stops_at_the_first_stage_that_fails(
    built: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_irq = {"ok": False, "wait": "interrupt", "error": "no interrupt from the kernel within 10 s"}
    ssh = RecordedSsh([(0, {"ok": True}), (1, no_irq)])
    monkeypatch.setattr(deploy, "subprocess", ssh)
    monkeypatch.setattr(deploy.shutil, "which", lambda name: None)
    rc = deploy.main(["--board", "pynq-z2", "--from-package", str(built), "--host", "xilinx@board", "--board-check",
                      "--install"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    smoke_runs = ssh.remote("board_smoke.py")
    assert [("--wait poll" in c, "--wait interrupt" in c) for c in smoke_runs] == [(True, False), (False, True)]
    assert not ssh.remote("pip install"), "a package that failed a stage is not installed"
    assert "board check 2/3, interrupts, at xilinx@board:hetadam/hetadam-pynq-z2: FAILED (no interrupt" in err
    assert "all 3 stages passed" not in err


class LastElementStuck(FakeTransport):
    """A kernel double that leaves the last parameter of each run as it was (a write-back one beat short)."""

    def _compute(self, args: dict[str, int]) -> tuple[dict[str, np.ndarray], int]:
        out, sat = super()._compute(args)
        out["p"][-1] = self._load(args["p"], args["n"], np.int32)[-1]
        return out, sat


@pytest.mark.parametrize("wait", ["poll", "interrupt"])
def test_the_training_stage_needs_every_step_bit_exact_and_the_loss_to_fall(wait: str) -> None:
    good = smoke.check_training(smoke.make_driver(FakeTransport(), wait), 30, seed=1)
    assert good["ok"] and good["mismatches"] == []
    assert good["loss_last"] < good["loss_first"] / 10
    bad = smoke.check_training(smoke.make_driver(LastElementStuck(), wait), 30, seed=1)
    assert not bad["ok"] and bad["mismatches"] == list(range(1, 31))


class LastElementStuckSource(HostSource):
    """A server's kernels that leave the last parameter of each chunk as it was."""

    def new(self, n: int, fmt: FixedFormat) -> HostKernel:
        kernel = HostKernel(n, fmt)
        run = kernel.run

        def stuck(*args: object) -> int:
            sat = run(*args)
            kernel.pending.P[-1] = kernel.state.P[-1]
            return sat

        kernel.run = stuck
        return kernel


@pytest.mark.parametrize("source", [HostSource, LastElementStuckSource])
def test_the_smoke_test_through_a_server_needs_every_step_bit_exact(source: type[HostSource]) -> None:
    token = b"s" * 32
    with Server(source(), token, port=0).start() as server:
        report = smoke.check_remote(*server.address, token, n=1000, chunk=384, steps=4, seed=1)
    good = source is HostSource
    assert report["ok"] is good and "error" not in report
    assert report["kernel"]["mismatches"] == ([] if good else [1, 2, 3, 4])
    assert report["backend"]["mismatches"] == ([] if good else [1, 2, 3, 4])


def test_the_smoke_test_through_a_server_reports_a_server_that_is_not_there() -> None:
    report = smoke.check_remote("127.0.0.1", free_port(), b"s" * 32, n=1000, chunk=384, steps=4, seed=1)
    assert not report["ok"] and "kernel" not in report
    assert "cannot connect" in report["error"] and "Is `hetadam serve` running there" in report["error"]


# -- over SSH -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAKE_SUDO = """#!/bin/sh
printf '%s\\n' "$*" >> "$(dirname "$0")/../sudo.log"
while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
exec "$@"
"""
"""The stand-in board's sudo: records its command line, drops its options and runs the command."""

FAKE_SYSTEMCTL = textwrap.dedent(
    """
    import os, shlex, signal, subprocess, sys, time
    from pathlib import Path

    BOARD = Path(__file__).resolve().parents[1]
    PID = BOARD / "server.pid"
    args = sys.argv[1:]
    with open(BOARD / "systemctl.log", "a") as log:
        log.write(shlex.join(args) + "\\n")
    verb, units = args[0], [a for a in args[1:] if not a.startswith("-")]

    def running():
        try:
            pid = int(PID.read_text())
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError):
            return None
        return None if state == "Z" else pid

    def stop():
        pid = running()
        if pid:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if running() is None:
                    break
                time.sleep(0.1)
        PID.unlink(missing_ok=True)

    def start(unit):
        env, command = dict(os.environ), None
        for line in (BOARD / "units" / unit).read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "Environment":
                name, _, setting = value.partition("=")
                env[name] = setting
            elif key == "ExecStart":
                command = shlex.split(value)
        with open(BOARD / "server.log", "ab") as out:
            proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        PID.write_text(str(proc.pid))

    if verb == "restart" or (verb == "enable" and "--now" in args):
        stop()
        start(units[0])
    elif verb == "stop":
        if not (BOARD / "units" / units[0]).exists():
            sys.exit(f"Failed to stop {units[0]}: Unit {units[0]} not loaded.")
        stop()
    elif verb == "is-active":
        print("active" if running() else "failed")
        sys.exit(0 if running() else 3)
    elif verb not in ("daemon-reload", "enable"):
        sys.exit(f"the stand-in systemctl does not do {verb}")
    """
)
"""The stand-in board's systemctl: records its calls; restart runs the unit's ExecStart
(with its Environment) in the background, stop ends it, is-active says whether it runs."""


def make_board(d: Path) -> Path:
    """The stand-in board's folder: bin/ (sudo, systemctl), units/, and the logs they write."""
    board = d / "board"
    (board / "bin").mkdir(parents=True)
    (board / "units").mkdir()
    (board / "bin" / "sudo").write_text(FAKE_SUDO)
    (board / "bin" / "systemctl").write_text(f"#!{sys.executable}\n{FAKE_SYSTEMCTL}")
    for name in ("sudo", "systemctl"):
        (board / "bin" / name).chmod(0o755)
    return board


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """An sshd on 127.0.0.1 with a throwaway host key, accepting a throwaway client key;
    its sessions find the stand-in board's sudo and systemctl first on PATH."""
    if not SSHD.exists() or shutil.which("ssh-keygen") is None:
        pytest.skip(reason="openssh-server is not installed (apt-get install openssh-server): no sshd to deploy to")
    d = tmp_path_factory.mktemp("sshd")
    board = make_board(d)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = free_port()
    helpers = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
    sftp = next((p for p in helpers if Path(p).exists()), None)
    if sftp is None:
        pytest.skip(reason="openssh-server has no sftp-server here (scp needs it)")
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        f"Subsystem sftp {sftp}\nSetEnv PATH={board / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            pytest.skip(reason=f"sshd did not start here: {proc.stderr.read().strip()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.skip(reason="sshd did not listen within 10 s")
            time.sleep(0.1)
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    options = [
        "--port", str(port), "--identity", str(d / "client_key"),
        "--ssh-option", f"UserKnownHostsFile={d / 'known_hosts'}", "--ssh-option", "StrictHostKeyChecking=yes",
        "--python", sys.executable,
    ]  # fmt: skip
    try:
        yield {
            "host": f"{user}@127.0.0.1",
            "options": options,
            "args": ["--host", f"{user}@127.0.0.1", *options],
            "board": board,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("copier", ["rsync", "scp"])
def test_deploy_over_ssh_dry_run(
    sshd: dict, overlay: Path, wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch, copier: str,
) -> None:  # fmt: skip
    if copier == "rsync" and shutil.which("rsync") is None:
        pytest.skip(reason="rsync is not installed (apt-get install rsync): the scp variant still runs")
    if copier == "scp":
        monkeypatch.setattr(deploy.shutil, "which", lambda name: None if name == "rsync" else shutil.which(name))
    remote = tmp_path / "remote"
    (remote / "hetadam-kv260").mkdir(parents=True)
    (remote / "hetadam-kv260" / "manifest.json").write_text("another board's package")
    (remote / "keep.txt").write_text("the user's file")
    rc, report, err = run_deploy(
        capsys, *sshd["args"], "--board", "zcu104", "--overlay-dir", str(overlay), "--out", str(tmp_path / "out"),
        "--wheel", str(wheel), "--remote-dir", str(remote), "--transport", "fake", "--driver-only",
    )  # fmt: skip
    assert rc == 0, err
    assert f"with {copier}" in err
    assert report["ok"] and report["board"] == "zcu104" and "backend" not in report
    assert shipped_and_gone(report)
    assert file_tree(remote / "hetadam-zcu104") == file_tree(tmp_path / "out" / "zcu104" / "hetadam-zcu104")
    assert (remote / "keep.txt").read_text() == "the user's file", "only the package's own folder is replaced"
    assert (remote / "hetadam-kv260" / "manifest.json").read_text() == "another board's package"


def test_corrupted_package_refused_over_ssh(
    sshd: dict, overlay: Path, wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pkg = deploy.package("kv260", overlay, tmp_path / "out", wheel)
    flip_byte(pkg / wheel.name, at=1000)
    remote = tmp_path / "remote"
    rc, report, err = run_deploy(
        capsys, *sshd["args"], "--board", "kv260", "--from-package", str(pkg), "--remote-dir", str(remote),
        "--transport", "fake", "--install",
    )  # fmt: skip
    assert rc == 3, err
    assert f"{wheel.name} does not match" in report["refused"]
    assert "refused" in err
    assert file_tree(remote / "hetadam-kv260") == file_tree(pkg), "nothing may be unpacked when refused"


def test_unreachable_board_is_a_deployment_error(
    overlay: Path, wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = deploy.main([
        "--board", "pynq-z2", "--overlay-dir", str(overlay), "--out", str(tmp_path), "--wheel", str(wheel),
        "--host", "nobody@127.0.0.1", "--port", str(free_port()), "--ssh-option", "ConnectTimeout=5",
    ])  # fmt: skip
    assert rc == 2
    assert "deploy failed: ssh nobody@127.0.0.1" in capsys.readouterr().err


# -- make board-check -------------------------------------------------------


def make(*args: str) -> subprocess.CompletedProcess:
    """make in the checkout, with this interpreter, never (re)installing the virtualenv."""
    if shutil.which("make") is None:
        pytest.skip(reason="make is not installed (apt-get install make)")
    cmd = ["make", "-C", str(ROOT), "--no-print-directory", "-o", ".venv/.installed", f"PY={sys.executable}", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under make test
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def test_make_board_check_needs_a_host() -> None:
    done = make("board-check", "BOARD=kv260", "HOST=")
    assert done.returncode != 0
    assert "HOST is required: make board-check BOARD=kv260 HOST=xilinx@<board address>" in done.stderr


def test_make_board_check_over_ssh_dry_run(sshd: dict, overlay: Path, wheel: Path, tmp_path: Path) -> None:
    deploy_args = [
        *sshd["options"], "--overlay-dir", str(overlay), "--out", str(tmp_path / "out"), "--wheel", str(wheel),
        "--remote-dir", str(tmp_path / "remote"), "--transport", "fake",
    ]  # fmt: skip
    done = make("board-check", "BOARD=zcu104", f"HOST={sshd['host']}", f"DEPLOY_ARGS={shlex.join(deploy_args)}")
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["wait"] for r in reports] == ["poll", "interrupt", "interrupt"]
    assert all(r["ok"] and r["board"] == "zcu104" for r in reports) and "train" in reports[2]
    where = f"{sshd['host']}:{tmp_path / 'remote' / 'hetadam-zcu104'}"
    assert f"board check 3/3, training, at {where}: passed (" in done.stderr
    assert f"board check at {where}: all 3 stages passed" in done.stderr


# -- --serve: hetadam serve as a service on the board -----------------------


@pytest.fixture(scope="module")
def board_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in board's Python: a virtualenv of its own (the wheel installs there, not
    into this one) with this one's NumPy and pip, and, as on a PYNQ-Z2, no torch or numba."""
    venv = tmp_path_factory.mktemp("board-python")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    [site] = venv.glob("lib/python*/site-packages")
    outer = Path(np.__file__).parents[1]
    for entry in outer.iterdir():
        if entry.name.split("-")[0].split(".")[0] in ("numpy", "pip"):
            (site / entry.name).symlink_to(entry)
    return venv / "bin" / "python"


@pytest.fixture
def board(sshd: dict, board_python: Path, tmp_path: Path) -> Iterator[dict]:
    """The stand-in board, fresh: its deploy options for --serve, and its files."""
    root: Path = sshd["board"]
    for name in ("sudo.log", "systemctl.log", "server.log", "server.pid"):
        (root / name).unlink(missing_ok=True)
    for unit in (root / "units").iterdir():
        unit.unlink()
    port = free_port()
    token = tmp_path / "etc" / "hetadam" / "token"
    args = [
        *sshd["args"], "--python", str(board_python), "--remote-dir", str(tmp_path / "remote"),
        "--unit-dir", str(root / "units"), "--token-file", str(token), "--transport", "fake", "--driver-only",
    ]  # fmt: skip
    try:
        yield {"args": args, "port": port, "token": token, "root": root, "python": board_python}
    finally:
        pid = root / "server.pid"
        if pid.exists():
            try:
                os.kill(int(pid.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass


def board_log(board: dict, name: str) -> list[str]:
    path = board["root"] / name
    return path.read_text().splitlines() if path.exists() else []


def test_deploy_serve_installs_a_service_with_a_private_token_and_steps_through_it(
    board: dict, overlay: Path, wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    port, token = board["port"], board["token"]
    rc = deploy.main([
        *board["args"], "--board", "pynq-z2", "--overlay-dir", str(overlay), "--out", str(tmp_path / "out"),
        "--wheel", str(wheel), "--serve", "--listen", f"127.0.0.1:{port}",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    board_report, remote = (json.loads(line) for line in out.splitlines())
    assert board_report["ok"] and board_report["driver"]["mismatches"] == []
    assert remote["ok"] and remote["remote"].startswith("tcp://127.0.0.1:")
    assert remote["kernel"]["mismatches"] == [] and remote["kernel"]["steps"] == 4
    assert remote["backend"]["mismatches"] == [], "a tcp:// shard steps as the cpu shard does"
    assert "smoke test through the server (an ssh tunnel): passed (4 steps through the server at tcp://" in err

    unit = (board["root"] / "units" / "hetadam-serve.service").read_text().splitlines()
    command = f"{board['python']} -m hetadam.remote --backend cpu --listen 127.0.0.1:{port} --token-file {token}"
    assert f"ExecStart={command}" in unit
    for line in ("User=root", "Restart=on-failure", "Environment=XILINX_XRT=/usr", "NoNewPrivileges=yes"):
        assert line in unit
    assert board_log(board, "systemctl.log") == [
        "stop hetadam-serve.service", "daemon-reload", "enable hetadam-serve.service", "restart hetadam-serve.service"
    ]  # fmt: skip
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    secret = token.read_text().strip()
    for text in (out, err, *board_log(board, "sudo.log"), *board_log(board, "server.log")):
        assert secret not in text, "the token is never printed nor put on a command line"
    assert f"at 127.0.0.1:{port} (hetadam-serve.service, started at boot)" in err
    assert f"the token is in {token} on the board (mode 600, root)" in err

    # the printed way to copy the token here works, and makes a private file
    lines = err.splitlines()
    copy = lines[lines.index(next(x for x in lines if x.startswith("the token is in"))) + 1].strip()
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["sh", "-c", copy], check=True, env={**os.environ, "HOME": str(home)})
    copied = home / ".config" / "hetadam" / "token"
    assert copied.read_text().strip() == secret and stat.S_IMODE(copied.stat().st_mode) == 0o600

    # deployed again, through make: the token is kept, the service restarted with the new package
    pid = (board["root"] / "server.pid").read_text()
    pkg = tmp_path / "out" / "pynq-z2" / "hetadam-pynq-z2"
    deploy_args = [*board["args"][2:], "--from-package", str(pkg), "--listen", f"127.0.0.1:{port}"]
    done = make("deploy", "BOARD=pynq-z2", f"HOST={board['args'][1]}", f"DEPLOY_ARGS=--serve {shlex.join(deploy_args)}")
    assert done.returncode == 0, done.stderr
    assert f"serve, token, on {board['args'][1]}: kept {token}" in done.stderr
    assert token.read_text().strip() == secret
    assert board_log(board, "systemctl.log")[4:] == [
        "stop hetadam-serve.service", "daemon-reload", "enable hetadam-serve.service", "restart hetadam-serve.service"
    ]  # fmt: skip
    assert (board["root"] / "server.pid").read_text() != pid
    assert json.loads(done.stdout.splitlines()[-1])["ok"]


def test_a_service_that_does_not_answer_fails_the_deploy_and_says_where_to_look(
    board: dict, built: Path, capsys: pytest.CaptureFixture
) -> None:
    with socket.socket() as taken:  # bound, not listening: the server cannot bind it, a client is refused
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        rc = deploy.main([
            *board["args"], "--board", "pynq-z2", "--from-package", str(built), "--serve",
            "--listen", f"127.0.0.1:{port}", "--serve-wait", "2",
        ])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert f"deploy failed: the service did not answer at 127.0.0.1:{port} on the board within 2 s" in err
    assert "(systemctl is-active: failed; last try: " in err
    assert "see `sudo journalctl -u hetadam-serve.service -n 50` there" in err
    assert "Address already in use" in (board["root"] / "server.log").read_text()


def test_serve_refuses_a_board_whose_sudo_asks_for_a_password_before_copying(
    built: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ssh = RecordedSsh(answers={"sudo -n true": (1, "", "sudo: a password is required")})
    monkeypatch.setattr(deploy, "subprocess", ssh)
    rc = deploy.main(["--board", "pynq-z2", "--from-package", str(built), "--host", "xilinx@board", "--serve"])
    assert rc == 2
    assert (
        "deploy failed: --serve needs root on xilinx@board without a password (sudo -n: sudo: a password is "
        "required): give the login passwordless sudo, or log in as root" in capsys.readouterr().err
    )
    assert not ssh.remote("mkdir") and not ssh.remote("board_smoke.py"), "nothing is copied or run"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "somewhere"], "--serve needs --host: the service runs on a board reached over ssh"),
        (["--host", "xilinx@board", "--listen", "0.0.0.0:http"], "--listen '0.0.0.0:http': the port must be a number"),
    ],
)
def test_serve_refuses_what_it_cannot_serve(
    built: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.setattr(deploy, "subprocess", None)  # any command run would fail this test
    with pytest.raises(SystemExit) as exit_:
        deploy.main(["--board", "pynq-z2", "--from-package", str(built), "--serve", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_on_a_board_the_smoke_test_runs_as_root_with_the_xrt_environment_pynq_needs(
    built: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynq registers the board's device only when XILINX_XRT is set, which PYNQ images
    export in login shells only, not for a command run over ssh."""
    ssh = RecordedSsh()
    monkeypatch.setattr(deploy, "subprocess", ssh)
    assert deploy.main(["--board", "pynq-z2", "--from-package", str(built), "--host", "xilinx@board"]) == 0
    [command] = ssh.remote("board_smoke.py")
    assert "sudo -E env XILINX_XRT=/usr /usr/local/share/pynq-venv/bin/python3 board_smoke.py" in command


def test_the_unit_takes_only_plain_absolute_paths_on_its_command_line() -> None:
    from hetadam.remote import systemd

    command = systemd.exec_start("/usr/bin/python3", "pynq", "127.0.0.1:7000", "/etc/hetadam/token", "/srv/h.bit")
    assert command[-2:] == ["--bitfile", "/srv/h.bit"]
    unit = systemd.unit_text(command, "pynq").splitlines()
    assert f"ExecStart={' '.join(command)}" in unit and "[Install]" in unit
    for bad, why in [("/home/x y/h.bit", "cannot go into the service's command line"),
                     ("/srv/100%.bit", "cannot go into the service's command line"),
                     ("$HOME/h.bit", "cannot go into the service's command line"),
                     ("h.bit", "is not an absolute path")]:  # fmt: skip
        with pytest.raises(ValueError, match=why):
            systemd.exec_start("/usr/bin/python3", "pynq", "127.0.0.1:7000", "/etc/hetadam/token", bad)


def test_the_pynq_service_loads_the_deployed_overlay_by_its_absolute_path(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = "hetadam/hetadam-pynq-z2"
    ssh = RecordedSsh(answers={f"cd {folder} && pwd -P": (0, "/home/xilinx/hetadam/hetadam-pynq-z2\n", "")})
    monkeypatch.setattr(deploy, "subprocess", ssh)
    args = argparse.Namespace(
        python=None, listen="0.0.0.0:7000", token_file=deploy.BOARD_TOKEN, new_token=False,
        unit_dir=deploy.UNIT_DIR, serve_wait=60.0, transport="pynq",
    )  # fmt: skip
    deploy.Service(deploy.Remote("xilinx@board", None, None, []), args, folder).unit("/opt/venv/bin/python3")
    [(command, unit)] = [(c[-1], i) for c, i in zip(ssh.commands, ssh.inputs, strict=True) if i is not None]
    assert command.startswith("sudo -n sh -c ") and "/etc/systemd/system/hetadam-serve.service" in command
    assert (
        "ExecStart=/opt/venv/bin/python3 -m hetadam.remote --backend pynq --listen 0.0.0.0:7000 --token-file "
        "/etc/hetadam/token --bitfile /home/xilinx/hetadam/hetadam-pynq-z2/overlay/hetadam.bit"
    ) in unit.splitlines()
    assert "serve, unit, on xilinx@board: wrote /etc/systemd/system/hetadam-serve.service" in capsys.readouterr().err
