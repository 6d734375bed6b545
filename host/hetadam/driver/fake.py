"""A pure-Python double of the kernel behind the register/memory protocol.

`FakeTransport` keeps its own device memory, apart from the host views, so a
driver that forgets a sync reads stale data here as it would on a board. On
ap_start it decodes the argument registers, runs the golden model
(`hetadam.numerics.fixed.adam_step`) on the arrays at those addresses and,
after `latency` polls of the control register, writes the results back and
raises ap_done, ISR and (with GIE and IER set) the interrupt line: the Vitis
HLS `ap_ctrl_hs` semantics (ap_done and the sat_count valid bit clear-on-read,
ISR toggle-on-write, or clear-on-read with `isr_mode="cor"` as some Vitis HLS
releases generate it; what such an ISR does with a write is not documented, so
the double takes the worst case: it toggles). Faults for tests: `stall` (never
finishes), `fail_on_run` (the n-th run raises DriverError, as a lost link would).
"""

from __future__ import annotations

import numpy as np

from .. import regmap
from ..numerics import DEFAULT, FixedFormat, FixedState, adam_step
from ..numerics.convert import pack_ex, pack_ms, unpack_ex, unpack_ms
from ..numerics.formats import n_blocks
from ..numerics.scalars import StepScalars
from . import Buffer, DriverError, Transport

ALIGN = 4096


class FakeTransport(Transport):
    name = "fake"
    interrupts = True

    def __init__(
        self,
        *,
        base: int = 0x4_0000_0000,
        latency: int = 3,
        stall: bool = False,
        fail_on_run: int | None = None,
        fmt: FixedFormat = DEFAULT,
        isr_mode: str = regmap.ISR_MODE,
    ) -> None:
        if isr_mode not in ("tow", "cor"):
            raise ValueError(f"isr_mode={isr_mode!r}: choose 'tow' (toggle on write) or 'cor' (clear on read)")
        self.isr_mode = isr_mode
        self.fmt = fmt
        self.latency = latency
        self.stall = stall
        self.fail_on_run = fail_on_run
        self.regs: dict[int, int] = {}
        self.memory: dict[int, bytearray] = {}
        self._next = base
        self._countdown = 0
        self._result: tuple[dict[str, np.ndarray], int] | None = None
        self.done = False
        self.sat_valid = False
        self.runs = 0
        self.args_seen: list[dict[str, int]] = []

    # -- memory ----------------------------------------------------------

    def allocate(self, n: int, dtype: np.dtype | type) -> Buffer:
        array = np.zeros(n, dtype)
        address = self._next
        self.memory[address] = bytearray(max(array.nbytes, 1))
        self._next += -(-max(array.nbytes, 1) // ALIGN) * ALIGN
        return Buffer(array, address)

    def sync_to_device(self, buf: Buffer) -> None:
        self.memory[buf.address][: buf.array.nbytes] = buf.array.tobytes()

    def sync_from_device(self, buf: Buffer) -> None:
        raw = bytes(self.memory[buf.address][: buf.array.nbytes])
        buf.array[:] = np.frombuffer(raw, buf.array.dtype)

    def _region(self, address: int, nbytes: int) -> memoryview:
        for base, mem in self.memory.items():
            if base <= address and address + nbytes <= base + len(mem):
                return memoryview(mem)[address - base : address - base + nbytes]
        raise DriverError(f"bus error: the kernel accessed [0x{address:x}, 0x{address + nbytes:x}) outside any buffer")

    def _load(self, address: int, n: int, dtype: type) -> np.ndarray:
        size = np.dtype(dtype).itemsize * n
        return np.frombuffer(bytes(self._region(address, size)), dtype).copy()

    def _store(self, address: int, data: np.ndarray) -> None:
        self._region(address, data.nbytes)[:] = data.tobytes()

    # -- registers -------------------------------------------------------

    def read32(self, offset: int) -> int:
        if offset == regmap.CTRL:
            self._tick()
            idle = self._countdown == 0 and self._result is None
            value = (regmap.CTRL_AP_IDLE if idle else 0) | (regmap.CTRL_AP_DONE if self.done else 0)
            self.done = False
            return value
        if offset == regmap.offset("sat_count") + 4:
            valid, self.sat_valid = self.sat_valid, False
            return int(valid)
        if offset == regmap.ISR and self.isr_mode == "cor":
            return self.regs.pop(regmap.ISR, 0)
        return self.regs.get(offset, 0)

    def write32(self, offset: int, value: int) -> None:
        if offset == regmap.ISR:
            self.regs[offset] = self.regs.get(offset, 0) ^ value
        elif offset == regmap.CTRL:
            if value & regmap.CTRL_AP_START:
                self._start()
        else:
            self.regs[offset] = value & 0xFFFF_FFFF

    def wait_interrupt(self, timeout: float) -> bool:
        while self._countdown and not self.stall:
            self._tick()
        return self.irq

    @property
    def irq(self) -> bool:
        return bool(self.regs.get(regmap.GIE, 0) & 1 and self.regs.get(regmap.ISR, 0) & self.regs.get(regmap.IER, 0))

    def arg(self, name: str) -> int:
        off = regmap.offset(name)
        if regmap.BY_NAME[name].bits == 64:
            return self.regs.get(off, 0) | self.regs.get(off + 4, 0) << 32
        return self.regs.get(off, 0)

    # -- the kernel ------------------------------------------------------

    def _start(self) -> None:
        self.runs += 1
        if self.fail_on_run == self.runs:
            raise DriverError(f"fake link lost on run {self.runs}")
        args = {a.name: self.arg(a.name) for a in regmap.ARGS if a.direction == "in"}
        self.args_seen.append(args)
        self._result = self._compute(args)
        self.done = False
        self._countdown = max(self.latency, 1)

    def _tick(self) -> None:
        if self.stall or not self._countdown:
            return
        self._countdown -= 1
        if self._countdown or self._result is None:
            return
        arrays, sat = self._result
        self._result = None
        for name, data in arrays.items():
            self._store(self.arg(name), data)
        self.regs[regmap.offset("sat_count")] = sat
        self.sat_valid = True
        self.done = True
        self.regs[regmap.ISR] = self.regs.get(regmap.ISR, 0) | (self.regs.get(regmap.IER, 0) & regmap.ISR_DONE)

    def _compute(self, args: dict[str, int]) -> tuple[dict[str, np.ndarray], int]:
        n, fmt = args["n"], self.fmt
        nb = n_blocks(n, fmt.block)
        P = self._load(args["p"], n, np.int32)
        G = self._load(args["g"], n, np.int16)
        M, S = unpack_ms(self._load(args["ms"], n, np.uint32))
        eg, em, es = unpack_ex(self._load(args["ex"], nb, np.uint32))
        signed = {k: v - (1 << 32) if v >> 31 else v for k, v in args.items()}
        sc = StepScalars(**{k: signed[k] if k == "eps_e" else args[k] for k in StepScalars.__dataclass_fields__})
        new, sat = adam_step(FixedState(P, M, em, S, es), G, eg, sc, args["idx0"], fmt)
        out = {"p": new.P, "ms": pack_ms(new.M, new.S), "ex": pack_ex(eg, new.em, new.es)}
        return out, sat
