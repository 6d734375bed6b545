"""The RTL kernel behind a socket: the simulator side of the `rtl-sim` backend.

A cocotb test that resets `hetadam_adam`, puts an AxiLiteMaster on its
`s_axi_control` port and an AxiRam on each of its four AXI4 masters, all four
backed by ONE SparseMemory (the driver allocates its buffers at distinct
addresses of one address space, as on a board), connects to the host's Unix
socket (path in $HETADAM_RTL_SOCKET) and serves the requests of
hetadam/driver/sim.py until QUIT or until the host goes away. A request that
names more than wire.MAX_TRANSFER bytes, or memory outside the address space,
is refused before anything is allocated; a MEM_WRITE so refused also ends the
connection (its payload cannot be skipped safely).

Started by hetadam.backends.rtl_sim (never by pytest directly): it is not a
test of the RTL, it is the RTL as a device.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import socket
import sys
import time
import types
import warnings

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam
from cocotbext.axi.sparse_memory import SparseMemory


def import_light(name: str) -> types.ModuleType:
    """A hetadam submodule, imported without hetadam/__init__ (which imports the
    optimizer, hence torch and numba: 20 s in the simulator's embedded Python);
    the register map and the wire protocol need NumPy at most."""
    if "hetadam" not in sys.modules:
        spec = importlib.util.find_spec("hetadam")
        package = types.ModuleType("hetadam")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["hetadam"] = package
    return importlib.import_module(name)


regmap = import_light("hetadam.regmap")
wire = import_light("hetadam.driver.sim")

CLOCK_NS = 4
IRQ_POLL_CYCLES = 64
warnings.filterwarnings("ignore", category=DeprecationWarning)  # cocotbext-axi's, on every access
MEMORY_SIZE = 1 << 48
"""The address space the four masters share (a 64-bit size would overflow len())."""


class Server:
    def __init__(self, dut) -> None:
        self.dut = dut
        self.mem = SparseMemory(MEMORY_SIZE)
        self.rams = [
            AxiRam(AxiBus.from_prefix(dut, f"m_axi_{bundle}"), dut.ap_clk, dut.ap_rst_n, False, mem=self.mem)
            for bundle in regmap.M_AXI_BUNDLES.values()
        ]
        bus = AxiLiteBus.from_prefix(dut, f"s_axi_{regmap.CONTROL_BUNDLE}")
        self.ctrl = AxiLiteMaster(bus, dut.ap_clk, dut.ap_rst_n, False)
        for log in (self.ctrl.write_if.log, self.ctrl.read_if.log):
            log.setLevel(logging.WARNING)
        for ram in self.rams:
            ram.write_if.log.setLevel(logging.WARNING)
            ram.read_if.log.setLevel(logging.WARNING)

    async def reset(self) -> None:
        self.dut.ap_rst_n.value = 0
        await ClockCycles(self.dut.ap_clk, 8)
        self.dut.ap_rst_n.value = 1
        await ClockCycles(self.dut.ap_clk, 4)

    async def wait_irq(self, timeout_ms: int) -> int:
        deadline = time.monotonic() + timeout_ms / 1000
        while not int(self.dut.interrupt.value):
            if time.monotonic() > deadline:
                return 0
            await ClockCycles(self.dut.ap_clk, IRQ_POLL_CYCLES)
        return 1

    async def handle(self, op: int, a: int, b: int, conn: socket.socket) -> bytes | int:
        if op in (wire.MEM_WRITE, wire.MEM_READ):
            check_range(op, a, b)
        if op == wire.READ32:
            return await self.ctrl.read_dword(a)
        if op == wire.WRITE32:
            await self.ctrl.write_dword(a, b)
            return 0
        if op == wire.MEM_WRITE:
            self.mem.write(a, wire.recv_exact(conn, b))
            return 0
        if op == wire.MEM_READ:
            return bytes(self.mem.read(a, b))
        if op == wire.WAIT_IRQ:
            return await self.wait_irq(a)
        raise ValueError(f"unknown request {op}")

    async def serve(self, conn: socket.socket) -> None:
        """Answer requests until QUIT, the host leaves, or a refused MEM_WRITE."""
        try:
            while await self.serve_one(conn):
                pass
        except ConnectionError:
            return  # the host went away, possibly mid-request

    async def serve_one(self, conn: socket.socket) -> bool:
        """Answer one request; False when the connection is to end."""
        op, a, b = wire.REQUEST.unpack(wire.recv_exact(conn, wire.REQUEST.size))
        if op == wire.QUIT:
            return False
        try:
            result = await self.handle(op, a, b, conn)
        except TransferRefused as exc:
            send_error(conn, exc)
            return op != wire.MEM_WRITE  # its payload would be taken for requests
        except ConnectionError:
            raise
        except Exception as exc:  # reported to the host, which raises it
            send_error(conn, exc)
            return True
        if isinstance(result, bytes):
            conn.sendall(wire.ANSWER.pack(wire.OK, len(result)) + result)
        else:
            conn.sendall(wire.ANSWER.pack(wire.OK, result))
        return True


class TransferRefused(ValueError):
    """A MEM_READ or MEM_WRITE the server will not carry out."""


def check_range(op: int, address: int, length: int) -> None:
    """Refuse a transfer longer than wire.MAX_TRANSFER or outside the address space."""
    name = "MEM_WRITE" if op == wire.MEM_WRITE else "MEM_READ"
    if length > wire.MAX_TRANSFER:
        raise TransferRefused(f"{name} of {length} bytes refused: at most {wire.MAX_TRANSFER} bytes a request")
    if address + length > MEMORY_SIZE:
        raise TransferRefused(
            f"{name} of {length} bytes at 0x{address:x} refused: outside the {MEMORY_SIZE:#x}-byte address space"
        )


def send_error(conn: socket.socket, exc: Exception) -> None:
    message = f"{type(exc).__name__}: {exc}".encode()
    conn.sendall(wire.ANSWER.pack(wire.ERROR, len(message)) + message)


@cocotb.test()
async def serve(dut) -> None:
    """Serve the host until it quits."""
    cocotb.start_soon(Clock(dut.ap_clk, CLOCK_NS, unit="ns").start())
    server = Server(dut)
    await server.reset()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(os.environ[wire.SOCKET_ENV])
    try:
        await server.serve(conn)
    finally:
        conn.close()
