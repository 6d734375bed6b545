"""The remote protocol's pieces on their own: framing and its bounds, the
scalars on the wire, the proofs, the token files, backend names, and the
server side importing and running without torch or numba."""

from __future__ import annotations

import dataclasses
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hetadam.numerics import DEFAULT, StepScalars, encode_step
from hetadam.remote import protocol as P
from hetadam.remote.backend import parse_name
from hetadam.remote.token import TokenError, client_token, make_token, read_token_file


@pytest.fixture
def pair() -> Iterator[tuple[P.Channel, P.Channel]]:
    a, b = socket.socketpair()
    left, right = P.Channel(a, frame_timeout=0.3), P.Channel(b, frame_timeout=0.3)
    yield left, right
    left.close()
    right.close()


# -- framing -------------------------------------------------------------------


def test_a_frame_carries_its_head_and_arrays_unchanged(pair: tuple[P.Channel, P.Channel]) -> None:
    left, right = pair
    P_ = np.arange(-5, 5, dtype=np.int32)
    eg = np.array([-128, 3], np.int8)
    left.send(P.Kind.STATE, P.CHUNK.pack(7, 2), P_, eg)
    kind, payload = right.expect({P.Kind.STATE: -(P.CHUNK.size + P_.nbytes + eg.nbytes)}, idle=1.0)
    assert kind == P.Kind.STATE and payload is None  # array frames are read by the caller
    assert P.CHUNK.unpack(right.recv_exact(P.CHUNK.size)) == (7, 2)
    got_P, got_eg = np.empty_like(P_), np.empty_like(eg)
    right.recv_into(got_P)
    right.recv_into(got_eg)
    assert np.array_equal(got_P, P_) and np.array_equal(got_eg, eg)
    assert left.sent == right.received == P.HEADER.size + P.CHUNK.size + P_.nbytes + eg.nbytes


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"GET / HTTP/1.1\r\n", "not a hetadam frame"),
        (P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION + 1, P.Kind.HELLO, 0, 32), "protocol version"),
        (P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, 250, 0, 32), "unknown message kind 250"),
        (P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.Kind.HELLO, 1, 32), "reserved flags"),
        (P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.Kind.AUTH, 0, 32), "unexpected AUTH frame"),
        (P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.Kind.HELLO, 0, 33), "HELLO frame of 33 bytes"),
    ],
    ids=["garbage", "version", "kind", "flags", "unexpected", "wrong-size"],
)
def test_a_bad_header_is_a_protocol_error(pair: tuple[P.Channel, P.Channel], header: bytes, message: str) -> None:
    left, right = pair
    left.sock.sendall(header)
    with pytest.raises(P.ProtocolError, match=message):
        right.expect(P.fixed(P.Kind.HELLO), idle=1.0)


def test_an_oversized_length_is_refused_before_anything_is_allocated(pair: tuple[P.Channel, P.Channel]) -> None:
    """The header claims 4 GiB: the receiver refuses at once instead of reading
    (it would wait for the payload) or allocating (tracemalloc would see it)."""
    import tracemalloc

    left, right = pair
    left.sock.sendall(P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.Kind.GRAD, 0, 0xFFFF_FFFF))
    tracemalloc.start()
    try:
        with pytest.raises(P.ProtocolError, match="GRAD frame of 4294967295 bytes"):
            right.expect({P.Kind.GRAD: -P.grad_bytes(1024, 32)}, idle=1.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_peer_that_stalls_mid_frame_times_out(pair: tuple[P.Channel, P.Channel]) -> None:
    left, right = pair
    left.sock.sendall(P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.Kind.HELLO, 0, 32)[:7])
    with pytest.raises(TimeoutError, match="stalled mid-frame"):
        right.expect(P.fixed(P.Kind.HELLO), idle=1.0)


def test_a_peer_that_closes_mid_frame_is_a_connection_error(pair: tuple[P.Channel, P.Channel]) -> None:
    left, right = pair
    left.sock.sendall(P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.Kind.HELLO, 0, 32) + b"x" * 5)
    left.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionError):
        right.expect(P.fixed(P.Kind.HELLO), idle=1.0)


def test_an_error_frame_raises_remote_error_with_its_code(pair: tuple[P.Channel, P.Channel]) -> None:
    left, right = pair
    left.send_error(P.Code.BUSY, "busy: serving someone else")
    with pytest.raises(P.RemoteError, match="busy: serving someone else") as info:
        right.expect(P.fixed(P.Kind.OK), idle=1.0)
    assert info.value.code == P.Code.BUSY


def test_a_large_frame_arrives_whole_across_partial_writes() -> None:
    """16 MiB through a real TCP connection, read while it is written."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    left, right = P.Channel(client, frame_timeout=10), P.Channel(server, frame_timeout=10)
    data = np.random.default_rng(0).integers(-(1 << 31), 1 << 31, 1 << 22, dtype=np.int64).astype(np.int32)
    writer = threading.Thread(target=left.send, args=(P.Kind.PARAMS, P.PARAMS.pack(0, 5), data))
    writer.start()
    right.expect({P.Kind.PARAMS: -P.params_bytes(data.size)}, idle=5.0)
    assert P.PARAMS.unpack(right.recv_exact(P.PARAMS.size)) == (0, 5)
    got = np.empty_like(data)
    right.recv_into(got)
    writer.join()
    left.close()
    right.close()
    assert np.array_equal(got, data)


# -- messages ------------------------------------------------------------------


def test_the_wire_carries_every_step_scalar_in_the_dataclass_order() -> None:
    assert P.SCALAR_FIELDS == tuple(f.name for f in dataclasses.fields(StepScalars))


@pytest.mark.parametrize("stochastic", [False, True])
def test_encoded_scalars_survive_the_wire(stochastic: bool) -> None:
    for step in (1, 10, 10_000):
        sc = encode_step(
            lr=3e-4, beta1=0.9, beta2=0.95, eps=1e-8, step=step, weight_decay=0.1, decoupled_weight_decay=True,
            seed=0xDEADBEEF, stochastic=stochastic,
        )  # fmt: skip
        assert P.unpack_scalars(P.pack_scalars(sc)) == sc


@pytest.mark.parametrize(("field", "value"), [("alpha_sh", 63), ("alpha_sh", 0), ("mode", 2), ("lwd", 1 << 32)])
def test_scalars_outside_their_registers_are_refused(field: str, value: int) -> None:
    sc = dataclasses.replace(encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1), **{field: value})
    with pytest.raises(ValueError, match=f"step scalar {field}={value} lies outside"):
        P.unpack_scalars(P.pack_scalars(sc))


def test_a_format_crosses_the_wire_and_an_invalid_one_is_refused() -> None:
    assert P.format_from_fields(*P.format_fields(DEFAULT)) == DEFAULT
    with pytest.raises(ValueError, match="block size 8192 is larger"):
        P.format_from_fields(8192, 16, 16, 16, 24)
    with pytest.raises(ValueError, match="g_bits"):
        P.format_from_fields(32, 1, 16, 16, 24)


def test_each_proof_needs_the_token_and_both_nonces_and_the_two_sides_differ() -> None:
    token, nc, ns = b"k" * 32, b"c" * 32, b"s" * 32
    proof = P.server_proof(token, nc, ns)
    assert P.proof_matches(proof, P.server_proof(token, nc, ns))
    others = [
        P.client_proof(token, nc, ns),
        P.server_proof(b"j" * 32, nc, ns),
        P.server_proof(token, b"d" * 32, ns),
        P.server_proof(token, nc, b"t" * 32),
    ]
    assert not any(P.proof_matches(proof, other) for other in others)


def test_chunks_cover_the_elements_once() -> None:
    assert P.chunk_bounds(100, 32) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert P.chunk_bounds(0, 32) == []
    assert P.state_bytes(33, 32) == P.CHUNK.size + 33 * 8 + 2 * 2
    assert P.grad_bytes(33, 32) == P.CHUNK.size + 33 * 2 + 2


# -- tokens --------------------------------------------------------------------


def test_a_made_token_is_private_and_reads_back(tmp_path: Path) -> None:
    path = make_token(tmp_path / "sub" / "token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = read_token_file(path)
    assert len(token) == 64 and int(token, 16) >= 0
    with pytest.raises(TokenError, match="exists already"):
        make_token(path)


def test_a_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = make_token(tmp_path / "token")
    path.chmod(0o644)
    with pytest.raises(TokenError, match="chmod 600"):
        read_token_file(path)


@pytest.mark.parametrize("text", ["short", "x" * 2000, "tab\there-and-more-chars"], ids=["short", "long", "control"])
def test_a_malformed_token_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("HETADAM_TOKEN", text)
    with pytest.raises(TokenError, match="printable characters"):
        client_token()


def test_the_client_takes_the_variable_then_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_token(tmp_path / "token")
    monkeypatch.delenv("HETADAM_TOKEN", raising=False)
    monkeypatch.setenv("HETADAM_TOKEN_FILE", str(path))
    assert client_token() == read_token_file(path)
    monkeypatch.setenv("HETADAM_TOKEN", "v" * 20)
    assert client_token() == b"v" * 20
    monkeypatch.delenv("HETADAM_TOKEN")
    monkeypatch.setenv("HETADAM_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(TokenError, match="set \\$HETADAM_TOKEN"):
        client_token()


# -- names ---------------------------------------------------------------------


def test_a_remote_name_gives_host_port_and_options() -> None:
    assert parse_name("tcp://pynq1:7000") == ("pynq1", 7000, {})
    assert parse_name("tcp://[::1]:7000?timeout=2.5&chunk=64") == ("::1", 7000, {"timeout": 2.5, "chunk": 64})


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("tcp://pynq1", "write a remote backend as"),
        ("tcp://pynq1:port", "write a remote backend as"),
        ("tcp://pynq1:7000/x", "write a remote backend as"),
        ("tcp://pynq1:7000?retries=3", "unknown option 'retries'"),
        ("tcp://pynq1:7000?timeout=0", "invalid timeout"),
        ("tcp://pynq1:7000?chunk=many", "invalid chunk"),
    ],
)
def test_a_malformed_remote_name_is_refused(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_name(name)


# -- the board's side: no torch, no numba -------------------------------------

BLOCKER = textwrap.dedent(
    """
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "numba"):
                raise ImportError(f"{name} is blocked: a PYNQ-Z2 has neither torch nor numba")

    sys.meta_path.insert(0, Blocker())
    """
)

SERVE_AND_STEP = textwrap.dedent(
    """
    import numpy as np
    from hetadam.remote.server import Server
    from hetadam.remote.devices import kernel_source
    from hetadam.remote.client import Link, RemoteKernel
    from hetadam.numerics import DEFAULT, adam_step, encode_step, golden
    import hetadam.driver.kernel, hetadam.driver.state, hetadam.kernels

    token = b"t" * 32
    server = Server(kernel_source(BACKEND), token, port=0).start()
    link = Link("tcp://board", *server.address, token, timeout=20)
    link.open()
    rng = np.random.default_rng(0)
    state = golden.random_state(rng, 100, DEFAULT)
    kernel = RemoteKernel(link, 100, DEFAULT, chunk=64)
    kernel.upload(state)
    for step in (1, 2):
        G, eg = golden.random_grad(rng, 100, DEFAULT)
        sc = encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=step)
        state, sat = adam_step(state, G, eg, sc, 0, DEFAULT)
        assert kernel.run(G, eg, sc, 0) == sat
        kernel.commit()
    assert kernel.download().equals(state)
    link.close()
    server.stop()
    assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "numba")]
    print(f"served {server.source.name} without torch and numba")
    """
)


@pytest.mark.parametrize("backend", ["cpu", "rtl-sim"])
def test_the_server_imports_and_serves_without_torch_or_numba(backend: str) -> None:
    if backend != "cpu":
        from hetadam import backends

        why = backends.availability(backend)
        if not why.usable:
            pytest.skip(reason=f"{backend} is not usable here: {why.reason}. {why.remedy}")
    code = BLOCKER + f"BACKEND = {backend!r}\n" + SERVE_AND_STEP
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"served {backend} without torch and numba" in result.stdout


def test_the_serve_and_token_commands_run_without_torch_or_numba(tmp_path: Path) -> None:
    code = BLOCKER + textwrap.dedent(
        f"""
        from hetadam.cli import main
        assert main(["token", "{tmp_path / "token"}"]) == 0
        assert main(["serve", "--token-file", "{tmp_path / "missing"}"]) == 2
        assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "numba")]
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"wrote a new token to {tmp_path / 'token'}" in result.stdout
    assert "no token file" in result.stderr
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600


def test_the_pynq_source_imports_without_torch_or_numba() -> None:
    pytest.importorskip("pynq", reason="pynq is not installed: pip install 'hetadam[pynq]'")
    code = BLOCKER + "import hetadam.driver.pynq, hetadam.driver.kernel, hetadam.remote.devices\nprint('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
