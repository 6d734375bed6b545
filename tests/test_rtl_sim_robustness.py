"""The rtl-sim transport and simulator when things go wrong: a request
interrupted half-way (Ctrl-C), requests the server must refuse, a long
$TMPDIR, a host killed without closing. The first tests run against a small
double of the server over a socket pair; the rest start the real simulator."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hetadam import backends, regmap
from hetadam.backends import rtl_sim
from hetadam.backends.base import BackendError, Segment, StepHyper
from hetadam.driver import Buffer, DriverError
from hetadam.driver import sim as wire
from hetadam.numerics import DEFAULT

AVAIL = backends.availability("rtl-sim")
needs_rtl = pytest.mark.skipif(not AVAIL.usable, reason=f"rtl-sim unusable: {AVAIL.reason}. {AVAIL.remedy}")


class Peer:
    """A double of sim/rtl_server.py on one end of a socket pair: READ32 answers
    the offset + 1, MEM_WRITE and MEM_READ use a bytearray; every request is logged."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.memory = bytearray(1 << 16)
        self.requests: list[tuple[int, int, int]] = []
        self.left = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            while True:
                op, a, b = wire.REQUEST.unpack(wire.recv_exact(self.conn, wire.REQUEST.size))
                self.requests.append((op, a, b))
                a -= BASE
                if op == wire.READ32:
                    self.conn.sendall(wire.ANSWER.pack(wire.OK, a + BASE + 1))
                elif op == wire.MEM_WRITE:
                    self.memory[a : a + b] = wire.recv_exact(self.conn, b)
                    self.conn.sendall(wire.ANSWER.pack(wire.OK, 0))
                elif op == wire.MEM_READ:
                    self.conn.sendall(wire.ANSWER.pack(wire.OK, b) + bytes(self.memory[a : a + b]))
        except ConnectionError:
            self.left.set()


BASE = 0x1_0000_0000


class InterruptedAt:
    """A socket whose `method` raises KeyboardInterrupt on its `call`-th use, as Ctrl-C would."""

    def __init__(self, sock: socket.socket, method: str, call: int) -> None:
        self.sock, self.method, self.countdown = sock, method, call

    def __getattr__(self, name: str) -> object:
        real = getattr(self.sock, name)
        if name != self.method:
            return real

        def interrupted(*args: object) -> object:
            self.countdown -= 1
            if self.countdown == 0:
                raise KeyboardInterrupt
            return real(*args)

        return interrupted


@pytest.fixture
def pair() -> tuple[socket.socket, Peer]:
    host, device = socket.socketpair()
    yield host, Peer(device)
    host.close()
    device.close()


@pytest.mark.parametrize(
    ("method", "call", "which"),
    [("recv", 1, "read32"), ("sendall", 2, "sync_to_device")],
    ids=["while the answer is on the way", "while the payload is sent"],
)
def test_a_request_interrupted_half_way_closes_the_connection_and_later_calls_say_so(
    pair: tuple[socket.socket, Peer], method: str, call: int, which: str
) -> None:
    host, peer = pair
    transport = wire.SimTransport(InterruptedAt(host, method, call), timeout=5.0)
    buf = transport.allocate(64, np.uint32)
    buf.array[:] = np.arange(64)
    requests = {"read32": lambda: transport.read32(0x10), "sync_to_device": lambda: transport.sync_to_device(buf)}
    with pytest.raises(KeyboardInterrupt):  # unchanged, not wrapped
        requests[which]()
    assert peer.left.wait(5), "the simulator must see the host leave"
    for later in (lambda: transport.read32(0x10), lambda: transport.sync_from_device(buf)):
        with pytest.raises(DriverError, match="interrupted mid-request and closed; create a new optimizer/backend"):
            later()
    transport.close()  # closing after the interruption is quiet


def test_a_request_that_completes_leaves_the_connection_in_step(pair: tuple[socket.socket, Peer]) -> None:
    host, _ = pair
    transport = wire.SimTransport(host, timeout=5.0)
    assert [transport.read32(offset) for offset in (0x10, 0x18, 0x20)] == [0x11, 0x19, 0x21]


def test_buffers_larger_than_one_transfer_go_in_pieces(
    pair: tuple[socket.socket, Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "MAX_TRANSFER", 96)
    host, peer = pair
    transport = wire.SimTransport(host, timeout=5.0)
    buf = transport.allocate(100, np.int32)
    buf.array[:] = np.arange(100) * 7
    transport.sync_to_device(buf)
    writes = [r for r in peer.requests if r[0] == wire.MEM_WRITE]
    assert [b for _, _, b in writes] == [96, 96, 96, 96, 16]
    assert [a - buf.address for _, a, _ in writes] == [0, 96, 192, 288, 384]
    back = Buffer(np.zeros(100, np.int32), buf.address)
    transport.sync_from_device(back)
    np.testing.assert_array_equal(back.array, buf.array)
    assert max(b for op, _, b in peer.requests if op == wire.MEM_READ) == 96


# ---- start-up and clean-up -------------------------------------------------------------------------


def test_a_socket_path_too_long_for_af_unix_is_a_backend_error_that_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_tmp = tmp_path / ("t" * 120)
    long_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    monkeypatch.setattr(rtl_sim, "SUN_PATH_MAX", 1 << 16)  # as if the fallback to /tmp were not there
    with pytest.raises(BackendError, match=r"rtl-sim.*Unix socket.*Set TMPDIR to a short"):
        rtl_sim.Simulator(Path("."), timeout=1.0, start_timeout=1.0)
    assert list(long_tmp.iterdir()) == []


def test_the_work_folder_goes_to_tmp_when_tmpdir_is_too_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    long_tmp = tmp_path / ("t" * 120)
    long_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    workdir = rtl_sim.make_workdir()
    try:
        assert workdir.parent == Path("/tmp")
        assert len(os.fsencode(workdir / rtl_sim.SOCKET_NAME)) < rtl_sim.SUN_PATH_MAX
    finally:
        workdir.rmdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    workdir = rtl_sim.make_workdir()
    assert workdir.parent == tmp_path, "a $TMPDIR that fits is used"
    workdir.rmdir()


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def wait_until(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@needs_rtl
def test_a_long_tmpdir_starts_the_simulator_and_close_removes_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_tmp = tmp_path / ("t" * 120)
    long_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))
    backend = rtl_sim.RtlSimBackend(timeout=60.0)
    try:
        backend.create_shard(0, 8, "fixed", DEFAULT)
        workdir = backend.simulator.workdir
        assert workdir.is_dir()
    finally:
        backend.close()
    assert not workdir.exists()
    assert list(long_tmp.iterdir()) == []


@needs_rtl
def test_a_killed_host_leaves_neither_simulator_nor_folder() -> None:
    script = (
        "import os, signal\n"
        "from hetadam.backends.rtl_sim import RtlSimBackend\n"
        "from hetadam.numerics import DEFAULT\n"
        "b = RtlSimBackend()\n"
        "b.create_shard(0, 8, 'fixed', DEFAULT)\n"
        "print(b.simulator.proc.pid, b.simulator.workdir, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )  # no close(), no atexit: the simulator is on its own
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr
    pid, workdir = done.stdout.split()
    wait_until(lambda: not alive(int(pid)), 30, "the simulator outlived its host")
    wait_until(lambda: not Path(workdir).exists(), 10, "the simulator left its folder")


# ---- the real server -------------------------------------------------------------------------------


@pytest.fixture
def simulator() -> rtl_sim.RtlSimBackend:
    backend = rtl_sim.RtlSimBackend(timeout=60.0, chunk=64)
    backend.create_shard(0, 8, "fixed", DEFAULT)  # starts the simulator
    workdir = backend.simulator.workdir
    yield backend
    backend.close()
    assert not workdir.exists()


@needs_rtl
def test_the_server_refuses_an_oversized_read_and_keeps_serving(simulator: rtl_sim.RtlSimBackend) -> None:
    transport = simulator.simulator.transport
    with pytest.raises(DriverError, match=rf"MEM_READ of {wire.MAX_TRANSFER + 1} bytes refused"):
        transport._call(wire.MEM_READ, BASE, wire.MAX_TRANSFER + 1)
    with pytest.raises(DriverError, match="outside the"):
        transport._call(wire.MEM_READ, (1 << 48) - 4, 8)
    assert transport.read32(regmap.CTRL) & regmap.CTRL_AP_START == 0, "still in step"
    assert simulator.simulator.proc.poll() is None


@needs_rtl
def test_the_server_refuses_an_oversized_write_before_its_payload_and_ends(simulator: rtl_sim.RtlSimBackend) -> None:
    transport = simulator.simulator.transport
    with pytest.raises(DriverError, match=r"MEM_WRITE of 1099511627776 bytes refused"):
        transport._call(wire.MEM_WRITE, BASE, 1 << 40)  # header only: the server must not wait for 1 TiB
    proc = simulator.simulator.proc
    wait_until(lambda: proc.poll() is not None, 30, "the server must end the connection")


@needs_rtl
def test_a_step_interrupted_mid_request_keeps_the_state_and_later_steps_say_the_connection_closed(
    simulator: rtl_sim.RtlSimBackend,
) -> None:
    n = 96
    shard = simulator.create_shard(0, n, "fixed", DEFAULT)
    rng = np.random.default_rng(0)
    param = rng.normal(0, 1, n).astype(np.float32)
    shard.import_state({}, param)
    before = {k: v.copy() for k, v in shard.export_state().items()}
    grad = rng.normal(0, 1e-2, n).astype(np.float32)
    segments = [Segment(0, torch.from_numpy(param.copy()), torch.from_numpy(grad))]
    hyper = StepHyper(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    transport = simulator.simulator.transport
    transport.conn = InterruptedAt(transport.conn, "recv", 3)
    with pytest.raises(KeyboardInterrupt):
        shard.step(segments, hyper)
    shard.discard()
    after = shard.export_state()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    with pytest.raises(BackendError, match=r"rtl-sim.*interrupted mid-request and closed; create a new"):
        shard.step(segments, hyper)
    proc = simulator.simulator.proc
    wait_until(lambda: proc.poll() is not None, 30, "the simulator must end when the host leaves mid-request")
