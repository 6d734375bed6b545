"""The transport to the RTL in simulation: a socket to sim/rtl_server.py.

The simulator process (Verilator + cocotb, started by backends/rtl_sim.py)
connects to a Unix socket the host listens on and serves requests one at a
time; simulated time only advances while it serves one. Every request is a
fixed header, `<BQQ`: op, a, b, followed for MEM_WRITE by b bytes. Every
answer is `<BQ`: status, value, followed for MEM_READ (and for errors) by
`value` bytes.

    READ32    a = register offset                  -> value
    WRITE32   a = register offset, b = value
    MEM_WRITE a = address, b = length, then bytes
    MEM_READ  a = address, b = length              -> bytes
    WAIT_IRQ  a = timeout in ms                    -> 1 raised, 0 timed out
    QUIT                                           (the simulation ends)

A MEM_WRITE or MEM_READ moves MAX_TRANSFER bytes at most: the server refuses
a longer one before it allocates anything, and the transport splits larger
buffers. A request interrupted half-way (Ctrl-C while its answer is on the
way) leaves the two ends out of step, so the transport closes the connection
and every later call says so.

Host-side buffers are NumPy arrays; the transport hands out device addresses
from a bump allocator (4 KiB aligned, above 4 GiB so both address words
matter) and copies bytes on sync.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import numpy as np

from . import Buffer, DriverError, Transport

SOCKET_ENV = "HETADAM_RTL_SOCKET"
"""Environment variable that tells the simulator where the host listens."""

READ32, WRITE32, MEM_WRITE, MEM_READ, WAIT_IRQ, QUIT = range(1, 7)
REQUEST = struct.Struct("<BQQ")
ANSWER = struct.Struct("<BQ")
OK, ERROR = 0, 1
ALIGN = 4096
MAX_TRANSFER = 1 << 26
"""Bytes one MEM_WRITE or MEM_READ moves at most (64 MiB)."""
INTERRUPTED = "the simulator connection was interrupted mid-request and closed; create a new optimizer/backend"


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """n bytes from `sock`; ConnectionError when the peer closed it first."""
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class SimTransport(Transport):
    """Client of the simulator's socket; every read is bounded by `timeout` seconds.

    `context` is called to describe the simulator (exit status, log tail)
    when the connection fails, so the error says why."""

    name = "rtl-sim"
    interrupts = True

    def __init__(
        self,
        conn: socket.socket,
        *,
        timeout: float = 60.0,
        base: int = 0x1_0000_0000,
        context: Callable[[], str] = lambda: "",
    ) -> None:
        self.conn = conn
        self.timeout = timeout
        self.context = context
        self._next = base
        self.closed = False
        self._closed_because = "the simulator connection is closed"

    def _call(
        self, op: int, a: int = 0, b: int = 0, payload: bytes | memoryview = b"", timeout: float | None = None
    ) -> bytes:
        if self.closed:
            raise DriverError(self._closed_because)
        try:
            self.conn.settimeout(timeout or self.timeout)
            self.conn.sendall(REQUEST.pack(op, a, b))
            if payload:
                self.conn.sendall(payload)
            status, value = ANSWER.unpack(recv_exact(self.conn, ANSWER.size))
            data = recv_exact(self.conn, value) if op == MEM_READ or status != OK else value.to_bytes(8, "little")
        except TimeoutError as exc:
            limit = timeout or self.timeout
            self._close_after(f"the simulator did not answer within {limit:g} s")
            raise DriverError(f"the simulator did not answer within {limit:g} s{self.context()}") from exc
        except OSError as exc:
            self._close_after(f"lost the simulator ({exc})")
            raise DriverError(f"lost the simulator ({exc}){self.context()}") from exc
        except BaseException:  # KeyboardInterrupt, SystemExit: an answer may still be on its way
            self._closed_because = INTERRUPTED
            self.closed = True
            self.conn.close()  # the simulator sees the host leave and ends
            raise
        if status != OK:
            raise DriverError(f"the simulator failed: {data.decode(errors='replace')}")
        if op == MEM_READ and len(data) != b:
            self._close_after(f"a MEM_READ of {b} bytes was answered with {len(data)}")
            raise DriverError(f"protocol violation: a MEM_READ of {b} bytes was answered with {len(data)}")
        return data

    def _close_after(self, failure: str) -> None:
        self._closed_because = f"the simulator connection was closed after an earlier failure ({failure})"
        self.closed = True

    def read32(self, offset: int) -> int:
        return int.from_bytes(self._call(READ32, offset), "little") & 0xFFFF_FFFF

    def write32(self, offset: int, value: int) -> None:
        self._call(WRITE32, offset, value & 0xFFFF_FFFF)

    def allocate(self, n: int, dtype: np.dtype | type) -> Buffer:
        array = np.zeros(n, dtype)
        address = self._next
        self._next += max(-(-array.nbytes // ALIGN), 1) * ALIGN
        return Buffer(array, address)

    def sync_to_device(self, buf: Buffer) -> None:
        data = memoryview(np.ascontiguousarray(buf.array)).cast("B")
        for lo in range(0, len(data), MAX_TRANSFER):
            piece = data[lo : lo + MAX_TRANSFER]
            self._call(MEM_WRITE, buf.address + lo, len(piece), piece)

    def sync_from_device(self, buf: Buffer) -> None:
        data = memoryview(buf.array.reshape(-1).view(np.uint8))
        for lo in range(0, len(data), MAX_TRANSFER):
            hi = min(lo + MAX_TRANSFER, len(data))
            data[lo:hi] = self._call(MEM_READ, buf.address + lo, hi - lo)

    def wait_interrupt(self, timeout: float) -> bool:
        raised = self._call(WAIT_IRQ, round(timeout * 1000), timeout=timeout + self.timeout)
        return raised[0] == 1

    def close(self) -> None:
        """Ask the simulation to end; the process owner reaps it."""
        if not self.closed:
            try:
                self.conn.settimeout(5.0)
                self.conn.sendall(REQUEST.pack(QUIT, 0, 0))
            except OSError:
                pass
            self.closed = True
        self.conn.close()
