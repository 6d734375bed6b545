"""The transport to the RTL in simulation: a compiled Verilator harness, in-process.

sim/verilator/harness.cpp wraps the Verilator model of `hetadam_adam` with an
AXI4-Lite master, four AXI4 slaves over one sparse memory and the interrupt
line; hetadam.hdl.verilator builds it into a shared library, loaded here
through ctypes. `SimTransport` maps the Transport calls to it: a register read
or write is one AXI4-Lite transaction on the simulated bus, `sync_to_device`
and `sync_from_device` copy bytes between the host views and the simulated
memory, `wait_interrupt` clocks the model until the interrupt line rises.
Simulated time only passes inside these calls, and each call returns with
every bus transaction it began complete, so an interruption (Ctrl-C) between
two calls leaves the device in step. A run the host started and left that way
is finished by the next buffer transfer, before it copies anything (on a
board it would have finished while the host was away); the clear-on-read bits
that run leaves are kept for the host's next read of CTRL.

Polling. A read of CTRL that finds the kernel running (ap_start set or
ap_idle clear, and neither ap_done nor ap_ready) is repeated in the harness,
a real bus read every 16 to 1024 clocks, until it sees the run end or a
quarter of a second of wall time passes: the driver's polling loop, run in C.
The clear-on-read bits are never lost: the read that sees one returns it.

Host-side buffers are NumPy arrays; device addresses come from a bump
allocator (4 KiB aligned, above 4 GiB so both address words matter).
Calls release the GIL: different devices can run on different threads; one
device serves one thread at a time (a lock holds the others back).
"""

from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path

import numpy as np

from .. import regmap
from . import Buffer, DriverError, Transport

ALIGN = 4096
POLL_SLICE = 0.25
"""Seconds one read of a busy CTRL may simulate before it returns what it read."""
CLOSED = "the simulated device is closed; create a new optimizer/backend"

_u32, _u64, _dev = ctypes.c_uint32, ctypes.c_uint64, ctypes.c_void_p
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "hx_open": (_dev, [_u32, _u32, _u32, _u32, ctypes.c_char_p, ctypes.c_size_t]),
    "hx_close": (None, [_dev]),
    "hx_error": (ctypes.c_char_p, [_dev]),
    "hx_cycles": (_u64, [_dev]),
    "hx_data_bytes": (ctypes.c_uint, [ctypes.c_int]),
    "hx_write32": (ctypes.c_int, [_dev, _u32, _u32]),
    "hx_read32": (ctypes.c_int, [_dev, _u32, ctypes.POINTER(_u32)]),
    "hx_poll_control": (ctypes.c_int, [_dev, ctypes.c_double, ctypes.POINTER(_u32)]),
    "hx_wait_interrupt": (ctypes.c_int, [_dev, ctypes.c_double, ctypes.POINTER(ctypes.c_int)]),
    "hx_mem_write": (ctypes.c_int, [_dev, _u64, ctypes.c_void_p, _u64, ctypes.c_double]),
    "hx_mem_read": (ctypes.c_int, [_dev, _u64, ctypes.c_void_p, _u64, ctypes.c_double]),
    "hx_backpressure": (None, [_dev, ctypes.c_uint, ctypes.c_uint, _u64]),
}
MASTERS = ("p", "g", "ms", "ex")
"""The harness's master numbers (hx_data_bytes), in its order."""
_libraries: dict[Path, ctypes.CDLL] = {}
_libraries_lock = threading.Lock()


def load_library(path: Path) -> ctypes.CDLL:
    """The harness library at `path`, with its C signatures (loaded once a process)."""
    with _libraries_lock:
        if path not in _libraries:
            lib = ctypes.CDLL(str(path))
            for name, (restype, argtypes) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.restype, fn.argtypes = restype, argtypes
            _libraries[path] = lib
        return _libraries[path]


def data_bits(library: Path) -> dict[str, int]:
    """The AXI4 data width of each master the library's model was built with."""
    lib = load_library(library)
    return {name: 8 * lib.hx_data_bytes(i) for i, name in enumerate(MASTERS)}


def _permille(probability: float) -> int:
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"backpressure={probability} is not a probability in [0, 1]")
    return round(1000 * probability)


class SimTransport(Transport):
    """One simulated kernel (the harness library at `library`), reset and ready.

    `timeout`: seconds a buffer transfer waits for a run the host started and
    left (see the module docstring). `backpressure` pauses every ready and
    valid of the memory and of the control port at random, with that
    probability per clock (0 to 1), from `seed`; the results are the same,
    the simulation slower."""

    name = "rtl-sim"
    interrupts = True

    def __init__(
        self,
        library: Path,
        *,
        timeout: float = 60.0,
        backpressure: float = 0.0,
        seed: int = 1,
        base: int = 0x1_0000_0000,
    ) -> None:
        permille = _permille(backpressure)
        self.lib = load_library(library)
        self.timeout = timeout
        self._next = base
        self._lock = threading.Lock()
        error = ctypes.create_string_buffer(1024)
        events = regmap.CTRL_AP_DONE | regmap.CTRL_AP_READY
        handle = self.lib.hx_open(regmap.CTRL, regmap.CTRL_AP_START, regmap.CTRL_AP_IDLE, events, error, len(error))
        if not handle:
            raise DriverError(f"the simulated kernel could not be made: {error.value.decode(errors='replace')}")
        self._handle: int | None = handle
        self.lib.hx_backpressure(handle, permille, permille, seed)

    def set_backpressure(self, memory: float, control: float, seed: int = 1) -> None:
        """Pause the ready and valid signals of the memory's and the control port's buses at
        random, each with its probability per clock (0 to 1; 1: never ready, the kernel hangs)."""
        rates = _permille(memory), _permille(control)
        with self._lock:
            self.lib.hx_backpressure(self._live(), *rates, seed)

    @property
    def closed(self) -> bool:
        return self._handle is None

    @property
    def cycles(self) -> int:
        """Clocks simulated since the device was made."""
        with self._lock:
            return int(self.lib.hx_cycles(self._live()))

    def _live(self) -> int:
        if self._handle is None:
            raise DriverError(CLOSED)
        return self._handle

    def _check(self, status: int) -> None:
        if status != 0:
            raise DriverError(
                f"the simulated kernel failed: {self.lib.hx_error(self._handle).decode(errors='replace')}"
            )

    def read32(self, offset: int) -> int:
        value = ctypes.c_uint32()
        with self._lock:
            handle = self._live()
            if offset == regmap.CTRL:
                self._check(self.lib.hx_poll_control(handle, POLL_SLICE, ctypes.byref(value)))
            else:
                self._check(self.lib.hx_read32(handle, offset, ctypes.byref(value)))
        return value.value

    def write32(self, offset: int, value: int) -> None:
        with self._lock:
            self._check(self.lib.hx_write32(self._live(), offset, value & 0xFFFF_FFFF))

    def allocate(self, n: int, dtype: np.dtype | type) -> Buffer:
        array = np.zeros(n, dtype)
        address = self._next
        self._next += max(-(-array.nbytes // ALIGN), 1) * ALIGN
        return Buffer(array, address)

    def sync_to_device(self, buf: Buffer) -> None:
        data = np.ascontiguousarray(buf.array)
        with self._lock:
            self._check(self.lib.hx_mem_write(self._live(), buf.address, data.ctypes.data, data.nbytes, self.timeout))

    def sync_from_device(self, buf: Buffer) -> None:
        if not buf.array.flags.c_contiguous:
            raise DriverError("sync_from_device needs a contiguous host view")
        with self._lock:
            array = buf.array
            self._check(self.lib.hx_mem_read(self._live(), buf.address, array.ctypes.data, array.nbytes, self.timeout))

    def wait_interrupt(self, timeout: float) -> bool:
        """Clock the kernel until its interrupt line rises, in slices of POLL_SLICE
        seconds (a Ctrl-C is seen between two)."""
        raised = ctypes.c_int()
        deadline = time.monotonic() + timeout
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            with self._lock:
                self._check(self.lib.hx_wait_interrupt(self._live(), min(left, POLL_SLICE), ctypes.byref(raised)))
            if raised.value or left <= POLL_SLICE:
                return bool(raised.value)

    def close(self) -> None:
        """Free the simulated kernel; later calls raise DriverError."""
        with self._lock:
            handle, self._handle = self._handle, None
            if handle is not None:
                self.lib.hx_close(handle)
