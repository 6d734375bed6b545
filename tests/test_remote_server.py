"""`hetadam serve` against bad and good clients on loopback: every bad input is
refused with a logged reason while the server goes on serving, one session at
a time, and the two-phase step's rules (a commit applies once)."""

from __future__ import annotations

import logging
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hetadam.kernels import BackendError, FixedKernel, HostKernel
from hetadam.numerics import DEFAULT, FixedFormat, FixedState, StepScalars, encode_step, golden
from hetadam.remote import protocol as P
from hetadam.remote.client import Link, RemoteKernel
from hetadam.remote.devices import HostSource
from hetadam.remote.serve import main, parse_listen
from hetadam.remote.server import Limits, Server

TOKEN = b"0123456789abcdef" * 2
LIMITS = Limits(max_elements=1 << 16, frame_timeout=0.5, handshake_timeout=1.0, max_connecting=3)


@pytest.fixture
def server(caplog: pytest.LogCaptureFixture) -> Iterator[Server]:
    caplog.set_level(logging.INFO, logger="hetadam.serve")
    srv = Server(HostSource(), TOKEN, port=0, limits=LIMITS).start()
    yield srv
    srv.stop()


def link(server: Server, token: bytes = TOKEN) -> Link:
    return Link("tcp://test", *server.address, token, timeout=5.0)


class Raw:
    """A hand-driven client: the protocol one frame at a time."""

    def __init__(self, server: Server) -> None:
        self.ch = P.Channel(socket.create_connection(server.address, timeout=5.0), frame_timeout=5.0)

    def handshake(self, token: bytes = TOKEN) -> None:
        nonce = b"n" * P.NONCE_BYTES
        self.ch.send(P.Kind.HELLO, P.HELLO.pack(nonce))
        _, payload = self.ch.expect(P.fixed(P.Kind.CHALLENGE), 5.0)
        server_nonce, _ = P.CHALLENGE.unpack(payload)
        self.ch.send(P.Kind.AUTH, P.AUTH.pack(P.client_proof(token, nonce, server_nonce)))
        self.ch.expect(P.fixed(P.Kind.WELCOME), 5.0)

    def open(self) -> bytes:
        self.handshake()
        self.ch.send(P.Kind.OPEN)
        _, payload = self.ch.expect(P.fixed(P.Kind.SESSION), 5.0)
        return payload

    def request(self, kind: P.Kind, head: bytes, *arrays: np.ndarray) -> int:
        """Send a request; return OK's flag (RemoteError for ERROR)."""
        self.ch.send(kind, head, *arrays)
        _, payload = self.ch.expect(P.fixed(P.Kind.OK), 5.0)
        return P.OK.unpack(payload)[0]

    def step(self, slot: int, step: int, G: np.ndarray, eg: np.ndarray, scalars: tuple[int, ...]) -> np.ndarray:
        """One chunk's step: the pending parameters."""
        self.ch.send(P.Kind.STEP, P.STEP.pack(slot, step, 0, *scalars))
        self.ch.send(P.Kind.GRAD, P.CHUNK.pack(slot, 0), G, eg)
        self.ch.expect({P.Kind.PARAMS: -P.params_bytes(G.size)}, 5.0)
        self.ch.recv_exact(P.PARAMS.size)
        params = np.empty(G.size, np.int32)
        self.ch.recv_into(params)
        self.ch.expect(P.fixed(P.Kind.OK), 5.0)
        return params

    def closed_by_server(self, within: float) -> bool:
        self.ch.sock.settimeout(within)
        try:
            while self.ch.sock.recv(4096):
                pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    def close(self) -> None:
        self.ch.close()


def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in caplog.records:
            if text in record.getMessage():
                return record.getMessage()
        time.sleep(0.02)
    raise AssertionError(f"no log line with {text!r} in {[r.getMessage() for r in caplog.records]}")


def still_serves(server: Server) -> None:
    """A good client can open a session, step and commit."""
    good = link(server)
    good.open()
    kernel = RemoteKernel(good, 64, DEFAULT, chunk=32)
    G, eg = golden.random_grad(np.random.default_rng(0), 64, DEFAULT)
    kernel.run(G, eg, encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1), 0)
    kernel.commit()
    assert kernel.params().any()
    good.close()


SCALARS = P.pack_scalars(encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1))


# -- authentication and bad frames --------------------------------------------


def test_a_client_with_the_token_opens_a_session_and_the_server_logs_it(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    good = link(server)
    welcome = good.open()
    assert (welcome.backend, welcome.max_elements) == ("cpu", LIMITS.max_elements)
    wait_for_log(caplog, "opened by 127.0.0.1")
    good.close()
    wait_for_log(caplog, "closed by 127.0.0.1")


def test_a_wrong_token_is_refused_with_a_logged_reason_and_the_server_goes_on(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    raw = Raw(server)
    with pytest.raises(P.RemoteError, match="authentication failed") as info:
        raw.handshake(token=b"not-the-token-at-all")
    assert info.value.code == P.Code.AUTH
    assert raw.closed_by_server(within=2.0)
    assert "authentication failed (wrong token)" in wait_for_log(caplog, "refused 127.0.0.1")
    still_serves(server)


def test_the_client_refuses_a_server_that_cannot_prove_the_token(server: Server) -> None:
    with pytest.raises(BackendError, match="could not prove it holds our token"):
        link(server, token=b"some-other-token-of-ours").open()
    still_serves(server)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: board\r\n\r\n", "not a hetadam frame"),
        (P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.Kind.HELLO, 0, 0xFFFF_FFFF), "HELLO frame of 4294967295 bytes"),
        (P.HEADER.pack(P.MAGIC, 9, P.Kind.HELLO, 0, 32), "protocol version 9"),
        (P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.Kind.OPEN, 0, 0), "unexpected OPEN frame"),
    ],
    ids=["garbage", "oversized", "version", "open-before-auth"],
)
def test_bad_frames_before_authentication_close_the_connection_at_once(
    server: Server, caplog: pytest.LogCaptureFixture, data: bytes, reason: str
) -> None:
    raw = Raw(server)
    raw.ch.sock.sendall(data)
    assert raw.closed_by_server(within=LIMITS.frame_timeout * 0.8)  # not waiting for a payload
    assert reason in wait_for_log(caplog, "refused 127.0.0.1")
    still_serves(server)


def test_an_oversized_frame_inside_a_session_ends_the_connection_not_the_session(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    raw = Raw(server)
    raw.open()
    raw.ch.sock.sendall(P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.Kind.STEP, 0, 1 << 31))
    assert raw.closed_by_server(within=LIMITS.frame_timeout * 0.8)
    assert "STEP frame of 2147483648 bytes" in wait_for_log(caplog, "detached")
    still_serves(server)


def test_a_client_that_stalls_mid_frame_is_dropped_after_the_frame_timeout(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    raw = Raw(server)
    raw.ch.sock.sendall(P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.Kind.HELLO, 0, 32) + b"half")
    t0 = time.monotonic()
    assert raw.closed_by_server(within=5.0)
    assert time.monotonic() - t0 >= LIMITS.frame_timeout * 0.8
    assert "stalled mid-frame" in wait_for_log(caplog, "refused 127.0.0.1")
    still_serves(server)


def test_a_client_that_never_authenticates_is_dropped(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    raw = Raw(server)
    assert raw.closed_by_server(within=5.0)
    assert "no frame within" in wait_for_log(caplog, "refused 127.0.0.1")


def test_connections_beyond_the_authenticating_limit_are_closed_at_once(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    idle = [Raw(server) for _ in range(LIMITS.max_connecting)]
    time.sleep(0.1)
    extra = Raw(server)
    assert extra.closed_by_server(within=0.5)
    wait_for_log(caplog, "connections are authenticating already")
    for raw in idle:
        raw.close()


# -- one session at a time -----------------------------------------------------


def test_a_second_concurrent_session_is_refused_as_busy_and_the_first_goes_on(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    first = link(server)
    first.open()
    kernel = RemoteKernel(first, 64, DEFAULT, chunk=64)
    with pytest.raises(BackendError, match="busy: serving another session"):
        link(server).open()
    assert "busy" in wait_for_log(caplog, "refused 127.0.0.1")
    kernel.upload(FixedState.zeros(64, DEFAULT))
    assert kernel.download().equals(FixedState.zeros(64, DEFAULT))
    first.close()


def test_a_session_outlives_its_connection_and_is_resumed_with_its_state(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    client = link(server)
    client.open()
    session = client.session
    kernel = RemoteKernel(client, 100, DEFAULT, chunk=32)
    state = golden.random_state(np.random.default_rng(1), 100, DEFAULT)
    kernel.upload(state)
    client.drop()
    assert kernel.download().equals(state)  # reconnects and resumes
    assert client.session == session
    wait_for_log(caplog, f"session {session.hex()[:8]} resumed")
    client.close()


def test_a_new_session_replaces_a_detached_one(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    first = link(server)
    first.open()
    kernel = RemoteKernel(first, 64, DEFAULT)
    first.drop()
    second = link(server)
    second.open()
    wait_for_log(caplog, "(detached) replaced by a new session")
    with pytest.raises(BackendError, match="no longer holds this optimizer's state"):
        kernel.download()
    with pytest.raises(BackendError, match="lost this optimizer's state"):  # and says so again, without asking
        kernel.download()
    second.close()


# -- the two-phase step --------------------------------------------------------


def test_a_repeated_commit_is_acknowledged_and_applies_once(server: Server) -> None:
    raw = Raw(server)
    raw.open()
    raw.request(P.Kind.CREATE, P.CREATE.pack(1, 32, 32, *P.format_fields(DEFAULT)))
    G, eg = golden.random_grad(np.random.default_rng(2), 32, DEFAULT)
    pending = raw.step(1, 1, G, eg, SCALARS)
    assert raw.request(P.Kind.COMMIT, P.STEP_REF.pack(1, 1)) == 1
    assert raw.request(P.Kind.COMMIT, P.STEP_REF.pack(1, 1)) == 0
    raw.ch.send(P.Kind.GET_STATE, P.SLOT.pack(1))
    raw.ch.expect({P.Kind.STATE: -P.state_bytes(32, 32)}, 5.0)
    raw.ch.recv_exact(P.CHUNK.size)
    params = np.empty(32, np.int32)
    raw.ch.recv_into(params)
    raw.ch.recv_exact(P.state_bytes(32, 32) - P.CHUNK.size - params.nbytes)
    raw.ch.expect(P.fixed(P.Kind.OK), 5.0)
    assert np.array_equal(params, pending)  # one step from zero, not two
    with pytest.raises(P.RemoteError, match="committed already"):
        raw.request(P.Kind.DISCARD, P.STEP_REF.pack(1, 1))
    raw.close()


@pytest.mark.parametrize(
    ("kind", "head", "message"),
    [
        (P.Kind.COMMIT, P.STEP_REF.pack(1, 7), "step 7 is not pending"),
        (P.Kind.FREE, P.SLOT.pack(1), None),
        (P.Kind.CREATE, P.CREATE.pack(1, 32, 32, *P.format_fields(DEFAULT)), "slot 1 exists already"),
        (P.Kind.CREATE, P.CREATE.pack(2, 1 << 20, 32, *P.format_fields(DEFAULT)), "exceed this server's limit"),
        (P.Kind.CREATE, P.CREATE.pack(2, 64, 33, *P.format_fields(DEFAULT)), "must be a multiple of the block"),
        (P.Kind.CREATE, P.CREATE.pack(2, 64, 32, 1 << 13, 16, 16, 16, 24), "invalid format"),
        (P.Kind.GET_STATE, P.SLOT.pack(9), "no slot 9"),
    ],
    ids=["commit-unknown-step", "free", "slot-exists", "too-many", "bad-chunk", "bad-format", "no-slot"],
)
def test_an_invalid_request_gets_an_error_and_the_connection_goes_on(
    server: Server, kind: P.Kind, head: bytes, message: str | None
) -> None:
    raw = Raw(server)
    raw.open()
    raw.request(P.Kind.CREATE, P.CREATE.pack(1, 32, 32, *P.format_fields(DEFAULT)))
    if message is None:
        assert raw.request(kind, head) == 0
    else:
        with pytest.raises(P.RemoteError, match=message):
            raw.request(kind, head)
    assert raw.request(P.Kind.CREATE, P.CREATE.pack(3, 32, 32, *P.format_fields(DEFAULT))) == 0  # still in step
    raw.close()


@pytest.mark.parametrize(
    ("step", "scalars", "message"),
    [
        (1, SCALARS, "step 1 is not new"),
        (2, (*SCALARS[:-1], 2), "step scalar mode=2"),
    ],
    ids=["stale-step", "bad-scalar"],
)
def test_a_refused_step_reads_its_gradients_and_changes_nothing(
    server: Server, step: int, scalars: tuple[int, ...], message: str
) -> None:
    raw = Raw(server)
    raw.open()
    raw.request(P.Kind.CREATE, P.CREATE.pack(1, 64, 32, *P.format_fields(DEFAULT)))
    G, eg = golden.random_grad(np.random.default_rng(3), 64, DEFAULT)
    raw.ch.send(P.Kind.STEP, P.STEP.pack(1, 1, 0, *SCALARS))
    for i in range(2):
        raw.ch.send(P.Kind.GRAD, P.CHUNK.pack(1, i), G[32 * i : 32 * i + 32], eg[i : i + 1])
    for _ in range(2):
        raw.ch.expect({P.Kind.PARAMS: -P.params_bytes(32)}, 5.0)
        raw.ch.recv_exact(P.params_bytes(32))
    raw.ch.expect(P.fixed(P.Kind.OK), 5.0)
    raw.ch.send(P.Kind.STEP, P.STEP.pack(1, step, 0, *scalars))
    for i in range(2):
        raw.ch.send(P.Kind.GRAD, P.CHUNK.pack(1, i), G[32 * i : 32 * i + 32], eg[i : i + 1])
    with pytest.raises(P.RemoteError, match=message):
        raw.ch.expect(P.fixed(P.Kind.OK), 5.0)
    assert raw.request(P.Kind.COMMIT, P.STEP_REF.pack(1, 1)) == 1  # the first step is still pending
    raw.close()


class FlakyKernel(HostKernel):
    """The golden model, failing its second chunk's run while `failing` is set."""

    failing = False

    def run(self, G: np.ndarray, eg: np.ndarray, sc: StepScalars, idx0: int) -> int:
        if FlakyKernel.failing and idx0 >= 32:
            raise RuntimeError("the DMA engine reported an error")
        return super().run(G, eg, sc, idx0)


class FlakySource(HostSource):
    def new(self, n: int, fmt: FixedFormat) -> FixedKernel:
        return FlakyKernel(n, fmt)


def test_a_kernel_failing_mid_step_applies_nothing_and_keeps_the_connection(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="hetadam.serve")
    with Server(FlakySource(), TOKEN, port=0, limits=LIMITS).start() as srv:
        client = link(srv)
        client.open()
        rng = np.random.default_rng(5)
        state = golden.random_state(rng, 64, DEFAULT)
        kernel = RemoteKernel(client, 64, DEFAULT, chunk=32)
        kernel.upload(state)
        G, eg = golden.random_grad(rng, 64, DEFAULT)
        sc = encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1)
        monkeypatch.setattr(FlakyKernel, "failing", True)
        with pytest.raises(BackendError, match=r"tcp://test.*the step failed: RuntimeError: the DMA engine"):
            kernel.run(G, eg, sc, 0)
        kernel.commit()  # nothing is pending: the runtime would discard, and a commit changes nothing
        assert kernel.download().equals(state)
        monkeypatch.setattr(FlakyKernel, "failing", False)
        kernel.run(G, eg, sc, 0)
        kernel.commit()
        assert kernel.download().equals(golden.adam_step(state, G, eg, sc, 0, DEFAULT)[0])
        assert client.connected and "resumed" not in caplog.text
        client.close()


class SlowKernel(HostKernel):
    def run(self, G: np.ndarray, eg: np.ndarray, sc: StepScalars, idx0: int) -> int:
        time.sleep(0.3)
        return super().run(G, eg, sc, idx0)


class SlowSource(HostSource):
    def new(self, n: int, fmt: FixedFormat) -> FixedKernel:
        return SlowKernel(n, fmt)


def test_a_kernel_slower_than_the_frame_timeout_is_not_taken_for_a_stalled_client() -> None:
    """More chunks than the pipeline holds, each running longer than a frame may take."""
    limits = Limits(frame_timeout=0.2, handshake_timeout=1.0)
    with Server(SlowSource(), TOKEN, port=0, limits=limits).start() as srv:
        client = link(srv)
        client.open()
        n = 32 * 6
        kernel = RemoteKernel(client, n, DEFAULT, chunk=32)
        G, eg = golden.random_grad(np.random.default_rng(6), n, DEFAULT)
        sc = encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1)
        kernel.run(G, eg, sc, 0)
        kernel.commit()
        assert np.array_equal(kernel.params(), golden.adam_step(FixedState.zeros(n), G, eg, sc, 0, DEFAULT)[0].P)
        client.close()


def test_a_server_that_stopped_is_named_in_the_error(server: Server) -> None:
    client = link(server)
    client.open()
    kernel = RemoteKernel(client, 64, DEFAULT)
    server.stop()
    with pytest.raises(BackendError, match=r"backend 'tcp://test'.*(connection was lost|cannot connect)"):
        kernel.download()


def test_a_gradient_frame_for_the_wrong_chunk_ends_the_connection_and_discards_the_step(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    raw = Raw(server)
    session = raw.open()
    raw.request(P.Kind.CREATE, P.CREATE.pack(1, 64, 32, *P.format_fields(DEFAULT)))
    G, eg = golden.random_grad(np.random.default_rng(4), 64, DEFAULT)
    raw.ch.send(P.Kind.STEP, P.STEP.pack(1, 1, 0, *SCALARS))
    raw.ch.send(P.Kind.GRAD, P.CHUNK.pack(1, 1), G[:32], eg[:1])
    assert raw.closed_by_server(within=2.0)
    assert "expected 1 chunk 0" in wait_for_log(caplog, "detached")
    resumed = Raw(server)
    resumed.handshake()
    resumed.ch.send(P.Kind.RESUME, session)
    resumed.ch.expect(P.fixed(P.Kind.SESSION), 5.0)
    with pytest.raises(P.RemoteError, match="step 1 is not pending"):
        resumed.request(P.Kind.COMMIT, P.STEP_REF.pack(1, 1))
    resumed.close()


# -- the command ---------------------------------------------------------------


def test_serve_refuses_to_start_without_a_token_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--token-file", str(tmp_path / "missing"), "--listen", "127.0.0.1:0"]) == 2
    assert "no token file" in capsys.readouterr().err


def test_serve_refuses_a_token_file_others_can_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("x" * 64)
    token.chmod(0o640)
    assert main(["--token-file", str(token), "--listen", "127.0.0.1:0"]) == 2
    assert "chmod 600" in capsys.readouterr().err


def test_serve_makes_a_private_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--make-token", str(tmp_path / "token")]) == 0
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600
    assert "wrote a new token" in capsys.readouterr().out


def test_listen_addresses_default_to_loopback_and_port_7000() -> None:
    assert parse_listen(":8000") == ("127.0.0.1", 8000)
    assert parse_listen("0.0.0.0") == ("0.0.0.0", 7000)
    assert parse_listen("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError, match="must be a number"):
        parse_listen("host:http")
