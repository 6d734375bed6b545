"""The wire protocol between the `tcp://` backend and `hetadam serve`: frames,
messages, limits and the mutual authentication. NumPy and the standard library
only; nothing here evaluates what it receives (no pickle, eval or marshal).

Frames. Every message is one frame, a 12-byte header and then a payload:

    offset 0   magic    4 bytes   b"HTDM"
           4   version  u8        PROTOCOL_VERSION (a peer speaking another is refused)
           5   kind     u8        a Kind
           6   flags    u16       0 (reserved)
           8   length   u32       payload bytes

Integers and arrays are little-endian (x86 hosts and ARM boards alike). A
receiver checks magic, version, kind and flags, then the length against what
that kind may carry in the current phase (`payload_limit`: an exact size for
fixed messages; for array frames, the size the slot's chunk implies), before it
reads or allocates anything for the payload. A frame must arrive whole within
the receiver's frame timeout from its first byte.

Authentication (mutual; the token never crosses the wire):

    client -> HELLO      client nonce Nc (32 random bytes)
    server -> CHALLENGE  server nonce Ns, HMAC-SHA256(token, "hetadam/1 server" | Nc | Ns)
    client -> AUTH       HMAC-SHA256(token, "hetadam/1 client" | Ns | Nc)
    server -> WELCOME    what the server runs (or ERROR, then it closes)

Each side checks the other's proof with `hmac.compare_digest` over its own
fresh nonce, so a recorded exchange cannot be replayed, and neither side can be
used to compute the other's proof (the labels differ). Nothing after the
handshake is encrypted or signed: see docs/remote.md for the threat model.

Messages after WELCOME (c: client, s: server). Every request gets exactly one
terminal answer, OK or ERROR, after the data frames it asks for:

    c OPEN       (a new session)                 s SESSION id
    c RESUME     session id                      s SESSION id, or ERROR unknown-session
    c CLOSE      (ends the session: the server drops its state)
    c CREATE     slot, n, chunk, format (block, g_bits, m_bits, s_bits, p_frac):
                 a shard of n elements, run in chunks of `chunk` elements
    c FREE       slot
    c PUT_STATE  slot, pending, zeros, step; then one STATE frame per chunk
                 (none when `zeros`): the committed state, or with `pending`
                 the pending state of step `step`
    c GET_STATE  slot                          s STATE per chunk, then OK
    c STEP       slot, step, idx0, the step's scalars; then GRAD per chunk
                                               s PARAMS per chunk, then OK
    c COMMIT     slot, step                    s OK(1: applied now, 0: it already was)
    c DISCARD    slot, step
      STATE      slot, chunk index, P int32[c], M int16[c], S uint16[c], em int8[b], es int8[b]
      GRAD       slot, chunk index, G int16[c], eg int8[b]
      PARAMS     chunk index, saturated count, P int32[c]   (the pending parameters)

The client pipelines a step: it sends chunk k+1's GRAD while the server runs
chunk k and sends back chunk k-1's PARAMS.
"""

from __future__ import annotations

import contextlib
import enum
import hmac
import select
import socket
import struct
import time
from dataclasses import dataclass

import numpy as np

from ..numerics import FixedFormat
from ..numerics.formats import ALPHA_BITS, ALPHA_SHIFT_MAX, COEF_FRAC, EPS_BITS, RATIO_MAX, n_blocks
from ..numerics.scalars import EPS_EXP_MIN, StepScalars

MAGIC = b"HTDM"
PROTOCOL_VERSION = 1
HEADER = struct.Struct("<4sBBHI")
NONCE_BYTES = 32
MAX_CHUNK = 1 << 24
"""Elements per chunk at most: a STATE frame then carries 128 MiB."""
MAX_BLOCK = 1 << 12
MAX_TEXT = 2048
"""Bytes of an ERROR's message at most."""


class Kind(enum.IntEnum):
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    WELCOME = 4
    OPEN = 10
    RESUME = 11
    SESSION = 12
    CLOSE = 13
    CREATE = 20
    FREE = 21
    PUT_STATE = 30
    GET_STATE = 31
    STATE = 32
    STEP = 40
    GRAD = 41
    PARAMS = 42
    COMMIT = 50
    DISCARD = 51
    OK = 60
    ERROR = 61


class Code(enum.IntEnum):
    """Why a request failed (the ERROR message's first field)."""

    BAD_REQUEST = 1
    """The request was invalid; it changed nothing."""
    BUSY = 2
    """Another session is active; the server serves one at a time."""
    UNKNOWN_SESSION = 3
    """The server does not hold the session (it restarted, or another client replaced it)."""
    KERNEL = 4
    """The kernel failed; the request changed nothing."""
    AUTH = 5
    """The client's proof of the token was wrong."""
    STATE = 6
    """The slot has no valid state (an upload failed): upload it again."""


HELLO = struct.Struct(f"<{NONCE_BYTES}s")
CHALLENGE = struct.Struct(f"<{NONCE_BYTES}s32s")
AUTH = struct.Struct("<32s")
WELCOME = struct.Struct("<QI16s")
"""max_elements, max_chunk, the backend's name (ASCII, NUL-padded)."""
SESSION = struct.Struct("<16s")
"""RESUME and SESSION: a session id."""
EMPTY = struct.Struct("<")
"""OPEN and CLOSE."""
CREATE = struct.Struct("<IQIIBBBB")
"""slot, n, chunk, then the format: block, g_bits, m_bits, s_bits, p_frac."""
SLOT = struct.Struct("<I")
"""FREE and GET_STATE."""
PUT_STATE = struct.Struct("<IBBQ")
CHUNK = struct.Struct("<II")
"""The head of STATE and GRAD: slot, chunk index."""
SCALAR_FIELDS = ("beta1", "beta2", "eps_m", "eps_e", "alpha_m", "alpha_sh", "ratio_max", "lwd", "seed", "mode")
"""StepScalars on the wire, in this order (tests hold it to the dataclass)."""
STEP = struct.Struct(f"<IQQ{len(SCALAR_FIELDS)}q")
PARAMS = struct.Struct("<II")
STEP_REF = struct.Struct("<IQ")
"""COMMIT and DISCARD: slot, step."""
OK = struct.Struct("<B")
ERROR = struct.Struct("<H")
"""The head of ERROR; the message (UTF-8) follows."""

FIXED: dict[Kind, struct.Struct] = {
    Kind.HELLO: HELLO,
    Kind.CHALLENGE: CHALLENGE,
    Kind.AUTH: AUTH,
    Kind.WELCOME: WELCOME,
    Kind.OPEN: EMPTY,
    Kind.RESUME: SESSION,
    Kind.SESSION: SESSION,
    Kind.CLOSE: EMPTY,
    Kind.CREATE: CREATE,
    Kind.FREE: SLOT,
    Kind.PUT_STATE: PUT_STATE,
    Kind.GET_STATE: SLOT,
    Kind.STEP: STEP,
    Kind.COMMIT: STEP_REF,
    Kind.DISCARD: STEP_REF,
    Kind.OK: OK,
}
"""The payload layout of every message of a fixed size."""

_SCALAR_RANGES = {
    "beta1": (0, 1 << COEF_FRAC),
    "beta2": (0, 1 << COEF_FRAC),
    "eps_m": (0, 1 << EPS_BITS),
    "eps_e": (EPS_EXP_MIN, 128),
    "alpha_m": (0, 1 << ALPHA_BITS),
    "alpha_sh": (1, ALPHA_SHIFT_MAX + 1),
    "ratio_max": (0, RATIO_MAX + 1),
    "lwd": (0, 1 << 32),
    "seed": (0, 1 << 32),
    "mode": (0, 2),
}
"""[low, high) of each register value that scalars.encode_step can produce."""


class ProtocolError(Exception):
    """The peer broke the protocol (the message says how); the connection is unusable."""


class RemoteError(Exception):
    """The peer answered a request with ERROR."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# -- arrays -------------------------------------------------------------------


def state_layout(count: int, block: int) -> list[tuple[str, np.dtype, int]]:
    """The arrays of a STATE frame after its head: (name, dtype, length)."""
    nb = n_blocks(count, block)
    return [
        ("P", np.dtype("<i4"), count),
        ("M", np.dtype("<i2"), count),
        ("S", np.dtype("<u2"), count),
        ("em", np.dtype("i1"), nb),
        ("es", np.dtype("i1"), nb),
    ]


def state_bytes(count: int, block: int) -> int:
    return CHUNK.size + sum(dt.itemsize * k for _, dt, k in state_layout(count, block))


def grad_bytes(count: int, block: int) -> int:
    return CHUNK.size + 2 * count + n_blocks(count, block)


def params_bytes(count: int) -> int:
    return PARAMS.size + 4 * count


def split_arrays(buf: np.ndarray, layout: list[tuple[str, np.dtype, int]]) -> dict[str, np.ndarray]:
    """Views of the arrays laid out back to back in the uint8 buffer `buf`."""
    out, at = {}, 0
    for name, dt, k in layout:
        out[name] = buf[at : at + dt.itemsize * k].view(dt)
        at += dt.itemsize * k
    return out


def chunk_bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    """[lo, hi) of each chunk of n elements."""
    return [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]


# -- scalars and formats -----------------------------------------------------


def pack_scalars(sc: StepScalars) -> tuple[int, ...]:
    return tuple(getattr(sc, name) for name in SCALAR_FIELDS)


def unpack_scalars(values: tuple[int, ...]) -> StepScalars:
    """StepScalars from the wire; ValueError when one lies outside its register's range."""
    for name, v in zip(SCALAR_FIELDS, values, strict=True):
        lo, hi = _SCALAR_RANGES[name]
        if not lo <= v < hi:
            raise ValueError(f"step scalar {name}={v} lies outside [{lo}, {hi})")
    return StepScalars(**dict(zip(SCALAR_FIELDS, values, strict=True)))


def format_fields(fmt: FixedFormat) -> tuple[int, ...]:
    return fmt.block, fmt.g_bits, fmt.m_bits, fmt.s_bits, fmt.p_frac


def format_from_fields(block: int, g_bits: int, m_bits: int, s_bits: int, p_frac: int) -> FixedFormat:
    """ValueError when the format is invalid or its block is larger than MAX_BLOCK."""
    if block > MAX_BLOCK:
        raise ValueError(f"block size {block} is larger than {MAX_BLOCK}")
    return FixedFormat(block=block, g_bits=g_bits, m_bits=m_bits, s_bits=s_bits, p_frac=p_frac)


@dataclass(frozen=True)
class Welcome:
    """What the server says about itself after the handshake."""

    backend: str
    max_elements: int
    max_chunk: int

    def pack(self) -> bytes:
        return WELCOME.pack(self.max_elements, self.max_chunk, self.backend.encode("ascii")[:16])

    @classmethod
    def unpack(cls, payload: bytes) -> Welcome:
        max_elements, max_chunk, name = WELCOME.unpack(payload)
        return cls(name.rstrip(b"\0").decode("ascii", "replace"), max_elements, max_chunk)


# -- authentication ----------------------------------------------------------


def server_proof(token: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    return hmac.new(token, b"hetadam/1 server" + client_nonce + server_nonce, "sha256").digest()


def client_proof(token: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    return hmac.new(token, b"hetadam/1 client" + server_nonce + client_nonce, "sha256").digest()


def proof_matches(expected: bytes, received: bytes) -> bool:
    """Compare proofs in constant time."""
    return hmac.compare_digest(expected, received)


# -- the channel --------------------------------------------------------------


class Channel:
    """Frames over a connected TCP socket.

    Reads: `recv_header` waits up to `idle` seconds (None: for ever) for a
    frame to begin; from its first byte the whole frame (header and payload)
    must arrive within `frame_timeout`, or TimeoutError. Writes block at most
    `frame_timeout` per call (the socket's timeout). A closed connection raises
    ConnectionError. One thread may read while another writes.
    """

    def __init__(self, sock: socket.socket, *, frame_timeout: float) -> None:
        self.sock = sock
        self.frame_timeout = frame_timeout
        self.sent = 0
        self.received = 0
        """Bytes sent and received, headers included."""
        sock.settimeout(frame_timeout)
        if sock.family in (socket.AF_INET, socket.AF_INET6):  # small requests go out at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._deadline = 0.0

    # writes

    def send(self, kind: Kind, head: bytes = b"", *arrays: np.ndarray) -> None:
        """One frame: `head` (packed fields) then the arrays' bytes, without copying them."""
        views = [memoryview(np.ascontiguousarray(a)).cast("B") for a in arrays]
        length = len(head) + sum(v.nbytes for v in views)
        self._sendv([HEADER.pack(MAGIC, PROTOCOL_VERSION, kind, 0, length) + head, *views])

    def send_error(self, code: Code, message: str) -> None:
        self.send(Kind.ERROR, ERROR.pack(code) + message.encode()[:MAX_TEXT])

    def _sendv(self, buffers: list[bytes | memoryview]) -> None:
        total = sum(len(b) if isinstance(b, bytes) else b.nbytes for b in buffers)
        done = self.sock.sendmsg(buffers)
        if done < total:  # a partial write: send the rest buffer by buffer
            for b in buffers:
                mv = memoryview(b).cast("B")
                if done >= mv.nbytes:
                    done -= mv.nbytes
                    continue
                self.sock.sendall(mv[done:])
                done = 0
        self.sent += total

    # reads

    def recv_header(self, idle: float | None) -> tuple[Kind, int]:
        """The next frame's kind and payload length (checked by `expect`, not here)."""
        if not self._poll.poll(None if idle is None else max(idle, 0.0) * 1000):
            raise TimeoutError(f"no frame within {idle:g} s")
        self._deadline = time.monotonic() + self.frame_timeout
        raw = self.recv_exact(HEADER.size)
        magic, version, kind, flags, length = HEADER.unpack(raw)
        if magic != MAGIC:
            raise ProtocolError(f"not a hetadam frame (starts with {raw[:4]!r})")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {version}, this side speaks {PROTOCOL_VERSION}")
        if flags:
            raise ProtocolError(f"reserved flags set ({flags:#x})")
        try:
            return Kind(kind), length
        except ValueError:
            raise ProtocolError(f"unknown message kind {kind}") from None

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        self.recv_into(memoryview(buf))
        return bytes(buf)

    def recv_into(self, view: memoryview | np.ndarray) -> None:
        """Fill `view` from the frame being read, within its deadline."""
        mv = memoryview(view).cast("B")
        got = 0
        while got < mv.nbytes:
            left = self._deadline - time.monotonic()
            if left <= 0 or not self._poll.poll(left * 1000):
                raise TimeoutError(f"the peer stalled mid-frame (nothing for {self.frame_timeout:g} s)")
            k = self.sock.recv_into(mv[got:])
            if k == 0:
                raise ConnectionError("the peer closed the connection")
            got += k
        self.received += got

    def expect(self, kinds: dict[Kind, int], idle: float | None) -> tuple[Kind, bytes | None]:
        """The next frame, which must be one of `kinds` with a payload of at most
        the given size (exactly, for fixed-size kinds), else ProtocolError; the
        payload is read unless its limit is negative (then the caller reads
        -limit bytes itself: array frames). An ERROR frame raises RemoteError."""
        kind, length = self.recv_header(idle)
        if kind == Kind.ERROR and Kind.ERROR not in kinds:
            if not ERROR.size <= length <= ERROR.size + MAX_TEXT:
                raise ProtocolError(f"an ERROR frame of {length} bytes")
            raw = self.recv_exact(length)
            (code,) = ERROR.unpack(raw[: ERROR.size])
            raise RemoteError(code, raw[ERROR.size :].decode("utf-8", "replace"))
        if kind not in kinds:
            allowed = ", ".join(k.name for k in kinds)
            raise ProtocolError(f"unexpected {kind.name} frame (expected {allowed})")
        limit = kinds[kind]
        exact = kind in FIXED or limit < 0
        if (exact and length != abs(limit)) or length > abs(limit):
            raise ProtocolError(
                f"a {kind.name} frame of {length} bytes (the limit here is {abs(limit)}{' exactly' if exact else ''})"
            )
        if limit < 0:
            return kind, None
        return kind, self.recv_exact(length)

    def shutdown(self) -> None:
        """End the connection both ways; a thread blocked on it wakes with an error.
        Safe from any thread (unlike `close`, which only the owner calls)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.shutdown()
        self.sock.close()


def fixed(*kinds: Kind) -> dict[Kind, int]:
    """`expect` limits for fixed-size messages."""
    return {k: FIXED[k].size for k in kinds}
