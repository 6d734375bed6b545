"""The client side of `hetadam serve`: `Link`, the connection and session, and
`RemoteKernel`, a `FixedKernel` whose state stays on the server.

`FixedShard` (backends/base.py) quantises the gradient on the host, so a step
sends 2-byte mantissas and 1-byte block exponents and gets 4-byte parameters
back; the moments never cross the wire. The step is pipelined by chunks
(protocol.py): a sender thread streams chunk k+1's gradient while the server
runs chunk k and this thread receives chunk k-1's parameters.

Faults. A request that fails on the link (the server died, the link dropped or
stalled past `timeout`) raises BackendError naming the remote and drops the
connection; nothing is applied, since the server applies a step only when its
COMMIT arrives. The next request reconnects and resumes the session; when the
server no longer holds it (it restarted), every request says so until the
state is uploaded again (`load_state_dict` from a checkpoint), which opens a
new session. A COMMIT that cannot be delivered is retried once, then owed: the
host has applied the step, and the kernel delivers the commit before anything
else when the link is back (a repeated COMMIT is acknowledged, never applied
twice).

Needs neither torch nor numba.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ..kernels import BackendError, FixedKernel
from ..numerics import FixedFormat, FixedState
from ..numerics.formats import EXP_ZERO, n_blocks
from ..numerics.scalars import StepScalars
from . import protocol as P

T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0
CLOSE_TIMEOUT = 5.0
"""Seconds the server may take to answer FREE or CLOSE: closing never waits long on a stalled link."""
DEFAULT_CHUNK = 1 << 18
"""Elements per pipelined chunk: 0.5 MiB of gradient in, 1 MiB of parameters out."""
RESTORE = "restore the optimizer from a state_dict checkpoint (optimizer.load_state_dict(...))"


class SessionLost(BackendError):
    """The server no longer holds this client's state (it restarted, or another client replaced the session)."""


@dataclass
class LinkStats:
    """Bytes and seconds of the last step on the wire."""

    sent: int = 0
    received: int = 0
    seconds: float = 0.0


class Link:
    """One authenticated connection to a server and the session on it.

    Requests run one at a time (shards of several param groups may step at
    once). `generation` counts the sessions lost: a kernel whose slot belongs
    to an older generation must upload its state again.
    """

    def __init__(self, name: str, host: str, port: int, token: bytes, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.name = name
        self.host, self.port = host, port
        self.token = token
        self.timeout = timeout
        self.lock = threading.RLock()
        self.ch: P.Channel | None = None
        self.session: bytes | None = None
        self.generation = 0
        self.welcome: P.Welcome | None = None
        self._slots = 0
        self._closed = False

    def new_slot(self) -> int:
        with self.lock:
            self._slots += 1
            return self._slots

    @property
    def connected(self) -> bool:
        return self.ch is not None

    def request(self, what: str, fn: Callable[[P.Channel], T], *, new_session: bool = False) -> T:
        """Run `fn` on the connection (reconnecting and resuming first when needed).
        A failure of the link drops the connection and raises BackendError; an
        ERROR answer raises BackendError (or ValueError for a refused argument)
        and keeps it. `new_session`: open a new session when the old one is lost."""
        with self.lock:
            if self._closed:
                raise BackendError(f"backend {self.name!r} is closed")
            ch = self._connect(new_session)
            try:
                return fn(ch)
            except P.RemoteError as exc:
                raise self._remote_error(exc, what) from None
            except (OSError, P.ProtocolError) as exc:
                self.drop()
                raise BackendError(f"backend {self.name!r}: {what} failed: {_link_reason(exc, self.timeout)}") from exc
            except (BackendError, ValueError):
                raise  # raised before or after a whole exchange: the connection is in step
            except BaseException:  # Ctrl-C mid-exchange: the stream is out of step
                self.drop()
                raise

    def open(self) -> P.Welcome:
        """Connect, authenticate both ways and open (or resume) the session."""
        self.request("connecting", lambda ch: None, new_session=True)
        assert self.welcome is not None
        return self.welcome

    def _connect(self, new_session: bool) -> P.Channel:
        """The connection, made and authenticated, with the session resumed (or opened)."""
        if self.ch is not None:
            return self.ch
        if self.session is None and not new_session:
            raise SessionLost(f"backend {self.name!r}: the server lost this optimizer's state: {RESTORE}")
        ch = self._open_channel()
        try:
            if self.session is not None:
                try:
                    self._exchange_session(ch, P.Kind.RESUME, P.SESSION.pack(self.session))
                except P.RemoteError as exc:
                    if exc.code != P.Code.UNKNOWN_SESSION:
                        raise
                    ch.close()  # the server closes a connection whose RESUME it refused
                    self.session = None
                    self.generation += 1
                    if not new_session:
                        raise SessionLost(
                            f"backend {self.name!r}: the server no longer holds this optimizer's state "
                            f"(it restarted, or another client replaced the session): {RESTORE}"
                        ) from None
                    ch = self._open_channel()
            if self.session is None:
                self.session = self._exchange_session(ch, P.Kind.OPEN, b"")
        except P.RemoteError as exc:
            ch.close()
            raise self._remote_error(exc, "opening the session") from None
        except (OSError, P.ProtocolError) as exc:
            ch.close()
            raise BackendError(f"backend {self.name!r}: connecting failed: {_link_reason(exc, self.timeout)}") from exc
        self.ch = ch
        return ch

    def _open_channel(self) -> P.Channel:
        """A new connection, authenticated both ways."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise BackendError(
                f"backend {self.name!r}: cannot connect: {_link_reason(exc, self.timeout)}. "
                f"Is `hetadam serve` running there, and is port {self.port} open to this host?"
            ) from exc
        ch = P.Channel(sock, frame_timeout=self.timeout)
        try:
            self.welcome = self._authenticate(ch)
        except P.RemoteError as exc:
            ch.close()
            raise self._remote_error(exc, "authenticating") from None
        except (OSError, P.ProtocolError) as exc:
            ch.close()
            raise BackendError(
                f"backend {self.name!r}: authenticating failed: {_link_reason(exc, self.timeout)}"
            ) from exc
        except BaseException:
            ch.close()
            raise
        return ch

    def _authenticate(self, ch: P.Channel) -> P.Welcome:
        nonce = secrets.token_bytes(P.NONCE_BYTES)
        ch.send(P.Kind.HELLO, P.HELLO.pack(nonce))
        _, payload = ch.expect(P.fixed(P.Kind.CHALLENGE), self.timeout)
        server_nonce, proof = P.CHALLENGE.unpack(payload)
        if not P.proof_matches(P.server_proof(self.token, nonce, server_nonce), proof):
            raise BackendError(
                f"backend {self.name!r}: the server could not prove it holds our token: the tokens differ "
                "(copy the server's token file to this host) or this is not your hetadam server"
            )
        ch.send(P.Kind.AUTH, P.AUTH.pack(P.client_proof(self.token, nonce, server_nonce)))
        _, payload = ch.expect(P.fixed(P.Kind.WELCOME), self.timeout)
        return P.Welcome.unpack(payload)

    def _exchange_session(self, ch: P.Channel, kind: P.Kind, payload: bytes) -> bytes:
        ch.send(kind, payload)
        _, answer = ch.expect(P.fixed(P.Kind.SESSION), self.timeout)
        (sid,) = P.SESSION.unpack(answer)
        return sid

    def _remote_error(self, exc: P.RemoteError, what: str) -> Exception:
        message = f"backend {self.name!r}: {what} failed: the server says: {exc}"
        if exc.code == P.Code.BUSY:
            return BackendError(f"{message}. One client at a time: close the other optimizer first")
        if exc.code == P.Code.AUTH:
            return BackendError(f"{message}. Copy the server's token file to this host (see docs/remote.md)")
        if exc.code == P.Code.STATE:
            return BackendError(f"{message}; {RESTORE}")
        return BackendError(message)

    def drop(self) -> None:
        """Forget the connection (the session stays on the server for a resume)."""
        with self.lock:
            if self.ch is not None:
                self.ch.close()
                self.ch = None

    def close(self) -> None:
        """End the session (the server frees its state) and the connection."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            if self.ch is not None:
                try:
                    self.ch.send(P.Kind.CLOSE)
                    self.ch.expect(P.fixed(P.Kind.OK), min(self.timeout, CLOSE_TIMEOUT))
                except (OSError, P.ProtocolError, P.RemoteError):
                    pass  # the server drops a session it cannot reach when the next client opens one
            self.drop()
            self.session = None


class RemoteKernel(FixedKernel):
    """A FixedKernel whose resident state lives on the server (see the module docstring).

    The committed and pending parameters are mirrored here, so `params` and
    `pending_params` cost nothing on the wire."""

    def __init__(self, link: Link, n: int, fmt: FixedFormat, *, chunk: int = DEFAULT_CHUNK) -> None:
        if chunk < fmt.block or chunk % fmt.block or chunk > P.MAX_CHUNK:
            raise ValueError(
                f"chunk={chunk} must be a multiple of the block size {fmt.block} and at most {P.MAX_CHUNK}"
            )
        self.link, self.n, self.fmt, self.chunk = link, n, fmt, chunk
        self.bounds = P.chunk_bounds(n, chunk)
        self.slot = link.new_slot()
        self.generation = -1
        """The link generation the slot was created in (-1: not created yet)."""
        self._P = np.zeros(n, np.int32)
        self._pending_P = np.zeros(n, np.int32)
        self._pending: int | None = None
        self._owed_commit: int | None = None
        self._step = 0
        self.last = LinkStats()
        link.request("creating the shard", self._create, new_session=True)

    # -- FixedKernel -----------------------------------------------------------

    def upload(self, state: FixedState) -> None:
        def op(ch: P.Channel) -> None:
            if self.generation != self.link.generation:
                self._create(ch)
            zeros = _is_zero(state)
            ch.send(P.Kind.PUT_STATE, P.PUT_STATE.pack(self.slot, 0, zeros, 0))
            if not zeros:
                self._send_state(ch, state)
            ch.expect(P.fixed(P.Kind.OK), self.link.timeout)

        self.link.request("uploading the state", op, new_session=True)
        self._P[:] = state.P
        self._pending = self._owed_commit = None

    def download(self) -> FixedState:
        def op(ch: P.Channel) -> FixedState:
            self._settle(ch)
            ch.send(P.Kind.GET_STATE, P.SLOT.pack(self.slot))
            st = FixedState.zeros(self.n, self.fmt)
            B = self.fmt.block
            for i, (lo, hi) in enumerate(self.bounds):
                ch.expect({P.Kind.STATE: -P.state_bytes(hi - lo, B)}, self.link.timeout)
                self._check_head(ch, i)
                blocks = slice(lo // B, n_blocks(hi, B))
                for arr in (st.P[lo:hi], st.M[lo:hi], st.S[lo:hi], st.em[blocks], st.es[blocks]):
                    ch.recv_into(arr)
            ch.expect(P.fixed(P.Kind.OK), self.link.timeout)
            return st

        return self.link.request("downloading the state", op)

    def run(self, G: np.ndarray, eg: np.ndarray, sc: StepScalars, idx0: int) -> int:
        step = self._new_step()
        values = P.pack_scalars(sc)

        def op(ch: P.Channel) -> int:
            self._settle(ch)
            sent0, received0, t0 = ch.sent, ch.received, time.perf_counter()
            ch.send(P.Kind.STEP, P.STEP.pack(self.slot, step, idx0, *values))
            sender = _GradSender(ch, self.slot, self.bounds, G, eg, self.fmt.block)
            try:
                sat = 0
                for i, (lo, hi) in enumerate(self.bounds):
                    ch.expect({P.Kind.PARAMS: -P.params_bytes(hi - lo)}, self.link.timeout)
                    chunk, chunk_sat = P.PARAMS.unpack(ch.recv_exact(P.PARAMS.size))
                    if chunk != i:
                        raise P.ProtocolError(f"PARAMS for chunk {chunk}, expected chunk {i}")
                    ch.recv_into(self._pending_P[lo:hi])
                    sat += chunk_sat
                ch.expect(P.fixed(P.Kind.OK), self.link.timeout)
            except P.RemoteError:
                sender.join()  # the server reads the rest of the step's frames: the stream stays in step
                raise
            except BaseException:
                ch.shutdown()  # the connection is lost: unblock the sender
                sender.join()
                raise
            sender.join()
            if sender.error is not None:
                raise sender.error
            self.last = LinkStats(ch.sent - sent0, ch.received - received0, time.perf_counter() - t0)
            return sat

        sat = self.link.request("the step (not applied)", op)
        self._pending = step
        return sat

    def stage(self, state: FixedState) -> None:
        step = self._new_step()

        def op(ch: P.Channel) -> None:
            self._settle(ch)
            ch.send(P.Kind.PUT_STATE, P.PUT_STATE.pack(self.slot, 1, 0, step))
            self._send_state(ch, state)
            ch.expect(P.fixed(P.Kind.OK), self.link.timeout)

        self.link.request("staging the step (not applied)", op)
        self._pending_P[:] = state.P
        self._pending = step

    def commit(self) -> None:
        """Never raises: a commit the link cannot deliver now is owed (see the module docstring)."""
        if self._pending is None:
            return
        step, self._pending = self._pending, None
        self._P, self._pending_P = self._pending_P, self._P
        self._owed_commit = step
        for attempt in (1, 2):
            try:
                self.link.request("the commit", self._settle)
                return
            except BackendError as exc:
                if isinstance(exc, SessionLost) or attempt == 2:
                    warnings.warn(
                        f"{exc}; the commit of step {step} is owed and will be delivered first when "
                        f"{self.link.name} answers again",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    return

    def discard(self) -> None:
        """Drop the pending step; no reconnection (the server never applies a step without its COMMIT)."""
        step, self._pending = self._pending, None
        if step is None or not self.link.connected:
            return
        try:
            self.link.request("discarding the step", lambda ch: self._simple(ch, P.Kind.DISCARD, step))
        except BackendError:
            pass  # the next step replaces the pending one on the server

    def params(self) -> np.ndarray:
        return self._P

    def pending_params(self) -> np.ndarray:
        return self._pending_P

    def close(self) -> None:
        if not self.link.connected or self.generation != self.link.generation:
            return
        try:
            self.link.request("freeing the shard", lambda ch: self._simple(ch, P.Kind.FREE, idle=CLOSE_TIMEOUT))
        except BackendError:
            pass  # the session's end frees it

    # -- internals -------------------------------------------------------------

    def _create(self, ch: P.Channel) -> None:
        ch.send(P.Kind.CREATE, P.CREATE.pack(self.slot, self.n, self.chunk, *P.format_fields(self.fmt)))
        try:
            ch.expect(P.fixed(P.Kind.OK), self.link.timeout)
        except P.RemoteError as exc:
            if exc.code == P.Code.BAD_REQUEST:
                raise ValueError(f"backend {self.link.name!r} refused the shard: {exc}") from None
            raise
        self.generation = self.link.generation
        self._owed_commit = self._pending = None

    def _settle(self, ch: P.Channel) -> None:
        """Check the slot is alive and deliver an owed commit."""
        if self.generation != self.link.generation:
            raise SessionLost(f"backend {self.link.name!r}: the server lost this shard's state: {RESTORE}")
        if self._owed_commit is not None:
            applied_now = self._simple(ch, P.Kind.COMMIT, self._owed_commit)
            del applied_now  # 1: applied now; 0: it was already (the answer to an earlier try was lost)
            self._owed_commit = None

    def _simple(self, ch: P.Channel, kind: P.Kind, step: int | None = None, idle: float | None = None) -> int:
        """A request with a fixed-size payload answered by OK; returns OK's flag."""
        ch.send(kind, P.SLOT.pack(self.slot) if step is None else P.STEP_REF.pack(self.slot, step))
        _, payload = ch.expect(P.fixed(P.Kind.OK), min(self.link.timeout, idle or self.link.timeout))
        return P.OK.unpack(payload)[0]

    def _new_step(self) -> int:
        """A new step id; whatever was pending is replaced by it on the server."""
        self._pending = None
        self._step += 1
        return self._step

    def _send_state(self, ch: P.Channel, st: FixedState) -> None:
        B = self.fmt.block
        for i, (lo, hi) in enumerate(self.bounds):
            blocks = slice(lo // B, n_blocks(hi, B))
            arrays = (st.P[lo:hi], st.M[lo:hi], st.S[lo:hi], st.em[blocks], st.es[blocks])
            layout = P.state_layout(hi - lo, B)
            wire = [np.asarray(a, dt) for a, (_, dt, _) in zip(arrays, layout, strict=True)]
            ch.send(P.Kind.STATE, P.CHUNK.pack(self.slot, i), *wire)

    def _check_head(self, ch: P.Channel, i: int) -> None:
        slot, chunk = P.CHUNK.unpack(ch.recv_exact(P.CHUNK.size))
        if (slot, chunk) != (self.slot, i):
            raise P.ProtocolError(f"STATE for slot {slot} chunk {chunk}, expected slot {self.slot} chunk {i}")


class _GradSender:
    """Streams a step's GRAD frames on its own thread."""

    def __init__(
        self, ch: P.Channel, slot: int, bounds: list[tuple[int, int]], G: np.ndarray, eg: np.ndarray, block: int
    ) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._send, args=(ch, slot, bounds, G, eg, block), name="hetadam-grads", daemon=True
        )
        self.thread.start()

    def _send(
        self, ch: P.Channel, slot: int, bounds: list[tuple[int, int]], G: np.ndarray, eg: np.ndarray, block: int
    ) -> None:
        G = np.asarray(G, "<i2")
        eg = np.asarray(eg, np.int8)
        try:
            for i, (lo, hi) in enumerate(bounds):
                ch.send(P.Kind.GRAD, P.CHUNK.pack(slot, i), G[lo:hi], eg[lo // block : n_blocks(hi, block)])
        except BaseException as exc:
            self.error = exc
            ch.shutdown()  # the receiver then fails too, instead of waiting for answers

    def join(self) -> None:
        self.thread.join()


def _is_zero(st: FixedState) -> bool:
    """Whether `st` is FixedState.zeros (sent as a flag, not as arrays)."""
    return not (st.P.any() or st.M.any() or st.S.any()) and bool(
        (st.em == EXP_ZERO).all() and (st.es == EXP_ZERO).all()
    )


def _link_reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s (the link or the server stalled)"
    if isinstance(exc, ConnectionError):
        return f"the connection was lost ({exc or type(exc).__name__}: the server stopped or the link dropped)"
    return f"{type(exc).__name__}: {exc}"
