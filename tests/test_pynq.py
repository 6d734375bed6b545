"""The `pynq` backend off a board: unusable with its reason; its transport
(driver/pynq.py) exercised through pynq's own classes over doubles of what lies
beneath them on a board.

pynq's `DefaultIP`, `Interrupt`, `_InterruptController` and `UioController`
run as they are: the IP is created on first access to the overlay's attribute,
its `Interrupt` keeps an `asyncio.Event` that binds to the first loop that waits
on it, and the UIO controller registers its reader with
`asyncio.get_event_loop().add_reader` when it is created. Beneath them sit
doubles of the board: the IP's MMIO forwards to the golden-model double of the
kernel; the kernel's interrupt line goes through an AXI interrupt controller
(as hw/boards/build.tcl wires it) or straight to the PS; the PS interrupt is a
UIO device, a pipe written when the line rises (level-triggered, masked when it
fires, re-enabled by pynq's write of 1, as Linux's uio_pdrv_genirq does); and
`pynq.allocate` hands out NumPy arrays backed by the double's memory.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest

from hetadam import backends, regmap
from hetadam.backends.base import BackendError, BackendUnavailable
from hetadam.driver import AdamDriver, DriverError
from hetadam.driver.fake import FakeTransport
from hetadam.driver.state import ResidentState
from hetadam.numerics import DEFAULT, FixedFormat, adam_step, encode_step
from hetadam.numerics.convert import quantize_grad, state_from_float

pytest.importorskip("pynq", reason="pynq is not installed (pip install 'hetadam[pynq]')")
import pynq.interrupt  # after the skip: pynq is optional
import pynq.overlay
import pynq.uio

from hetadam.driver import pynq as driver_pynq

HLS_VLNV = "hetadam.org:hls:hetadam_adam:1.0"
RTL_VLNV = "hetadam.org:rtl:hetadam_adam:1.0"
PIN = "hetadam_adam_0/interrupt"
INTC = "intc"
INTC_ADDRESS = 0x4001_0000
RAW_IRQ = 61  # IRQ_F2P[0] on a Zynq-7000
UIO_PATH = "/dev/uio4"


def test_unusable_off_board_with_reason_and_remedy() -> None:
    avail = backends.availability("pynq")
    assert not avail.usable
    assert "finds no device" in avail.reason
    assert "PYNQ 3.x" in avail.remedy and "make deploy" in avail.remedy
    with pytest.raises(BackendUnavailable, match="not usable here: pynq imports but finds no device"):
        backends.create("pynq")


def test_ip_driver_bound_to_hls_and_rtl_vlnv() -> None:
    for vlnv in (HLS_VLNV, RTL_VLNV):
        assert pynq.overlay._ip_drivers[vlnv] is driver_pynq.HetAdamIP


# -- doubles of the board beneath pynq ---------------------------------------


class FakeUio:
    """/dev/uioN of the kernel's interrupt, as uio_pdrv_genirq serves it.

    Readable (4 bytes: the interrupt count) once the line is high while the
    interrupt is enabled; firing masks it; writing a non-zero word enables it
    again, and enabling it while the line is still high fires at once.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        self.lock = threading.Lock()
        self.enabled = False
        self.level = False
        self.fired = 0
        self.interrupt_next_read = False

    def fileno(self) -> int:
        return self._r

    def read(self, n: int) -> bytes:
        if self.interrupt_next_read:
            self.interrupt_next_read = False
            raise KeyboardInterrupt
        return os.read(self._r, n)

    def write(self, data: bytes) -> int:
        with self.lock:
            self.enabled = int.from_bytes(data, sys.byteorder) != 0
            self._fire_if_due()
        return len(data)

    def set_line(self, level: bool) -> None:
        with self.lock:
            self.level = level
            self._fire_if_due()

    def _fire_if_due(self) -> None:
        if self.level and self.enabled:
            self.enabled = False
            self.fired += 1
            os.write(self._w, self.fired.to_bytes(4, sys.byteorder))

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:  # closed already
                pass


class FakeIntc:
    """An AXI Interrupt Controller (PG099) with level-sensitive inputs, as pynq's
    _InterruptController drives it: ISR 0x00, IPR 0x04, IER 0x08, IAR 0x0C
    (acknowledge), SIE 0x10, CIE 0x14, MER 0x1C. Its irq output drives `out`."""

    def __init__(self, out: Callable[[bool], None]) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.inputs = self.isr = self.ier = self.mer = 0

    def set_input(self, index: int, level: bool) -> None:
        with self.lock:
            self.inputs = self.inputs | 1 << index if level else self.inputs & ~(1 << index)
            self._update()

    def read(self, offset: int = 0, length: int = 4) -> int:
        with self.lock:
            return {0x00: self.isr, 0x04: self.isr & self.ier, 0x08: self.ier, 0x1C: self.mer}.get(offset, 0)

    def write(self, offset: int, value: int) -> None:
        with self.lock:
            if offset == 0x08:
                self.ier = value
            elif offset == 0x0C:
                self.isr &= ~value  # a level input still high is pending again at once
            elif offset == 0x10:
                self.ier |= value
            elif offset == 0x14:
                self.ier &= ~value
            elif offset == 0x1C:
                self.mer = value
            self._update()

    def _update(self) -> None:
        self.isr |= self.inputs
        self.out(bool(self.mer & 1 and self.isr & self.ier))


class IrqKernel(FakeTransport):
    """The kernel double, finishing by itself (at ap_start, or `finish_after`
    seconds later from a timer thread) rather than when its control register is
    polled, and driving its interrupt line (GIE and ISR & IER) into `line`."""

    def __init__(self, line: Callable[[bool], None]) -> None:
        super().__init__()
        self.line = line
        self.finish_after = 0.0
        self.lock = threading.RLock()
        self.timers: list[threading.Timer] = []

    def read32(self, offset: int) -> int:
        with self.lock:
            value = super().read32(offset)
            self.line(self.irq)  # a clear-on-read ISR lowers it
            return value

    def write32(self, offset: int, value: int) -> None:
        with self.lock:
            super().write32(offset, value)
            self.line(self.irq)

    def _tick(self) -> None:
        """Reading the control register does not move this kernel on."""

    def _start(self) -> None:
        super()._start()
        if self.finish_after:
            self.timers.append(threading.Timer(self.finish_after, self._finish))
            self.timers[-1].start()
        else:
            self._finish()

    def _finish(self) -> None:
        with self.lock:
            while self._countdown:
                super()._tick()
            self.line(self.irq)


class FakeMMIO:
    """pynq.MMIO over the kernel double's registers."""

    def __init__(self, kernel: IrqKernel) -> None:
        self.kernel = kernel

    def read(self, offset: int = 0, length: int = 4) -> int:
        return self.kernel.read32(offset)

    def write(self, offset: int, data: int) -> None:
        self.kernel.write32(offset, data)


class FakePynqBuffer(np.ndarray):
    """pynq.allocate's result: an ndarray with a device address and cache syncs."""

    def sync_to_device(self) -> None:
        self.kernel.sync_to_device(self.twin)

    def sync_from_device(self) -> None:
        self.kernel.sync_from_device(self.twin)


def ip_description(vlnv: str) -> dict:
    """An ip_dict entry as pynq parses it from the .hwh, its interrupt pin wired to the PS."""
    return {
        "type": vlnv,
        "phys_addr": 0x4000_0000,
        "addr_range": 0x1_0000,
        "fullpath": "hetadam_adam_0",
        "device": object(),
        "interrupts": {"interrupt": {"controller": "", "index": 0, "fullpath": PIN}},
    }


class FakeOverlay:
    """pynq.Overlay as PynqTransport.from_overlay uses it: `ip_dict`, and each
    IP's driver (the one bound to its VLNV) created on first attribute access,
    as pynq's IP map does."""

    ip_dict: ClassVar[dict[str, dict]] = {}

    def __init__(self, bitfile: str, download: bool = True) -> None:
        self.bitfile = bitfile

    def __getattr__(self, name: str) -> object:
        if name not in self.ip_dict:
            raise AttributeError(name)
        description = self.ip_dict[name]
        ip = pynq.overlay._ip_drivers[description["type"]](description)
        setattr(self, name, ip)
        return ip


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The event loop current in this thread, as in the board's Python; the
    process's own asyncio state is put back afterwards."""
    saved = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        loop.close()
        asyncio.set_event_loop_policy(saved)


@pytest.fixture(params=["axi_intc", "ps_irq"])
def board(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, loop: asyncio.AbstractEventLoop
) -> Iterator[SimpleNamespace]:
    """pynq over the doubles, the kernel's interrupt through an AXI interrupt
    controller (as the block designs wire it) or straight to the PS:
    `board.kernel`, `board.uio`, and `board.ip_dict` for FakeOverlay (one
    hetadam_adam IP with the HLS VLNV, and the PS)."""
    uio = FakeUio()
    intc = FakeIntc(uio.set_line)
    via_intc = request.param == "axi_intc"
    kernel = IrqKernel(lambda level: intc.set_input(0, level)) if via_intc else IrqKernel(uio.set_line)
    uio_devices: dict[int, object] = {}
    controllers: list[object] = []
    FakeOverlay.ip_dict = {
        "hetadam_adam_0": ip_description(HLS_VLNV),
        "processing_system7_0": {"type": "xilinx.com:ip:processing_system7:5.5"},
    }
    to_ps = {"parent": "", "index": 0, "raw_irq": RAW_IRQ}
    pl = SimpleNamespace(
        timestamp="2026/01/01 00:00:00 +000000",
        interrupt_pins={
            PIN: {"controller": INTC, "index": 0, "fullpath": PIN} if via_intc else {**to_ps, "fullpath": PIN}
        },
        interrupt_controllers={INTC: to_ps},
        ip_dict={INTC: {"phys_addr": INTC_ADDRESS}},
    )

    def allocate(shape: tuple[int], dtype: type) -> FakePynqBuffer:
        twin = kernel.allocate(shape[0], dtype)
        buf = np.full(shape, 0x5A, dtype).view(FakePynqBuffer)  # CMA memory is not zeroed
        twin.array = buf.view(np.ndarray)
        buf.kernel, buf.twin, buf.device_address = kernel, twin, twin.address
        return buf

    def open_uio(path: str, mode: str, buffering: int = -1) -> FakeUio:
        assert (path, mode, buffering) == (UIO_PATH, "r+b", 0)
        return uio

    def intc_mmio(phys_addr: int, length: int) -> FakeIntc:
        assert phys_addr == INTC_ADDRESS
        return intc

    monkeypatch.setattr(pynq.overlay, "MMIO", lambda phys_addr, length, device=None: FakeMMIO(kernel))
    monkeypatch.setattr(pynq.interrupt, "MMIO", intc_mmio)
    monkeypatch.setattr(pynq.interrupt, "PL", pl)
    monkeypatch.setattr(pynq.interrupt, "get_uio_irq", lambda irq: UIO_PATH if irq == RAW_IRQ else None)
    monkeypatch.setattr(pynq.interrupt._InterruptController, "_uio_devices", uio_devices)
    monkeypatch.setattr(pynq.interrupt._InterruptController, "_controllers", controllers)
    monkeypatch.setattr(pynq.interrupt._InterruptController, "_last_timestamp", None)
    monkeypatch.setattr(pynq.uio, "open", open_uio, raising=False)
    monkeypatch.setattr(driver_pynq.pynq, "Overlay", FakeOverlay)
    monkeypatch.setattr(driver_pynq.pynq, "allocate", allocate)
    try:
        yield SimpleNamespace(kernel=kernel, uio=uio, ip_dict=FakeOverlay.ip_dict, via=request.param)
    finally:
        for timer in kernel.timers:
            timer.join()
        # pynq's UioController.__del__ then removes its reader from this loop and closes the device
        loop.remove_reader(uio)
        uio_devices.clear()
        controllers.clear()
        gc.collect()
        uio.close()


def step_through(transport: driver_pynq.PynqTransport, *, interrupt: bool, timeout: float = 2.0) -> None:
    """Two steps of 100 elements in chunks of 64 (four kernel runs), each bit-exact with the golden model."""
    state = ResidentState(AdamDriver(transport, interrupt=interrupt, timeout=timeout), 100, DEFAULT, chunk=64)
    rng = np.random.default_rng(0)
    ref = state_from_float(rng.normal(0, 1, 100).astype(np.float32), np.zeros(100), np.zeros(100))
    state.upload(ref)
    for step in (1, 2):
        G, eg, _ = quantize_grad(rng.normal(0, 1e-2, 100))
        sc = encode_step(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, step=step)
        sat = state.run(G, eg, sc, 64)
        state.commit()
        ref, expect_sat = adam_step(ref, G, eg, sc, 64, DEFAULT)
        assert sat == expect_sat
        assert state.download().equals(ref)


# -- the transport over pynq ---------------------------------------------------


@pytest.mark.parametrize("interrupt", [False, True])
def test_pynq_transport_drives_the_kernel(board: SimpleNamespace, interrupt: bool) -> None:
    transport = driver_pynq.PynqTransport.from_overlay("hetadam.bit")
    assert transport.interrupts
    step_through(transport, interrupt=interrupt)
    assert [a["idx0"] for a in board.kernel.args_seen] == [64, 128, 64, 128]
    assert board.kernel.regs[regmap.GIE] == int(interrupt)


@pytest.mark.parametrize("finish_after", [0.0, 0.05], ids=["done-before-the-wait", "done-during-the-wait"])
def test_interrupt_waits_wake_on_the_loop_pynq_registered_its_reader_on(
    board: SimpleNamespace, loop: asyncio.AbstractEventLoop, finish_after: float
) -> None:
    board.kernel.finish_after = finish_after
    transport = driver_pynq.PynqTransport.from_overlay("hetadam.bit")
    step_through(transport, interrupt=True, timeout=1.0)
    # A run done before its wait needs no interrupt; one done during it wakes the wait. Through the AXI
    # interrupt controller, the interrupt pynq acknowledged while the line was high stays pending and
    # wakes each next wait at once (3 spurious wakes): the wait checks ap_done and waits on.
    assert board.uio.fired == (0 if not finish_after else 7 if board.via == "axi_intc" else 4)
    assert asyncio.get_event_loop() is loop, "a later overlay load registers its readers on the same loop"


@pytest.mark.parametrize("in_a_running_loop", [False, True], ids=["on-the-loop", "polling"])
def test_waits_leave_a_clear_on_read_isr_for_the_driver(
    board: SimpleNamespace, loop: asyncio.AbstractEventLoop, in_a_running_loop: bool
) -> None:
    """Some Vitis HLS releases make ISR clear-on-read: the wait must not read it, or the driver finds it empty."""
    board.kernel.isr_mode = "cor"
    board.kernel.finish_after = 0.02

    async def cell() -> None:
        step_through(driver_pynq.PynqTransport.from_overlay("hetadam.bit"), interrupt=True)

    if in_a_running_loop:
        loop.run_until_complete(cell())
    else:
        step_through(driver_pynq.PynqTransport.from_overlay("hetadam.bit"), interrupt=True)
    assert len(board.kernel.args_seen) == 4


def test_a_wait_leaves_the_threads_event_loop_in_place(board: SimpleNamespace, loop: asyncio.AbstractEventLoop) -> None:
    transport = driver_pynq.PynqTransport.from_overlay("hetadam.bit")
    assert not transport.wait_interrupt(0.01), "no run was started: the wait times out"
    assert asyncio.get_event_loop() is loop, "pynq's next UioController registers on get_event_loop()"


def test_a_wait_that_timed_out_leaves_the_interrupt_usable(board: SimpleNamespace) -> None:
    board.kernel.finish_after = 0.3
    transport = driver_pynq.PynqTransport.from_overlay("hetadam.bit")
    with pytest.raises(DriverError, match=r"no interrupt from the kernel within 0\.05 s"):
        step_through(transport, interrupt=True, timeout=0.05)
    assert transport.wait_interrupt(2.0), "the next wait must see the late interrupt"
    assert transport.read32(regmap.ISR) & regmap.ISR_DONE
    assert board.uio.fired == 1


def test_inside_a_running_loop_the_wait_polls(board: SimpleNamespace, loop: asyncio.AbstractEventLoop) -> None:
    """A Jupyter cell runs inside the kernel's running loop: the IP is created there and the wait cannot block it."""
    board.kernel.finish_after = 0.02

    async def cell() -> None:
        step_through(driver_pynq.PynqTransport.from_overlay("hetadam.bit"), interrupt=True)

    loop.run_until_complete(cell())
    assert len(board.kernel.args_seen) == 4
    assert board.uio.fired == 0, "the wait polled ap_done: it never enabled the interrupt"


def test_ctrl_c_in_a_wait_comes_out_unchanged_and_the_next_wait_works(board: SimpleNamespace) -> None:
    board.kernel.finish_after = 0.02
    transport = driver_pynq.PynqTransport.from_overlay("hetadam.bit")
    board.uio.interrupt_next_read = True
    with pytest.raises(KeyboardInterrupt):
        step_through(transport, interrupt=True, timeout=1.0)
    assert transport.wait_interrupt(1.0), "the interrupt that Ctrl-C cut short is still delivered"
    assert transport.read32(regmap.ISR) & regmap.ISR_DONE
    step_through(transport, interrupt=True)


@pytest.mark.parametrize("vlnv", [HLS_VLNV, RTL_VLNV, "xilinx.com:hls:hetadam_adam:1.0"])
def test_from_overlay_finds_the_kernel_by_either_ips_vlnv(board: SimpleNamespace, vlnv: str) -> None:
    board.ip_dict["hetadam_adam_0"] = ip_description(vlnv)
    transport = driver_pynq.PynqTransport.from_overlay("hetadam.bit")
    assert isinstance(transport.ip, driver_pynq.HetAdamIP) and transport.interrupts
    assert isinstance(transport.overlay, FakeOverlay)
    step_through(transport, interrupt=True)


@pytest.mark.parametrize("count", [0, 2])
def test_from_overlay_wants_exactly_one_kernel(board: SimpleNamespace, count: int) -> None:
    del board.ip_dict["hetadam_adam_0"]
    for i in range(count):
        board.ip_dict[f"hetadam_adam_{i}"] = ip_description(RTL_VLNV)
    with pytest.raises(DriverError, match=r"hetadam\.bit: expected one hetadam_adam IP .* found \["):
        driver_pynq.PynqTransport.from_overlay("hetadam.bit")


def test_pynq_backend_refuses_a_format_the_overlay_was_not_built_for(
    board: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hetadam.backends.pynq import PynqBackend

    monkeypatch.setenv("HETADAM_KERNEL_FORMAT", "b32-g16-m8-s8")
    backend = PynqBackend(bitfile="hetadam.bit")
    try:
        want = r"implements the format b32-g16-m8-s8, not b32-g16-m16-s16: .* FORMAT=b32-g16-m16-s16"
        with pytest.raises(ValueError, match=want):
            backend.create_shard(0, 100, "fixed", DEFAULT)
        backend.create_shard(0, 100, "fixed", FixedFormat(m_bits=8, s_bits=8, p_frac=20)).close()
    finally:
        backend.close()


@pytest.mark.filterwarnings("ignore:No devices found")
def test_pynq_backend_needs_an_overlay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HETADAM_BITFILE", raising=False)
    from hetadam.backends.pynq import PynqBackend

    with pytest.raises(BackendError, match="no overlay"):
        PynqBackend()
    with pytest.raises(BackendError, match=r"cannot load the overlay /nonexistent\.bit"):
        PynqBackend(bitfile="/nonexistent.bit")
