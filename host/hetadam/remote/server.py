"""`hetadam serve`: one `fixed` backend served to remote optimizers over TCP.

The server holds at most one session: the resident state of one client's
shards (slots), each cut into chunks of its own kernel so that a step can be
pipelined chunk by chunk (protocol.py). A session outlives its connection: a
client whose link dropped reconnects and RESUMEs it (a resume takes over a
connection the server still believes alive); a new OPEN replaces a detached
session; CLOSE ends it. While a connection holds the session, any other is
refused as busy.

Every connection is authenticated first (protocol.py), and every frame is
bounded before anything is allocated for it and must arrive whole within the
frame timeout; a peer that breaks a rule is disconnected with a logged reason,
and the server goes on serving. Requests are answered in order; kernel calls
run on one kernel thread.

The two-phase step: STEP computes a pending state (all chunks) beside the
committed one and sends the pending parameters back; only COMMIT with that
step's id makes it current, once: a repeated COMMIT of the committed step is
acknowledged without applying anything. A failed or abandoned step is
discarded, so the committed state never holds part of a step.

Imports neither torch nor numba (see devices.py for the backends that do).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..kernels import FixedKernel
from ..numerics import FixedState
from . import protocol as P
from .devices import KernelSource
from .pipeline import Slot, StepPipeline, drain_grads

log = logging.getLogger("hetadam.serve")
T = TypeVar("T")

DEFAULT_PORT = 7000
REQUESTS = P.fixed(
    P.Kind.CLOSE,
    P.Kind.CREATE,
    P.Kind.FREE,
    P.Kind.PUT_STATE,
    P.Kind.GET_STATE,
    P.Kind.STEP,
    P.Kind.COMMIT,
    P.Kind.DISCARD,
)


@dataclass(frozen=True)
class Limits:
    """What one client may ask of the server."""

    max_elements: int = 1 << 27
    """Elements of all slots of the session together (the server's memory)."""
    max_chunk: int = P.MAX_CHUNK
    frame_timeout: float = 30.0
    """Seconds a frame may take from its first byte to its last (and a write to the peer)."""
    handshake_timeout: float = 10.0
    """Seconds a new connection may take to authenticate and open or resume its session."""
    max_connecting: int = 8
    """Connections that may be authenticating at once; more are closed at once."""


class Refused(Exception):
    """A connection is refused (the message is the logged reason)."""


class Failed(Exception):
    """A request failed without breaking the connection; answered with ERROR."""

    def __init__(self, code: P.Code, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Session:
    id: bytes
    peer: str
    slots: dict[int, Slot] = field(default_factory=dict)
    steps: int = 0
    channel: P.Channel | None = None
    """The connection that holds the session (None: detached)."""

    @property
    def tag(self) -> str:
        return self.id.hex()[:8]

    def elements(self) -> int:
        return sum(s.n for s in self.slots.values())


class Server:
    """Serve `source`'s kernels on host:port to clients that hold `token`."""

    def __init__(
        self,
        source: KernelSource,
        token: bytes,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        limits: Limits = Limits(),
    ) -> None:
        self.source = source
        self.token = token
        self.limits = limits
        self.listener = socket.create_server((host, port))
        self.listener.settimeout(0.2)
        self.kernel_thread = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hetadam-kernel")
        try:
            self._k(source.open)
        except BaseException:
            self.kernel_thread.shutdown()
            self.listener.close()
            raise
        self.session: Session | None = None
        self._lock = threading.Condition()
        self._connecting = threading.BoundedSemaphore(limits.max_connecting)
        self._stop = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._channels: set[P.Channel] = set()
        self._accepting: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return host, port

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Server:
        """Serve on a background thread; `stop` ends it."""
        self._accepting = threading.Thread(target=self.serve_forever, name="hetadam-serve", daemon=True)
        self._accepting.start()
        return self

    def serve_forever(self) -> None:
        host, port = self.address
        log.info("serving %s on %s:%d", self.source.name, host, port)
        while not self._stop.is_set():
            try:
                sock, addr = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                raise
            peer = f"{addr[0]}:{addr[1]}"
            if not self._connecting.acquire(blocking=False):
                log.warning("refused %s: %d connections are authenticating already", peer, self.limits.max_connecting)
                sock.close()
                continue
            t = threading.Thread(target=self._connection, args=(sock, peer), name=f"hetadam-{peer}", daemon=True)
            with self._lock:
                self._threads.add(t)
            t.start()

    def stop(self) -> None:
        """Stop accepting, disconnect the client, release the session and the device (once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._accepting is not None and self._accepting is not threading.current_thread():
            self._accepting.join()
        self.listener.close()
        with self._lock:
            threads = list(self._threads)
            for ch in self._channels:
                ch.shutdown()
        for t in threads:
            t.join()
        with self._lock:
            session, self.session = self.session, None
        if session is not None:
            self._free(session)
        self._k(self.source.close)
        self.kernel_thread.shutdown()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- connections -------------------------------------------------------------

    def _connection(self, sock: socket.socket, peer: str) -> None:
        ch = P.Channel(sock, frame_timeout=self.limits.frame_timeout)
        _keepalive(sock)
        with self._lock:
            self._channels.add(ch)
        session: Session | None = None
        try:
            try:
                self._authenticate(ch)
                session = self._attach(ch, peer)
            finally:
                self._connecting.release()
            self._serve(ch, session)
        except Refused as exc:
            log.warning("refused %s: %s", peer, exc)
        except (P.ProtocolError, P.RemoteError, TimeoutError, OSError) as exc:
            if session is None:
                log.warning("refused %s: %s", peer, _reason(exc))
            elif not self._stop.is_set():
                log.warning("session %s detached from %s: %s; held for a resume", session.tag, peer, _reason(exc))
        except Exception:
            log.exception("session with %s failed", peer)
        finally:
            with self._lock:  # detach before closing: a client that sees the close finds the session free
                if session is not None and session.channel is ch:
                    session.channel = None
                self._channels.discard(ch)
                self._threads.discard(threading.current_thread())
                self._lock.notify_all()
            ch.close()

    def _authenticate(self, ch: P.Channel) -> None:
        idle = self.limits.handshake_timeout
        _, payload = ch.expect(P.fixed(P.Kind.HELLO), idle)
        (client_nonce,) = P.HELLO.unpack(payload)
        server_nonce = secrets.token_bytes(P.NONCE_BYTES)
        ch.send(
            P.Kind.CHALLENGE, P.CHALLENGE.pack(server_nonce, P.server_proof(self.token, client_nonce, server_nonce))
        )
        _, payload = ch.expect(P.fixed(P.Kind.AUTH), idle)
        (proof,) = P.AUTH.unpack(payload)
        if not P.proof_matches(P.client_proof(self.token, client_nonce, server_nonce), proof):
            ch.send_error(P.Code.AUTH, "authentication failed: the client's token is not this server's")
            raise Refused("authentication failed (wrong token)")
        welcome = P.Welcome(self.source.name, self.limits.max_elements, self.limits.max_chunk)
        ch.send(P.Kind.WELCOME, welcome.pack())

    def _attach(self, ch: P.Channel, peer: str) -> Session:
        """The session this connection opens or resumes (OPEN or RESUME, answered with SESSION)."""
        kind, payload = ch.expect(P.fixed(P.Kind.OPEN, P.Kind.RESUME), self.limits.handshake_timeout)
        assert payload is not None
        with self._lock:
            current = self.session
            if kind == P.Kind.RESUME:
                (sid,) = P.SESSION.unpack(payload)
                if current is None or current.id != sid:
                    ch.send_error(P.Code.UNKNOWN_SESSION, "this server does not hold that session (it restarted?)")
                    raise Refused(f"asked to resume session {sid.hex()[:8]}, which this server does not hold")
                if current.channel is not None:  # the old connection is dead to its client: take over
                    current.channel.shutdown()
                    if not self._lock.wait_for(lambda: current.channel is None, self.limits.frame_timeout):
                        ch.send_error(P.Code.BUSY, "the session's previous connection is still finishing a request")
                        raise Refused(f"session {current.tag}'s previous connection did not end")
                current.channel, current.peer = ch, peer
                ch.send(P.Kind.SESSION, P.SESSION.pack(current.id))
                log.info("session %s resumed by %s", current.tag, peer)
                return current
            if current is not None and current.channel is not None:
                ch.send_error(P.Code.BUSY, f"busy: serving another session (from {current.peer})")
                raise Refused(f"busy: session {current.tag} from {current.peer} is active")
            if current is not None:
                log.info("session %s (detached) replaced by a new session from %s", current.tag, peer)
                self._free(current)
            session = Session(secrets.token_bytes(16), peer, channel=ch)
            self.session = session
        ch.send(P.Kind.SESSION, P.SESSION.pack(session.id))
        log.info("session %s opened by %s", session.tag, peer)
        return session

    def _serve(self, ch: P.Channel, session: Session) -> None:
        handlers: dict[P.Kind, Callable[[P.Channel, Session, bytes], None]] = {
            P.Kind.CREATE: self._create,
            P.Kind.FREE: self._free_slot,
            P.Kind.PUT_STATE: self._put_state,
            P.Kind.GET_STATE: self._get_state,
            P.Kind.STEP: self._step,
            P.Kind.COMMIT: self._commit,
            P.Kind.DISCARD: self._discard,
        }
        while True:
            kind, payload = ch.expect(REQUESTS, idle=None)
            assert payload is not None
            if kind == P.Kind.CLOSE:
                with self._lock:
                    if self.session is session:
                        self.session = None
                self._free(session)
                ch.send(P.Kind.OK, P.OK.pack(0))
                log.info("session %s closed by %s after %d steps", session.tag, session.peer, session.steps)
                return
            try:
                handlers[kind](ch, session, payload)
            except Failed as exc:
                ch.send_error(exc.code, str(exc))

    # -- requests --------------------------------------------------------------

    def _k(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the kernel thread."""
        return self.kernel_thread.submit(fn, *args).result()

    def _kernel_call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """A kernel call whose failure fails the request (not the connection)."""
        try:
            return self._k(fn, *args)
        except Exception as exc:
            raise Failed(P.Code.KERNEL, f"{self.source.name}: {what} failed: {type(exc).__name__}: {exc}") from exc

    def _slot(self, session: Session, index: int, *, valid: bool = True) -> Slot:
        slot = session.slots.get(index)
        if slot is None:
            raise Failed(P.Code.BAD_REQUEST, f"no slot {index} in this session")
        if valid and not slot.valid:
            raise Failed(P.Code.STATE, f"slot {index} has no valid state (an upload failed): upload it again")
        return slot

    def _create(self, ch: P.Channel, session: Session, payload: bytes) -> None:
        index, n, chunk, *fields = P.CREATE.unpack(payload)
        try:
            fmt = P.format_from_fields(*fields)
        except ValueError as exc:
            raise Failed(P.Code.BAD_REQUEST, f"invalid format: {exc}") from None
        if index in session.slots:
            raise Failed(P.Code.BAD_REQUEST, f"slot {index} exists already")
        if n > self.limits.max_elements - session.elements():
            raise Failed(
                P.Code.BAD_REQUEST,
                f"{n} more elements would exceed this server's limit of {self.limits.max_elements} per session",
            )
        if not fmt.block <= chunk <= self.limits.max_chunk or chunk % fmt.block:
            raise Failed(
                P.Code.BAD_REQUEST,
                f"chunk={chunk} must be a multiple of the block size {fmt.block} and at most {self.limits.max_chunk}",
            )
        bounds = P.chunk_bounds(n, chunk)
        kernels: list[FixedKernel] = []
        try:
            for lo, hi in bounds:
                kernels.append(self._kernel_call("creating a kernel", self.source.new, hi - lo, fmt))
                self._kernel_call("zeroing a kernel", kernels[-1].upload, FixedState.zeros(hi - lo, fmt))
        except Failed:
            for k in kernels:
                self._k(k.close)
            raise
        session.slots[index] = Slot(n, fmt, bounds, kernels)
        ch.send(P.Kind.OK, P.OK.pack(0))

    def _free_slot(self, ch: P.Channel, session: Session, payload: bytes) -> None:
        (index,) = P.SLOT.unpack(payload)
        slot = session.slots.pop(index, None)
        if slot is not None:
            for k in slot.kernels:
                self._k(k.close)
        ch.send(P.Kind.OK, P.OK.pack(0))

    def _put_state(self, ch: P.Channel, session: Session, payload: bytes) -> None:
        index, pending, zeros, step = P.PUT_STATE.unpack(payload)
        slot = session.slots.get(index)
        if slot is None:  # the STATE frames that follow cannot be sized: the stream is lost
            ch.send_error(P.Code.BAD_REQUEST, f"no slot {index} in this session")
            raise P.ProtocolError(f"PUT_STATE for slot {index}, which does not exist")
        error: Failed | None = None
        if pending and not slot.valid:
            error = Failed(P.Code.STATE, f"slot {index} has no valid state (an upload failed): upload it again")
        elif pending and step <= slot.last_step:
            error = Failed(P.Code.BAD_REQUEST, f"step {step} is not new on slot {index} (last: {slot.last_step})")
        elif pending:
            slot.pending, slot.last_step = None, step
        else:  # until every chunk is in, a half-uploaded state is neither stepped nor committed
            slot.valid, slot.pending = False, None
        fmt = slot.fmt
        for i, (lo, hi) in enumerate(slot.bounds):
            if zeros:
                st = FixedState.zeros(hi - lo, fmt)
            else:
                ch.expect({P.Kind.STATE: -P.state_bytes(hi - lo, fmt.block)}, idle=self.limits.frame_timeout)
                st = _recv_state(ch, index, i, hi - lo, fmt.block)
            if error is None:
                try:
                    self._kernel_call("staging" if pending else "uploading", _put, slot.kernels[i], st, pending)
                except Failed as exc:
                    error = exc
        if error is not None:
            if pending and error.code == P.Code.KERNEL:
                for k in slot.kernels:
                    self._k(k.discard)
            raise error
        if pending:
            slot.pending = step
        else:
            slot.valid, slot.pending = True, None
        ch.send(P.Kind.OK, P.OK.pack(0))

    def _get_state(self, ch: P.Channel, session: Session, payload: bytes) -> None:
        (index,) = P.SLOT.unpack(payload)
        slot = self._slot(session, index)
        for i, kernel in enumerate(slot.kernels):
            st = self._kernel_call("downloading", kernel.download)
            ch.send(P.Kind.STATE, P.CHUNK.pack(index, i), st.P, st.M, st.S, st.em, st.es)
        ch.send(P.Kind.OK, P.OK.pack(0))

    def _step(self, ch: P.Channel, session: Session, payload: bytes) -> None:
        index, step, idx0, *values = P.STEP.unpack(payload)
        slot = session.slots.get(index)
        if slot is None:  # the GRAD frames that follow cannot be sized: the stream is lost
            ch.send_error(P.Code.BAD_REQUEST, f"no slot {index} in this session")
            raise P.ProtocolError(f"STEP for slot {index}, which does not exist")
        try:
            if not slot.valid:
                raise Failed(P.Code.STATE, f"slot {index} has no valid state (an upload failed): upload it again")
            if step <= slot.last_step:
                raise Failed(P.Code.BAD_REQUEST, f"step {step} is not new on slot {index} (last: {slot.last_step})")
            if idx0 % slot.fmt.block:
                raise Failed(P.Code.BAD_REQUEST, f"idx0={idx0} is not a multiple of the block size {slot.fmt.block}")
            try:
                sc = P.unpack_scalars(tuple(values))
            except ValueError as exc:
                raise Failed(P.Code.BAD_REQUEST, str(exc)) from None
        except Failed as exc:
            ch.send_error(exc.code, str(exc))
            drain_grads(ch, index, slot, self.limits.frame_timeout)
            return
        slot.last_step = step
        slot.pending = None
        pipeline = StepPipeline(
            ch,
            index,
            slot,
            sc,
            idx0,
            kernel_thread=self.kernel_thread,
            frame_timeout=self.limits.frame_timeout,
            backend=self.source.name,
        )
        if pipeline.run():
            slot.pending = step

    def _commit(self, ch: P.Channel, session: Session, payload: bytes) -> None:
        index, step = P.STEP_REF.unpack(payload)
        slot = self._slot(session, index, valid=False)
        if slot.pending == step:
            try:
                for k in slot.kernels:
                    self._kernel_call("commit", k.commit)
            except Failed:
                slot.valid = False  # some chunks moved on, others did not
                raise
            slot.pending, slot.committed = None, step
            session.steps += 1
            ch.send(P.Kind.OK, P.OK.pack(1))
        elif slot.committed == step:
            ch.send(P.Kind.OK, P.OK.pack(0))  # a retried commit: applied once already
        else:
            raise Failed(
                P.Code.BAD_REQUEST,
                f"step {step} is not pending on slot {index} "
                f"(pending: {slot.pending}, last committed: {slot.committed})",
            )

    def _discard(self, ch: P.Channel, session: Session, payload: bytes) -> None:
        index, step = P.STEP_REF.unpack(payload)
        slot = self._slot(session, index, valid=False)
        if slot.committed == step and step:
            raise Failed(P.Code.BAD_REQUEST, f"step {step} of slot {index} is committed already")
        if slot.pending == step:
            for k in slot.kernels:
                self._k(k.discard)
            slot.pending = None
        ch.send(P.Kind.OK, P.OK.pack(0))

    def _free(self, session: Session) -> None:
        for slot in session.slots.values():
            for k in slot.kernels:
                self._k(k.close)
        session.slots.clear()


def _put(kernel: FixedKernel, state: FixedState, pending: bool) -> None:
    if pending:
        kernel.stage(state)
    else:
        kernel.upload(state)


def _recv_state(ch: P.Channel, index: int, i: int, count: int, block: int) -> FixedState:
    buf = np.empty(P.state_bytes(count, block), np.uint8)
    ch.recv_into(buf)
    slot_index, chunk = P.CHUNK.unpack(buf[: P.CHUNK.size].tobytes())
    if (slot_index, chunk) != (index, i):
        raise P.ProtocolError(f"STATE for slot {slot_index} chunk {chunk}, expected {index} chunk {i}")
    a = P.split_arrays(buf[P.CHUNK.size :], P.state_layout(count, block))
    return FixedState(P=a["P"], M=a["M"], em=a["em"], S=a["S"], es=a["es"])


def _keepalive(sock: socket.socket) -> None:
    """Probe an idle connection so that a vanished peer (power cut, cable pulled)
    frees the session for a resume after about two minutes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionError | P.ProtocolError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
