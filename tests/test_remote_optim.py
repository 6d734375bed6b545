"""HetAdam over `tcp://` on loopback: bit-exact with `cpu fixed` alone and in a
split with two servers, exact state over the wire, and the faults of a link
(dropped, stalled), of a server (killed mid-step, restarted without its state)
and of a commit whose answer is lost."""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from hetadam import HetAdam, backends
from hetadam.backends.base import BackendError
from hetadam.numerics import DEFAULT, encode_step, golden
from hetadam.remote import protocol as P
from hetadam.remote.client import Link, RemoteKernel
from hetadam.remote.devices import HostSource, kernel_source
from hetadam.remote.server import Limits, Server
from hetadam.remote.token import make_token, read_token_file

TOKEN = "remote-test-token-0123456789"
LIMITS = Limits(frame_timeout=2.0, handshake_timeout=2.0)


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HETADAM_TOKEN", TOKEN)


@pytest.fixture
def server(caplog: pytest.LogCaptureFixture) -> Iterator[Server]:
    caplog.set_level(logging.INFO, logger="hetadam.serve")
    with Server(HostSource(), TOKEN.encode(), port=0, limits=LIMITS).start() as srv:
        yield srv


def name_of(address: tuple[str, int], **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"tcp://{address[0]}:{address[1]}" + (f"?{query}" if query else "")


class Model(torch.nn.Module):
    """Two layers and a bias that gets no gradient on odd steps (a partial step)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(30, 40)
        self.b = torch.nn.Linear(40, 5)
        self.extra = torch.nn.Parameter(torch.randn(70))

    def loss(self, x: torch.Tensor, step: int) -> torch.Tensor:
        out = self.b(torch.tanh(self.a(x))).pow(2).mean()
        return out + self.extra.pow(2).sum() * 1e-3 if step % 2 == 0 else out


def train(model: Model, opt: HetAdam, steps: range) -> None:
    """Steps with the same data for the same step index; odd steps leave `extra` without a gradient."""
    for step in steps:
        x = torch.randn(16, 30, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        model.loss(x, step).backward()
        opt.step()


def snapshot(model: Model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_same(a: Model | list[torch.Tensor], b: Model | list[torch.Tensor]) -> None:
    pa = list(a.parameters()) if isinstance(a, Model) else a
    pb = list(b.parameters()) if isinstance(b, Model) else b
    for x, y in zip(pa, pb, strict=True):
        assert torch.equal(x, y)


def assert_same_state(a: object, b: object) -> None:
    """Two state_dicts hold the same values (tensors and arrays bit for bit)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_state(x, y)
    elif isinstance(a, torch.Tensor | np.ndarray):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    else:
        assert a == b


def make(backend: str | list[str], model: Model, **kwargs: object) -> HetAdam:
    return HetAdam(model.parameters(), lr=1e-2, backend=backend, numerics="fixed", **kwargs)


# -- bit-exact -----------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"weight_decay": 1e-2},
        {"weight_decay": 1e-2, "decoupled_weight_decay": True, "stochastic_rounding": True, "seed": 7},
        {"maximize": True, "betas": (0.8, 0.95)},
    ],
    ids=["adam-coupled-wd", "adamw-stochastic", "maximize"],
)
def test_a_remote_optimizer_is_bit_exact_with_cpu_fixed_over_many_steps(server: Server, options: dict) -> None:
    local, remote = Model(), Model()
    reference = make("cpu", local, **options)
    opt = make(name_of(server.address, chunk=256), remote, **options)
    for step in range(40):
        train(local, reference, range(step, step + 1))
        train(remote, opt, range(step, step + 1))
        assert_same(local, remote)
    assert_same_state(reference.state_dict()["state"], opt.state_dict()["state"])
    opt.close()
    reference.close()


def test_a_split_over_cpu_and_two_servers_is_bit_identical_to_cpu_fixed(caplog: pytest.LogCaptureFixture) -> None:
    with (
        Server(HostSource(), TOKEN.encode(), port=0, limits=LIMITS).start() as one,
        Server(HostSource(), TOKEN.encode(), port=0, limits=LIMITS).start() as two,
    ):
        names = ["cpu", name_of(one.address, chunk=64), name_of(two.address, chunk=128)]
        local, remote = Model(), Model()
        reference = make("cpu", local)
        opt = make(names, remote, split=[1, 2, 3], rebalance_every=7)
        train(local, reference, range(25))
        train(remote, opt, range(25))
        assert_same(local, remote)
        assert [s.backend for s in opt.step_stats] == names
        assert all(s.link_utilisation is None for s in opt.step_stats)  # no link rate given
        opt.close()


def test_param_groups_on_one_server_share_its_session_and_stay_bit_exact(server: Server) -> None:
    def groups(m: Model) -> list[dict]:
        return [{"params": [m.a.weight, m.a.bias]}, {"params": [m.b.weight, m.b.bias, m.extra], "lr": 3e-3}]

    local, remote = Model(), Model()
    reference = HetAdam(groups(local), lr=1e-2, backend="cpu", numerics="fixed")
    opt = HetAdam(groups(remote), lr=1e-2, backend=name_of(server.address, chunk=64), numerics="fixed")
    train(local, reference, range(8))
    train(remote, opt, range(8))
    assert_same(local, remote)
    assert len(opt.step_stats) == 2
    opt.close()


def test_the_state_moves_exactly_over_the_wire_both_ways(server: Server) -> None:
    local, remote = Model(), Model()
    reference = make("cpu", local)
    opt = make(name_of(server.address), remote)
    train(local, reference, range(5))
    train(remote, opt, range(5))
    remote_state, local_state = opt.state_dict(), reference.state_dict()
    opt.close()
    # the server's state continues on the cpu backend, and the cpu backend's on the server
    on_cpu, on_server = Model(), Model()
    on_cpu.load_state_dict(remote.state_dict())
    on_server.load_state_dict(local.state_dict())
    cpu_opt = make("cpu", on_cpu)
    cpu_opt.load_state_dict(remote_state)
    server_opt = make(name_of(server.address), on_server)
    server_opt.load_state_dict(local_state)
    train(local, reference, range(5, 10))
    train(on_cpu, cpu_opt, range(5, 10))
    train(on_server, server_opt, range(5, 10))
    assert_same(local, on_cpu)
    assert_same(local, on_server)
    server_opt.close()


def test_a_step_moves_six_bytes_a_parameter_and_reports_the_link_utilisation(server: Server) -> None:
    remote = Model()
    opt = make(name_of(server.address, chunk=1024, link=1e9), remote)
    train(remote, opt, range(1))  # a full step (odd steps stage a partial one)
    (stats,) = opt.step_stats
    n = stats.elements
    assert stats.wire_bytes == 2 * n + -(-n // DEFAULT.block) + 4 * n
    assert 6.0 <= stats.bytes_per_param < 6.04
    assert stats.link_rate == 1.25e8
    assert stats.link_utilisation == pytest.approx(stats.wire_bytes / stats.seconds / 1.25e8)
    kernel = opt._partitions[0].shards[0].kernel
    frames = -(-n // 1024)
    assert kernel.last.sent == 2 * n + -(-n // DEFAULT.block) + (frames + 1) * 12 + frames * 8 + 100
    assert kernel.last.received == 4 * n + frames * (12 + 8) + 13
    opt.close()


def test_without_a_token_the_backend_is_unavailable_and_says_how_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HETADAM_TOKEN")
    monkeypatch.setenv("HETADAM_TOKEN_FILE", str(tmp_path / "token"))
    with pytest.raises(backends.BackendUnavailable, match=r"no token: set \$HETADAM_TOKEN.*docs/remote.md"):
        make("tcp://127.0.0.1:7000", Model())


def test_an_unreachable_server_fails_at_construction_naming_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    with pytest.raises(BackendError, match=rf"tcp://127.0.0.1:{port}.*cannot connect.*hetadam serve"):
        make(f"tcp://127.0.0.1:{port}", Model())


# -- faults ------------------------------------------------------------------------


class Proxy:
    """A relay between the client and a server that a test holds, cuts or lets through.

    mode "forward": bytes go both ways; "hold": nothing is read from either side
    (a stalled link); "hold-down": the server's bytes are not read. `cut_after`
    cuts every connection once the client has sent that many more bytes;
    `abandon` keeps the connections of now held for ever (open, silent)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.address = self.listener.getsockname()
        self.mode = "forward"
        self.up = 0
        self._cut_at: int | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._abandoned: set[int] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def cut_after(self, more: int) -> None:
        self._cut_at = self.up + more

    def abandon(self) -> None:
        self._abandoned.update(id(pair[0]) for pair in self._pairs)

    def cut(self) -> None:
        for pair in list(self._pairs):
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection(self.target)
            self._pairs.append((client, server))
            t = threading.Thread(target=self._pump, args=(client, server), daemon=True)
            self._threads.append(t)
            t.start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                if self.mode == "hold" or id(client) in self._abandoned:
                    time.sleep(0.01)
                    continue
                watch = [client] if self.mode == "hold-down" else [client, server]
                ready, _, _ = select.select(watch, [], [], 0.02)
                for src in ready:
                    data = src.recv(1 << 16)
                    if not data:
                        return
                    if src is client:
                        if self._cut_at is not None and self.up + len(data) >= self._cut_at:
                            server.sendall(data[: self._cut_at - self.up])
                            self._cut_at = None
                            self.cut()
                            return
                        self.up += len(data)
                        server.sendall(data)
                    else:
                        client.sendall(data)
        except OSError:
            pass
        finally:
            for s in (client, server):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        for t in self._threads:
            t.join()
        self.listener.close()


@pytest.fixture
def proxy(server: Server) -> Iterator[Proxy]:
    p = Proxy(server.address)
    yield p
    p.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def split_pair(proxy: Proxy, **options: object) -> tuple[Model, HetAdam, Model, HetAdam, str]:
    """A cpu-fixed reference and a split over cpu and the remote behind `proxy`."""
    name = name_of(proxy.address, **options)
    local, remote = Model(), Model()
    return local, make("cpu", local), remote, make(["cpu", name], remote, split=[1, 1], rebalance_every=0), name


def test_a_link_dropped_mid_step_applies_nothing_then_the_session_resumes(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    local, reference, remote, opt, name = split_pair(proxy, chunk=64)
    train(local, reference, range(3))
    train(remote, opt, range(3))
    before = snapshot(remote)
    state = opt.state_dict()
    proxy.cut_after(500)  # the STEP frame and part of its gradients
    with pytest.raises(BackendError, match=re.escape(name)) as info:
        train(remote, opt, range(3, 4))
    assert "connection was lost" in str(info.value)
    assert_same(before, remote)
    assert_same_state(opt.state_dict(), state)
    train(remote, opt, range(4, 8))  # reconnects and resumes: the failed step is simply missing
    train(local, reference, range(4, 8))
    assert_same(local, remote)
    assert "resumed" in "\n".join(r.getMessage() for r in caplog.records)
    opt.close()


def test_a_stalled_link_times_out_the_step_and_applies_nothing(proxy: Proxy) -> None:
    local, reference, remote, opt, name = split_pair(proxy, timeout=1.0)
    train(local, reference, range(2))
    train(remote, opt, range(2))  # the stalled step (2) is a full one
    before = snapshot(remote)
    proxy.mode = "hold"
    t0 = time.monotonic()
    with pytest.raises(BackendError, match=re.escape(name) + ".*no answer within 1 s"):
        train(remote, opt, range(2, 3))
    assert time.monotonic() - t0 < 10
    assert_same(before, remote)
    proxy.abandon()  # the stalled connection stays open on the server's side
    proxy.mode = "forward"
    train(remote, opt, range(3, 6))  # so the resume takes the session over from it
    train(local, reference, range(3, 6))
    assert_same(local, remote)
    opt.close()


def test_a_commit_whose_answer_is_lost_is_owed_and_applies_once(proxy: Proxy) -> None:
    link = Link("tcp://proxied", *proxy.address, TOKEN.encode(), timeout=1.0)
    link.open()
    rng = np.random.default_rng(0)
    state = golden.random_state(rng, 96, DEFAULT)
    kernel = RemoteKernel(link, 96, DEFAULT, chunk=32)
    kernel.upload(state)
    G, eg = golden.random_grad(rng, 96, DEFAULT)
    sc = encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1)
    expected, _ = golden.adam_step(state, G, eg, sc, 0, DEFAULT)
    kernel.run(G, eg, sc, 0)
    proxy.mode = "hold-down"  # the COMMIT reaches the server, its answer does not come back
    with pytest.warns(RuntimeWarning, match="commit of step 1 is owed"):
        kernel.commit()
    assert np.array_equal(kernel.params(), expected.P)  # the host side moved on
    proxy.cut()
    proxy.mode = "forward"
    assert kernel.download().equals(expected)  # delivered again first: acknowledged, not applied twice
    link.close()


def test_an_upload_dropped_part_way_is_never_stepped_and_a_new_upload_repairs_it(proxy: Proxy) -> None:
    link = Link("tcp://proxied", *proxy.address, TOKEN.encode(), timeout=5.0)
    link.open()
    rng = np.random.default_rng(1)
    kernel = RemoteKernel(link, 256, DEFAULT, chunk=64)
    state = golden.random_state(rng, 256, DEFAULT)
    proxy.cut_after(P.PUT_STATE.size + 2 * P.state_bytes(64, DEFAULT.block))  # two chunks of four arrive
    with pytest.raises(BackendError, match="uploading the state failed: the connection was lost"):
        kernel.upload(state)
    G, eg = golden.random_grad(rng, 256, DEFAULT)
    sc = encode_step(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, step=1)
    with pytest.raises(BackendError, match=r"no valid state .* upload it again"):
        kernel.run(G, eg, sc, 0)
    kernel.upload(state)
    kernel.run(G, eg, sc, 0)
    kernel.commit()
    assert kernel.download().equals(golden.adam_step(state, G, eg, sc, 0, DEFAULT)[0])
    link.close()


def start_serve(token_file: Path, port: int = 0, timeout: float = 60.0) -> tuple[subprocess.Popen, int]:
    """`python -m hetadam.remote` on loopback; returns the process and its port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hetadam.remote", "--listen", f"127.0.0.1:{port}", "--token-file", str(token_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            assert proc.poll() is None, f"hetadam serve exited: {''.join(seen)}"
            continue
        seen.append(line)
        found = re.search(r"serving cpu on 127\.0\.0\.1:(\d+)", line)
        if found:
            return proc, int(found.group(1))
    proc.kill()
    raise AssertionError(f"hetadam serve did not start: {''.join(seen)}")


def test_a_server_killed_mid_step_applies_nothing_and_its_restart_asks_for_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = make_token(tmp_path / "token")
    monkeypatch.setenv("HETADAM_TOKEN", read_token_file(token_file).decode())
    proc, port = start_serve(token_file)
    proxy = Proxy(("127.0.0.1", port))
    try:
        local, reference, remote, opt, name = split_pair(proxy)
        train(local, reference, range(2))
        train(remote, opt, range(2))
        checkpoint = opt.state_dict()
        reference_checkpoint = reference.state_dict()
        before = snapshot(remote)
        proxy.mode = "hold-down"
        sent = proxy.up

        def kill_when_the_step_is_sent() -> None:
            wait_until(lambda: proxy.up > sent + 1000)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proxy.mode = "forward"

        killer = threading.Thread(target=kill_when_the_step_is_sent)
        killer.start()
        with pytest.raises(BackendError, match=re.escape(name)):
            train(remote, opt, range(2, 3))  # a full step (all gradients go to the server)
        killer.join()
        assert_same(before, remote)

        proc, _ = start_serve(token_file, port)  # restarted: the state is gone
        with pytest.raises(BackendError, match=r"no longer holds this optimizer.s state.*load_state_dict"):
            train(remote, opt, range(2, 3))
        assert_same(before, remote)
        opt.load_state_dict(checkpoint)
        reference.load_state_dict(reference_checkpoint)
        train(remote, opt, range(2, 7))
        train(local, reference, range(2, 7))
        assert_same(local, remote)
        opt.close()
    finally:
        proxy.close()
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=30) == 0  # stops cleanly on Ctrl-C
        finally:
            proc.kill()


def test_rtl_sim_behind_the_server_is_bit_exact_with_cpu_fixed(caplog: pytest.LogCaptureFixture) -> None:
    why = backends.availability("rtl-sim")
    if not why.usable:
        pytest.skip(f"rtl-sim is not usable here: {why.reason}. {why.remedy}")
    with Server(kernel_source("rtl-sim"), TOKEN.encode(), port=0, limits=Limits(frame_timeout=600)).start() as srv:
        local, remote = Model(), Model()
        reference = make("cpu", local)
        opt = make(name_of(srv.address, chunk=128, timeout=600), remote)
        train(local, reference, range(3))
        train(remote, opt, range(3))
        assert_same(local, remote)
        opt.close()
