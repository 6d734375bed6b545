"""Deployment to a board (scripts/deploy_pynq.py + scripts/board_smoke.py), end to
end against this machine: into a local folder, and over SSH to an sshd on
loopback started for the test. The overlay is dummy bytes and the smoke test
runs dry (`--transport fake`: the golden-model double instead of a board).
What a deployment may delete (only `hetadam-<board>/`) is checked locally, over
a recorded ssh, and over the loopback sshd."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hetadam.filelock import file_lock

ROOT = Path(__file__).resolve().parents[1]
SSHD = Path("/usr/sbin/sshd")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


deploy = load_script("deploy_pynq")


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
    assert Path(report["hetadam"]).is_relative_to(target / "site"), "the smoke test must use the shipped wheel"
    assert (target / "overlay" / "hetadam.bit").read_bytes() == (overlay / "hetadam.bit").read_bytes()
    assert (tmp_path / "out" / "pynq-z2").is_dir(), "only the package's own folder in the target is replaced"
    assert "smoke test at" in err and "passed" in err


@pytest.mark.parametrize("damage", ["flip", "remove"])
def test_corrupted_package_is_refused(
    overlay: Path, wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture, damage: str
) -> None:
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
    assert not (tmp_path / "board" / "hetadam-pynq-z2" / "site").exists(), "nothing may be unpacked when refused"


def test_smoke_refuses_a_tampered_manifest(overlay: Path, wheel: Path, tmp_path: Path) -> None:
    pkg = deploy.package("pynq-z2", overlay, tmp_path, wheel)
    flip_byte(pkg / "manifest.json", at=20)
    done = subprocess.run(
        [sys.executable, str(pkg / "board_smoke.py"), "--transport", "fake"], capture_output=True, text=True
    )
    assert done.returncode == 3
    assert "package refused" in json.loads(done.stdout)["refused"]


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
    board has no rsync, its smoke test reports success."""

    CompletedProcess = subprocess.CompletedProcess

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def run(self, cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        self.commands.append(cmd)
        remote = cmd[-1] if cmd[0] == "ssh" else ""
        if remote == "command -v rsync":
            return subprocess.CompletedProcess(cmd, 1, "", "")
        stdout = json.dumps({"ok": True}) + "\n" if "board_smoke.py" in remote else ""
        return subprocess.CompletedProcess(cmd, 0, stdout, "")

    def removed(self) -> list[str]:
        """The operands of every rm the ssh commands ran."""
        out = []
        for cmd in self.commands:
            if cmd[0] == "ssh":
                words = shlex.split(cmd[-1])
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


# -- over SSH -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """An sshd on 127.0.0.1 with a throwaway host key, accepting a throwaway client key."""
    if not SSHD.exists() or shutil.which("ssh-keygen") is None:
        pytest.skip(reason="openssh-server is not installed (apt-get install openssh-server): no sshd to deploy to")
    d = tmp_path_factory.mktemp("sshd")
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
        f"Subsystem sftp {sftp}\n"
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
    try:
        yield {
            "args": [
                "--host", f"{user}@127.0.0.1", "--port", str(port), "--identity", str(d / "client_key"),
                "--ssh-option", f"UserKnownHostsFile={d / 'known_hosts'}", "--ssh-option", "StrictHostKeyChecking=yes",
                "--python", sys.executable,
            ],
        }  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("copier", ["rsync", "scp"])
def test_deploy_over_ssh_dry_run(
    sshd: dict, overlay: Path, wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch, copier: str,
) -> None:  # fmt: skip
    if copier == "rsync" and shutil.which("rsync") is None:
        pytest.skip(reason="rsync is not installed")
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
    assert Path(report["hetadam"]).is_relative_to(remote / "hetadam-zcu104" / "site")
    assert json.loads((remote / "hetadam-zcu104" / "manifest.json").read_text())["board"] == "zcu104"
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
    assert (remote / "hetadam-kv260" / "manifest.json").exists()
    assert not (remote / "hetadam-kv260" / "site").exists()


def test_unreachable_board_is_a_deployment_error(
    overlay: Path, wheel: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = deploy.main([
        "--board", "pynq-z2", "--overlay-dir", str(overlay), "--out", str(tmp_path), "--wheel", str(wheel),
        "--host", "nobody@127.0.0.1", "--port", str(free_port()), "--ssh-option", "ConnectTimeout=5",
    ])  # fmt: skip
    assert rc == 2
    assert "deploy failed: ssh nobody@127.0.0.1" in capsys.readouterr().err
