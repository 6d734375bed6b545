"""The `pynq` backend off a board: unusable with its reason; its transport
(driver/pynq.py) exercised over a stand-in for the IP's MMIO and pynq.allocate
that forward to the golden-model double."""

from __future__ import annotations

import numpy as np
import pytest

from hetadam import backends, regmap
from hetadam.backends.base import BackendError, BackendUnavailable
from hetadam.driver import AdamDriver
from hetadam.driver.fake import FakeTransport
from hetadam.driver.state import ResidentState
from hetadam.numerics import DEFAULT, adam_step, encode_step
from hetadam.numerics.convert import quantize_grad, state_from_float

pynq = pytest.importorskip("pynq", reason="pynq is not installed (pip install 'hetadam[pynq]')")
driver_pynq = pytest.importorskip("hetadam.driver.pynq")


def test_unusable_off_board_with_reason_and_remedy() -> None:
    avail = backends.availability("pynq")
    assert not avail.usable
    assert "finds no device" in avail.reason
    assert "PYNQ 3.x" in avail.remedy and "make deploy" in avail.remedy
    with pytest.raises(BackendUnavailable, match="not usable here: pynq imports but finds no device"):
        backends.create("pynq")


def test_ip_driver_bound_to_hls_and_rtl_vlnv() -> None:
    from pynq.overlay import _ip_drivers

    for vlnv in ("hetadam.org:hls:hetadam_adam:1.0", "hetadam.org:rtl:hetadam_adam:1.0"):
        assert _ip_drivers[vlnv] is driver_pynq.HetAdamIP


class FakeIP:
    """What PynqTransport uses of a HetAdamIP: read, write, interrupt."""

    def __init__(self, kernel: FakeTransport) -> None:
        self.kernel = kernel
        self.has_interrupt = True
        self.interrupt = self

    def read(self, offset: int) -> int:
        return self.kernel.read32(offset)

    def write(self, offset: int, value: int) -> None:
        self.kernel.write32(offset, value)

    async def wait(self) -> None:
        self.kernel.wait_interrupt(1.0)


class FakePynqBuffer(np.ndarray):
    """pynq.allocate's result: an ndarray with a device address and cache syncs."""

    def sync_to_device(self) -> None:
        self.kernel.sync_to_device(self.twin)

    def sync_from_device(self) -> None:
        self.kernel.sync_from_device(self.twin)


@pytest.mark.parametrize("interrupt", [False, True])
def test_pynq_transport_drives_the_kernel(monkeypatch: pytest.MonkeyPatch, interrupt: bool) -> None:
    kernel = FakeTransport()

    def allocate(shape: tuple[int], dtype: type) -> FakePynqBuffer:
        twin = kernel.allocate(shape[0], dtype)
        buf = np.full(shape, 0x5A, dtype).view(FakePynqBuffer)  # CMA memory is not zeroed
        twin.array = buf.view(np.ndarray)
        buf.kernel, buf.twin, buf.device_address = kernel, twin, twin.address
        return buf

    monkeypatch.setattr(driver_pynq.pynq, "allocate", allocate)
    transport = driver_pynq.PynqTransport(FakeIP(kernel))
    assert transport.interrupts
    state = ResidentState(AdamDriver(transport, interrupt=interrupt, timeout=1.0), 100, DEFAULT, chunk=64)
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
    assert [a["idx0"] for a in kernel.args_seen] == [64, 128, 64, 128]
    assert kernel.regs[regmap.GIE] == int(interrupt)


@pytest.mark.filterwarnings("ignore:No devices found")
def test_pynq_backend_needs_an_overlay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HETADAM_BITFILE", raising=False)
    from hetadam.backends.pynq import PynqBackend

    with pytest.raises(BackendError, match="no overlay"):
        PynqBackend()
    with pytest.raises(BackendError, match=r"cannot load the overlay /nonexistent\.bit"):
        PynqBackend(bitfile="/nonexistent.bit")
