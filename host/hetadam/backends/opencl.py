"""The `opencl` backend: hw/opencl/adam.cl through pyopencl, on any OpenCL
device — a GPU when one is present, else the PoCL CPU device.

Device selection: ``OpenCLBackend(platform=..., device=...)`` or the
environment variables ``HETADAM_OPENCL_PLATFORM`` / ``HETADAM_OPENCL_DEVICE``
(an index, or a case-insensitive substring of the platform's or device's name
and vendor). The device index counts the devices of the selected platforms in
order. Without either, the first GPU wins, else the first device. Only a device
that can build a program counts: a driver may list a device whose compiler fails
on everything (PoCL 3.0 with LLVM 14 on a CPU its LLVM does not know, such as
Zen 5: "unknown target CPU 'generic'"), so each device builds a trivial kernel
once per process before it is chosen.

The optimizer state lives in device buffers for the life of a shard, twice
over (committed and pending), so that a step can be committed or discarded
by swapping. A step streams the gradients in through two
pinned staging buffers (`mem_flags.ALLOC_HOST_PTR`, mapped once): the copy of
chunk k+1 runs on a transfer queue while the kernel of chunk k runs on the
compute queue; the parameters come back before the step returns (fixed: read,
fp32: mapped), so that a commit cannot fail. Programs are built once
per device context and build options, and die with it (`OpenCLBackend.close`).
`bench_opencl` measures it against torch.
See docs/opencl.md.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial, wraps
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch.autograd.graph import increment_version

from ..formats_render import c_defines
from ..numerics import DEFAULT, FixedFormat, FixedState
from ..numerics.convert import pack_ex, pack_ms, unpack_ex, unpack_ms
from ..numerics.fast import floats_differ, quantize_grad_fast
from ..numerics.formats import hardware_problem, n_blocks
from ..numerics.scalars import StepScalars
from .base import (
    Availability,
    Backend,
    BackendError,
    BackendUnavailable,
    FixedKernel,
    FixedShard,
    Segment,
    Shard,
    StepHyper,
)

try:
    import pyopencl as cl
except ImportError:  # the backend reports itself unusable
    cl = None

SOURCE = Path(__file__).resolve().parents[3] / "hw" / "opencl" / "adam.cl"
FORMAT_HEADER = SOURCE.with_name("adam_format.h")
"""Generated from numerics/formats.py; put before adam.cl's text, so that no -I path needs quoting."""
ENV_PLATFORM = "HETADAM_OPENCL_PLATFORM"
ENV_DEVICE = "HETADAM_OPENCL_DEVICE"
VEC = 8
"""Floats per work-item of the fp32 kernel (HETADAM_VEC)."""
WORK_GROUP = 64
CHUNK = 1 << 18
"""Elements per staging chunk."""

PROBE = "__kernel void hetadam_probe(__global int *x) { x[0] = 1; }"
"""The trivial kernel a device must build before it is chosen."""
NO_DEVICE_REMEDY = (
    "Install an OpenCL driver for your GPU, or the PoCL CPU device: pip install 'pyopencl[pocl]'"
    f" (check {ENV_PLATFORM} / {ENV_DEVICE})"
)
BUILD_REMEDY = (
    "Install an OpenCL driver whose compiler knows this processor (on Debian or Ubuntu: apt-get install"
    f" pocl-opencl-icd), or choose a device that can build programs with {ENV_PLATFORM} / {ENV_DEVICE}"
)
_BUILD_PROBLEMS: dict[cl.Device, str | None] = {}
T = TypeVar("T")


class DeviceCannotBuild(LookupError):
    """The OpenCL devices that match were found, but none can build a program."""


def _matches(spec: str | int, index: int, names: tuple[str, ...]) -> bool:
    if isinstance(spec, int) or spec.strip().isdigit():
        return int(spec) == index
    return any(spec.strip().lower() in name.lower() for name in names)


def _first_error(log: str, fallback: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [fallback])[0]


def build_problem(device: cl.Device) -> str | None:
    """Why `device` cannot build an OpenCL program (the first error line of its
    build log), or None when it can. Probed with PROBE once per device and process."""
    if device not in _BUILD_PROBLEMS:
        try:
            context = cl.Context([device])
        except cl.Error as exc:
            _BUILD_PROBLEMS[device] = f"cannot create a context: {exc}"
            return _BUILD_PROBLEMS[device]
        probe = cl.Program(context, PROBE)
        try:
            probe.build()
            _BUILD_PROBLEMS[device] = None
        except cl.Error as exc:
            log = probe.get_build_info(device, cl.program_build_info.LOG)
            _BUILD_PROBLEMS[device] = _first_error(log, str(exc).splitlines()[0])
    return _BUILD_PROBLEMS[device]


def select_device(platform: str | int | None = None, device: str | int | None = None) -> cl.Device:
    """The OpenCL device chosen by the arguments, else by the environment, among
    those that can build a program (`build_problem`): the first GPU, else the
    first device. Raises LookupError when none matches, DeviceCannotBuild (a
    LookupError naming each device's build error) when none of those can build."""
    platform = os.environ.get(ENV_PLATFORM) if platform is None else platform
    device = os.environ.get(ENV_DEVICE) if device is None else device
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:  # the ICD loader found no platform
        raise LookupError(f"no OpenCL platform found ({exc})") from exc
    if platform is not None:
        platforms = [p for i, p in enumerate(platforms) if _matches(platform, i, (p.name, p.vendor))]
    devices = [d for p in platforms for d in p.get_devices()]
    if device is not None:
        devices = [d for i, d in enumerate(devices) if _matches(device, i, (d.name, d.vendor))]
    wanted = ", ".join(f"{k}={v!r}" for k, v in (("platform", platform), ("device", device)) if v is not None)
    if not devices:
        raise LookupError(f"no OpenCL device found{' for ' + wanted if wanted else ''}")
    problems = []
    for d in sorted(devices, key=lambda d: not d.type & cl.device_type.GPU):  # GPUs first, else in order
        problem = build_problem(d)
        if problem is None:
            return d
        problems.append(f"{d.platform.name}: {d.name}: {problem}")
    raise DeviceCannotBuild(
        f"no OpenCL device{' for ' + wanted if wanted else ''} can build a program ({'; '.join(problems)})"
    )


def _unusable(exc: LookupError) -> Availability:
    remedy = BUILD_REMEDY if isinstance(exc, DeviceCannotBuild) else NO_DEVICE_REMEDY
    return Availability(False, str(exc), remedy)


def devices() -> list[str]:
    """'platform: device' of every OpenCL device here (empty when none)."""
    if cl is None:
        return []
    try:
        return [f"{p.name}: {d.name}" for p in cl.get_platforms() for d in p.get_devices()]
    except cl.Error:
        return []


def _chunks(lo: int, hi: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(lo, hi, size):
        yield a, min(a + size, hi)


class _Staging:
    """Two slots, each a pinned host buffer (mapped once) with its own device
    buffers; a slot is handed out again once the commands that used it are done."""

    def __init__(self, queue: cl.CommandQueue, host_bytes: int, device_bytes: tuple[int, ...]) -> None:
        mf = cl.mem_flags
        self._pinned = [cl.Buffer(queue.context, mf.READ_WRITE | mf.ALLOC_HOST_PTR, host_bytes) for _ in range(2)]
        access = cl.map_flags.READ | cl.map_flags.WRITE
        self.host = [cl.enqueue_map_buffer(queue, b, access, 0, (host_bytes,), np.uint8)[0] for b in self._pinned]
        self.device = [tuple(cl.Buffer(queue.context, mf.READ_WRITE, n) for n in device_bytes) for _ in range(2)]
        self._events: list[list[cl.Event]] = [[], []]
        self._next = 0

    def acquire(self) -> int:
        k, self._next = self._next, self._next ^ 1
        if self._events[k]:
            cl.wait_for_events(self._events[k])
        self._events[k] = []
        return k

    def release(self, k: int, *events: cl.Event) -> None:
        self._events[k] = list(events)

    def drain(self) -> None:
        for k in (0, 1):
            if self._events[k]:
                cl.wait_for_events(self._events[k])
            self._events[k] = []

    def close(self) -> None:
        """Unmap and let the buffers go."""
        self.drain()
        self.host, self._pinned, self.device = [], [], []


class _Device:
    """A context on one device, with a compute queue, a transfer queue and the
    programs built in it."""

    def __init__(self, device: cl.Device, fp64: bool | None = None) -> None:
        self.device = device
        self.context = cl.Context([device])
        self.compute = cl.CommandQueue(self.context)
        self.transfer = cl.CommandQueue(self.context)
        self._programs: dict[tuple[str, ...], cl.Program] = {}
        has_fp64 = "cl_khr_fp64" in device.extensions
        if fp64 and not has_fp64:
            raise ValueError(f"OpenCL device {device.name!r} has no cl_khr_fp64")
        self.fp64 = has_fp64 if fp64 is None else fp64
        self.unified = bool(device.host_unified_memory)
        """The device works in host memory (a CPU): transfers need no staging."""
        # IEEE division and square root where the device offers them as an option
        # (without it OpenCL allows 2.5 and 3 ulp: no parity with torch)
        rounded = device.single_fp_config & cl.device_fp_config.CORRECTLY_ROUNDED_DIVIDE_SQRT
        self.fp32_options = ("-cl-fp32-correctly-rounded-divide-sqrt",) if rounded else ()

    def program(self, options: tuple[str, ...]) -> cl.Program:
        """adam.cl built with `options`, once per context."""
        if options not in self._programs:
            source = FORMAT_HEADER.read_text() + SOURCE.read_text()
            self._programs[options] = cl.Program(self.context, source).build(options=list(options))
        return self._programs[options]

    def close(self) -> None:
        """Let the queues, the programs and the context go (once the shards have
        let their buffers go); closing twice does nothing."""
        if not hasattr(self, "context"):
            return
        for queue in (self.compute, self.transfer):
            queue.finish()
        self._programs.clear()
        del self.compute, self.transfer, self.context

    def buffer(self, nbytes: int, fill: np.ndarray | None = None) -> cl.Buffer:
        buf = cl.Buffer(self.context, cl.mem_flags.READ_WRITE, max(nbytes, 4))
        if fill is not None:
            self.write(buf, fill)
        return buf

    def write(self, buf: cl.Buffer, host: np.ndarray, offset: int = 0) -> None:
        if host.nbytes:
            cl.enqueue_copy(self.compute, buf, np.ascontiguousarray(host), dst_offset=offset, is_blocking=True)

    def read(self, buf: cl.Buffer, host: np.ndarray, offset: int = 0) -> np.ndarray:
        if host.nbytes:
            cl.enqueue_copy(self.compute, host, buf, src_offset=offset, is_blocking=True)
        return host


def _backend_errors(what: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """OpenCL errors of a step as BackendError: the step was not applied."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @wraps(fn)
        def run(*args: object, **kwargs: object) -> T:
            try:
                return fn(*args, **kwargs)
            except cl.Error as exc:
                raise BackendError(f"opencl: {what} failed: {exc}") from exc

        return run

    return wrap


# ---- fixed ---------------------------------------------------------------------------------------


class OpenCLFixedKernel(FixedKernel):
    """The `fixed` kernel on resident device buffers in the kernel's memory
    layout (regmap.py): p int32, ms uint32, ex uint32 per block."""

    def __init__(self, dev: _Device, n: int, fmt: FixedFormat, chunk: int = CHUNK) -> None:
        self.dev, self.n, self.fmt = dev, n, fmt
        self.nb = n_blocks(n, fmt.block)
        problem = hardware_problem(fmt)
        if problem is not None:
            raise ValueError(f"the OpenCL kernel cannot be built for the format {fmt.name}: {problem}")
        opts = c_defines(fmt)
        if dev.fp64:
            opts.append("-DHETADAM_FP64")
        self.kernel = cl.Kernel(dev.program(tuple(opts)), "hetadam_adam")
        self.kernel.set_scalar_arg_dtypes([None] * 9 + [np.uint32] * 4 + [np.int32] * 7 + [np.uint32] * 2 + [np.int32])
        self.chunk_blocks = max(1, chunk // fmt.block)
        cb = self.chunk_blocks
        self.slots = _Staging(dev.compute, cb * fmt.block * 2 + cb, (cb * fmt.block * 2, cb, cb * 4))
        self.p = [dev.buffer(4 * n) for _ in range(2)]
        self.ms = [dev.buffer(4 * n) for _ in range(2)]
        self.ex = [dev.buffer(4 * self.nb) for _ in range(2)]
        self.cur = 0
        self.has_pending = False
        self._params: np.ndarray | None = None
        """Host copies of the committed and the pending P (None: not read yet)."""
        self._pending_params: np.ndarray | None = None

    def _write(self, k: int, state: FixedState) -> None:
        self.dev.write(self.p[k], state.P.astype(np.int32))
        self.dev.write(self.ms[k], pack_ms(state.M, state.S))
        self.dev.write(self.ex[k], pack_ex(np.zeros(self.nb, np.int8), state.em, state.es))

    def upload(self, state: FixedState) -> None:
        self._write(self.cur, state)
        self.has_pending = False
        self._params, self._pending_params = state.P.astype(np.int32).copy(), None

    @_backend_errors("reading the fixed state")
    def download(self) -> FixedState:
        k = self.cur
        P = self.dev.read(self.p[k], np.empty(self.n, np.int32))
        M, S = unpack_ms(self.dev.read(self.ms[k], np.empty(self.n, np.uint32)))
        _, em, es = unpack_ex(self.dev.read(self.ex[k], np.empty(self.nb, np.uint32)))
        return FixedState(P=P, M=M, em=em, S=S, es=es)

    def launch(
        self, g: cl.Buffer, eg: cl.Buffer, sat: cl.Buffer, block0: int, blocks: int, sc: StepScalars, idx0: int,
        wait_for: list[cl.Event] | None = None,
    ) -> cl.Event:  # fmt: skip
        """Enqueue the kernel over blocks [block0, block0 + blocks) of the resident
        state; g, eg and sat hold just those blocks."""
        src, dst = self.cur, self.cur ^ 1
        size = -(-blocks // WORK_GROUP) * WORK_GROUP
        return self.kernel(
            self.dev.compute, (size,), (WORK_GROUP,),
            self.p[src], g, eg, self.ms[src], self.ex[src], self.p[dst], self.ms[dst], self.ex[dst], sat,
            self.n, block0, blocks, idx0 & 0xFFFFFFFF,
            sc.beta1, sc.beta2, sc.eps_m, sc.eps_e, sc.alpha_m, sc.alpha_sh, sc.ratio_max, sc.lwd, sc.seed, sc.mode,
            wait_for=wait_for,
        )  # fmt: skip

    @_backend_errors("the fixed step")
    def run(self, G: np.ndarray, eg: np.ndarray, sc: StepScalars, idx0: int) -> int:
        B = self.fmt.block
        sat = np.zeros(self.nb, np.int32)
        for b0, b1 in _chunks(0, self.nb, self.chunk_blocks):
            k = self.slots.acquire()
            lo, hi = b0 * B, min(b1 * B, self.n)
            host = self.slots.host[k]
            g_host = host[: 2 * (hi - lo)].view(np.int16)
            g_host[:] = G[lo:hi]
            eg_host = host[2 * self.chunk_blocks * B :][: b1 - b0].view(np.int8)
            eg_host[:] = eg[b0:b1]
            d_g, d_eg, d_sat = self.slots.device[k]
            q = self.dev.transfer
            copies = [
                cl.enqueue_copy(q, d_g, g_host, is_blocking=False),
                cl.enqueue_copy(q, d_eg, eg_host, is_blocking=False),
            ]
            done = self.launch(d_g, d_eg, d_sat, b0, b1 - b0, sc, idx0, copies)
            read = cl.enqueue_copy(self.dev.compute, sat[b0:b1], d_sat, wait_for=[done], is_blocking=False)
            self.slots.release(k, read)
        self.dev.compute.finish()
        self.slots.drain()
        self.has_pending = True
        self._pending_params = None
        return int(sat.sum())

    def stage(self, state: FixedState) -> None:
        self._write(self.cur ^ 1, state)
        self.has_pending = True
        self._pending_params = state.P.astype(np.int32)

    def commit(self) -> None:
        if self.has_pending:
            self.cur ^= 1
            self.has_pending = False
            self._params, self._pending_params = self._pending_params, None

    def discard(self) -> None:
        self.has_pending = False
        self._pending_params = None

    @_backend_errors("reading the parameters")
    def params(self) -> np.ndarray:
        if self._params is None:
            self._params = self.dev.read(self.p[self.cur], np.empty(self.n, np.int32))
        return self._params

    @_backend_errors("reading the parameters")
    def pending_params(self) -> np.ndarray:
        if self._pending_params is None:
            self._pending_params = self.dev.read(self.p[self.cur ^ 1], np.empty(self.n, np.int32))
        return self._pending_params

    def close(self) -> None:
        """Let the device buffers and the kernel go; closing twice does nothing."""
        if self.p:
            self.slots.close()
            self.p, self.ms, self.ex = [], [], []
            del self.kernel


# ---- fp32 ----------------------------------------------------------------------------------------

MAXIMIZE, COUPLED_DECAY, DECOUPLED_DECAY, AMSGRAD = 1, 2, 4, 8
STATE_NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


@dataclass(frozen=True)
class Fp32Scalars:
    """The kernel's float arguments of one step, rounded from double as torch's fused kernel does."""

    lerp_w: float
    beta2: float
    sq_w: float
    bc2_sqrt: float
    eps: float
    neg_step: float
    wd: float
    p_scale: float
    flags: int

    @classmethod
    def of(cls, h: StepHyper) -> Fp32Scalars:
        flags = (MAXIMIZE if h.maximize else 0) | (AMSGRAD if h.amsgrad else 0)
        if h.weight_decay:
            flags |= DECOUPLED_DECAY if h.decoupled_weight_decay else COUPLED_DECAY
        return cls(
            lerp_w=1.0 - h.beta1,
            beta2=h.beta2,
            sq_w=1.0 - h.beta2,
            bc2_sqrt=math.sqrt(1.0 - h.beta2**h.step),
            eps=h.eps,
            neg_step=-(h.lr / (1.0 - h.beta1**h.step)),
            wd=h.weight_decay,
            p_scale=1.0 - h.lr * h.weight_decay,
            flags=flags,
        )

    def args(self) -> tuple[float | int, ...]:
        return (self.lerp_w, self.beta2, self.sq_w, self.bc2_sqrt, self.eps, self.neg_step, self.wd, self.p_scale,
                self.flags)  # fmt: skip


def _live_runs(segments: list[Segment], step: int) -> list[tuple[int, list[Segment]]]:
    """Consecutive segments with gradients and the same step count (theirs, or
    `step`), in offset order, with that step count."""
    runs: list[tuple[int, list[Segment]]] = []
    last: int | None = None  # the step count of the previous segment when it has a gradient
    for seg in sorted(segments, key=lambda s: s.offset):
        t = None if seg.grad is None else seg.step or step
        if t is not None and t == last:
            runs[-1][1].append(seg)
        elif t is not None:
            runs.append((t, [seg]))
        last = t
    return runs


def _gaps(ranges: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    out, at = [], 0
    for lo, hi in sorted(ranges):
        if lo > at:
            out.append((at, lo))
        at = max(at, hi)
    if at < n:
        out.append((at, n))
    return out


class OpenCLFp32Shard(Shard):
    """torch's Adam/AdamW in float32 on the device: parameters, exp_avg,
    exp_avg_sq (and max_exp_avg_sq) resident, committed and pending. Every step
    writes the pending buffers, so a step that fails part-way leaves the
    committed state as it was.

    The parameters stay mapped to the host for reading: the pending ones, mapped
    by `step` before it returns, so that `commit` only copies them into the
    tensors and cannot fail; then, once committed, as the host image of the
    resident parameters against which `changed_params` compares the tensors
    (on a device in host memory the mapping costs no copy). A mapping is
    released before any command writes its buffer."""

    def __init__(self, dev: _Device, start: int, n: int, chunk: int = CHUNK, fma: bool = True) -> None:
        super().__init__(start, n)
        self.dev = dev
        self.kernels = {}  # floats per work-item -> kernel: VEC for whole vectors, 1 for the ends
        extra = () if fma else ("-DHETADAM_NO_FMA",)
        for width in (VEC, 1):
            options = (f"-DHETADAM_VEC={width}", *dev.fp32_options, *extra)
            kernel = cl.Kernel(dev.program(options), "hetadam_adam_fp32")
            kernel.set_scalar_arg_dtypes([None] * 9 + [np.uint32] * 3 + [np.float32] * 8 + [np.int32])
            self.kernels[width] = kernel
        self.chunk = -(-chunk // VEC) * VEC
        self.slots = _Staging(dev.compute, 4 * self.chunk, (4 * self.chunk,))
        zeros = np.zeros(n, np.float32)
        self.bufs = {name: [dev.buffer(4 * n, zeros) for _ in range(2)] for name in ("p", *STATE_NAMES[:2])}
        self.cur = 0
        self.has_pending = False
        self._segments: list[Segment] = []
        self._committed_view: np.ndarray | None = None
        """The committed parameters, mapped for reading (None: not mapped)."""
        self._pending_view: np.ndarray | None = None
        """The pending parameters, mapped for reading by `step`."""
        self._stale: list[np.ndarray] = []
        """Mappings to release before their buffer is written again."""

    def _ensure_amsgrad(self) -> None:
        if "max_exp_avg_sq" not in self.bufs:
            zeros = np.zeros(self.n, np.float32)
            self.bufs["max_exp_avg_sq"] = [self.dev.buffer(4 * self.n, zeros) for _ in range(2)]

    def launch(
        self, g: cl.Buffer, g0: int, lo: int, hi: int, sc: Fp32Scalars, wait_for: list[cl.Event] | None = None
    ) -> list[cl.Event]:
        """Enqueue the kernels over elements [lo, hi) of the resident state: the
        whole aligned vectors, and element by element the ends; g holds element
        e at e - g0 (g0 a multiple of VEC)."""
        src, dst = self.cur, self.cur ^ 1
        b = self.bufs
        vmax = b.get("max_exp_avg_sq", b["exp_avg_sq"])
        mid_lo, mid_hi = -(-lo // VEC) * VEC, hi // VEC * VEC
        if mid_lo >= mid_hi:
            pieces = [(1, lo, hi)]
        else:
            pieces = [(1, lo, mid_lo), (VEC, mid_lo, mid_hi), (1, mid_hi, hi)]
        events = []
        for width, a, z in pieces:
            if a == z:
                continue
            units = (z - a) // width
            size = -(-units // WORK_GROUP) * WORK_GROUP
            events.append(
                self.kernels[width](
                    self.dev.compute, (size,), (WORK_GROUP,),
                    b["p"][src], g, b["exp_avg"][src], b["exp_avg_sq"][src], vmax[src],
                    b["p"][dst], b["exp_avg"][dst], b["exp_avg_sq"][dst], vmax[dst],
                    a, (a - g0) // width, units, *sc.args(), wait_for=wait_for,
                )
            )  # fmt: skip
        return events

    @_backend_errors("the fp32 step")
    def step(self, segments: list[Segment], hyper: StepHyper) -> int:
        self.discard()
        self._release_stale()
        if hyper.amsgrad:
            self._ensure_amsgrad()
        self._segments = segments
        live: list[tuple[int, int]] = []
        for t, run in _live_runs(segments, hyper.step):
            sc = Fp32Scalars.of(replace(hyper, step=t))
            lo, hi = run[0].offset, run[-1].offset + run[-1].param.numel()
            live.append((lo, hi))
            for g0 in range(lo // VEC * VEC, hi, self.chunk):
                self._chunk(run, g0, max(g0, lo), min(g0 + self.chunk, hi), sc)
        # on the wire: the 32-bit gradients of the runs in, their parameters out
        self.wire_bytes = 4 * sum(hi - lo for lo, hi in live) + 4 * sum(
            seg.param.numel() for seg in segments if seg.grad is not None
        )
        for lo, hi in _gaps(live, self.n):  # what this step leaves as it is
            for bufs in self.bufs.values():
                cl.enqueue_copy(self.dev.compute, bufs[self.cur ^ 1], bufs[self.cur], byte_count=4 * (hi - lo),
                                src_offset=4 * lo, dst_offset=4 * lo)  # fmt: skip
        self.dev.compute.finish()
        self.slots.drain()
        self._pending_view = self._map(self.cur ^ 1)
        self.has_pending = True
        return 0

    def _map(self, k: int) -> np.ndarray:
        """Parameter buffer k, mapped for reading (blocking)."""
        if not self.n:  # OpenCL maps no empty range
            return np.zeros(0, np.float32)
        view, _ = cl.enqueue_map_buffer(self.dev.compute, self.bufs["p"][k], cl.map_flags.READ, 0, (self.n,),
                                        np.float32)  # fmt: skip
        return view

    def _release_stale(self) -> None:
        while self._stale:
            mapping = self._stale.pop().base
            if mapping is not None:
                mapping.release()

    def _unmap_all(self) -> None:
        self.discard()
        if self._committed_view is not None:
            self._stale.append(self._committed_view)
            self._committed_view = None
        self._release_stale()

    @_backend_errors("reading the parameters")
    def changed_params(self, pieces: list[tuple[int, np.ndarray]]) -> list[bool]:
        if self._committed_view is None:
            self._committed_view = self._map(self.cur)
        view = self._committed_view
        return [floats_differ(view[off : off + x.size], x) for off, x in pieces]

    @_backend_errors("writing the parameters")
    def reimport_params(self, pieces: list[tuple[int, np.ndarray]]) -> None:
        self._unmap_all()
        for off, x in pieces:
            self.dev.write(self.bufs["p"][self.cur], x, offset=4 * off)

    def _chunk(self, run: list[Segment], g0: int, a: int, b: int, sc: Fp32Scalars) -> None:
        """Send the gradients of elements [a, b) of a run (zeros between its
        segments) to a device buffer at their offsets from g0, and enqueue the
        kernels on them. Through pinned staging, or straight from the tensors
        where the device shares the host's memory (one copy instead of two)."""
        k = self.slots.acquire()
        (d_g,) = self.slots.device[k]
        q = self.dev.transfer
        unified = self.dev.unified
        host = self.slots.host[k][: 4 * (b - g0)].view(np.float32)
        copies: list[cl.Event] = []

        def pad(lo: int, hi: int) -> None:  # zeros between parameters
            if lo < hi and unified:
                copies.append(cl.enqueue_fill_buffer(q, d_g, np.float32(0), 4 * (lo - g0), 4 * (hi - lo)))
            elif lo < hi:
                host[lo - g0 : hi - g0] = 0.0

        at = a
        for seg in run:
            lo, hi = max(seg.offset, a), min(seg.offset + seg.param.numel(), b)
            if lo >= hi:
                continue
            pad(at, lo)
            grad = seg.grad.detach()[lo - seg.offset : hi - seg.offset].numpy()
            if unified:
                copies.append(cl.enqueue_copy(q, d_g, grad, dst_offset=4 * (lo - g0), is_blocking=False))
            else:
                host[lo - g0 : hi - g0] = grad
            at = hi
        pad(at, b)
        if not unified:
            copies.append(cl.enqueue_copy(q, d_g, host[a - g0 :], dst_offset=4 * (a - g0), is_blocking=False))
        self.slots.release(k, *self.launch(d_g, g0, a, b, sc, copies))

    def commit(self) -> None:
        if not self.has_pending:
            return
        new = self._pending_view
        assert new is not None
        for seg in self._segments:
            if seg.grad is not None:
                np.copyto(seg.param.detach().numpy(), new[seg.offset : seg.offset + seg.param.numel()])
                increment_version(seg.param)  # as an in-place torch op would
        self.cur ^= 1
        if self._committed_view is not None:  # its buffer now takes the next pending state
            self._stale.append(self._committed_view)
        self._committed_view, self._pending_view = new, None
        self.has_pending = False
        self._segments = []

    def discard(self) -> None:
        if self._pending_view is not None:
            self._stale.append(self._pending_view)
            self._pending_view = None
        self.has_pending = False
        self._segments = []

    def export_state(self) -> dict[str, np.ndarray]:
        return {
            name: self.dev.read(bufs[self.cur], np.empty(self.n, np.float32))
            for name, bufs in self.bufs.items()
            if name != "p"
        }

    def import_state(self, state: dict[str, np.ndarray], params: np.ndarray) -> None:
        self._unmap_all()
        if "max_exp_avg_sq" in state:
            self._ensure_amsgrad()
        zeros = np.zeros(self.n, np.float32)
        for name, bufs in self.bufs.items():
            value = params if name == "p" else state.get(name, zeros)
            self.dev.write(bufs[self.cur], np.asarray(value, np.float32).reshape(self.n))
        self.has_pending = False

    def close(self) -> None:
        """Let the device buffers and the kernels go."""
        self._unmap_all()
        self.slots.close()
        self.bufs, self.kernels = {}, {}


# ---- backend -------------------------------------------------------------------------------------


class OpenCLBackend(Backend):
    """platform, device: see select_device. chunk: elements per staging chunk.
    fp64: compute the fixed kernel's square roots and quotients in double
    precision (None: when the device has cl_khr_fp64; False: integer only, as
    on an FPGA). fp32_fma: fp32 with fused multiply-adds where torch's fused
    kernel has them, bit-identical with it and the cpu backend (False: product
    and sum rounded apart, within float32 rounding of torch and faster where
    the device has no fast fma, as PoCL)."""

    name = "opencl"
    numerics = ("fp32", "fixed")

    def __init__(
        self,
        platform: str | int | None = None,
        device: str | int | None = None,
        chunk: int = CHUNK,
        fp64: bool | None = None,
        fp32_fma: bool = True,
    ) -> None:
        if cl is None:
            self.availability().raise_if_unusable(self.name)
        try:
            chosen = select_device(platform, device)
        except LookupError as exc:
            why = _unusable(exc)
            raise BackendUnavailable(f"backend 'opencl' is not usable here: {why.reason}. {why.remedy}") from exc
        try:
            self.dev = _Device(chosen, fp64)
        except cl.Error as exc:
            raise BackendError(
                f"backend 'opencl' cannot open {chosen.platform.name}: {chosen.name} ({exc}); choose another device"
                f" with {ENV_PLATFORM} / {ENV_DEVICE}"
            ) from exc
        self.chunk = chunk
        self.fp32_fma = fp32_fma

    @property
    def device_name(self) -> str:
        d = self.dev.device
        return f"{d.platform.name}: {d.name}"

    @classmethod
    def availability(cls) -> Availability:
        if cl is None:
            return Availability(False, "pyopencl is not installed", "Install it: pip install 'hetadam[opencl]'")
        try:
            select_device()
        except LookupError as exc:
            return _unusable(exc)
        return Availability(True)

    def close(self) -> None:
        """Release the context, its queues and programs (the shards release their buffers: close them first)."""
        self.dev.close()

    def create_shard(self, start: int, n: int, numerics: str, fmt: FixedFormat = DEFAULT) -> Shard:
        if numerics == "fp32":
            return OpenCLFp32Shard(self.dev, start, n, self.chunk, self.fp32_fma)
        if numerics == "fixed":
            return FixedShard(start, n, OpenCLFixedKernel(self.dev, n, fmt, self.chunk), fmt)
        raise ValueError(f"backend 'opencl' has no numerics {numerics!r}: choose one of {', '.join(self.numerics)}")


# ---- bench ---------------------------------------------------------------------------------------


def _best_times(fns: dict[str, Callable[[], object]], seconds: float) -> dict[str, float]:
    """The best wall time of each function, calling them in turn (after a warm-up)
    for about `seconds`, so that every one sees the same machine load."""
    best = dict.fromkeys(fns, math.inf)
    for fn in fns.values():
        fn()
    t_end = time.perf_counter() + seconds
    rounds = 0
    while rounds < 3 or time.perf_counter() < t_end:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
        rounds += 1
    return best


def bench_opencl(
    sizes: tuple[int, ...] = (1 << 20, 1 << 24), seconds: float = 3.0, backend: OpenCLBackend | None = None
) -> list[dict[str, object]]:
    """Gparam/s of the opencl backend and of torch.optim.Adam(fused=True), timed
    in turn in the same run, for each size and numerics (`fp32`, `fp32-nofma`:
    fp32_fma=False, `fixed`). `resident`: the kernel alone on device-resident
    state, the gradient already on the device. `step`: a whole shard step and
    commit (gradients in through the staging buffers, parameters out into the
    torch tensors, and for fixed the host-side gradient quantisation)."""
    be = backend or OpenCLBackend()
    out: list[dict[str, object]] = []
    hyper = StepHyper(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=10)
    for n in sizes:
        gen = torch.Generator().manual_seed(n)
        params = torch.randn(n, generator=gen)
        grad = torch.randn(n, generator=gen) * 1e-3
        ref = params.clone().requires_grad_()
        ref.grad = grad.clone()
        opt = torch.optim.Adam([ref], lr=1e-3, fused=True)
        fns: dict[str, Callable[[], object]] = {"torch": opt.step}
        shards: dict[str, Shard] = {
            "fp32": OpenCLFp32Shard(be.dev, 0, n, be.chunk, fma=True),
            "fp32-nofma": OpenCLFp32Shard(be.dev, 0, n, be.chunk, fma=False),
            "fixed": be.create_shard(0, n, "fixed", DEFAULT),
        }
        for name, shard in shards.items():
            p = params.clone()
            shard.import_state({}, p.numpy())
            if isinstance(shard, OpenCLFp32Shard):
                g_dev = be.dev.buffer(4 * n, grad.numpy())
                fns[f"{name} resident"] = partial(lambda s, g, sc, n: cl.wait_for_events(s.launch(g, 0, 0, n, sc)),
                                                  shard, g_dev, Fp32Scalars.of(hyper), n)  # fmt: skip
            else:
                G, eg = quantize_grad_fast(grad.numpy())
                bufs = (be.dev.buffer(2 * n, G), be.dev.buffer(eg.size, eg), be.dev.buffer(4 * eg.size))
                fns[f"{name} resident"] = partial(lambda k, b, sc, nb: k.launch(*b, 0, nb, sc, 0).wait(),
                                                  shard.kernel, bufs, shard.scalars(hyper), eg.size)  # fmt: skip
            fns[f"{name} step"] = partial(lambda s, seg: (s.step(seg, hyper), s.commit()), shard,
                                          [Segment(0, p, grad)])  # fmt: skip
        best = _best_times(fns, seconds)
        fused = n / best.pop("torch") / 1e9
        for name, t in best.items():
            numerics, mode = name.split()
            rate = n / t / 1e9
            out.append({"n": n, "numerics": numerics, "mode": mode, "gparam_s": rate, "torch_fused_gparam_s": fused,
                        "ratio": rate / fused, "device": be.device_name})  # fmt: skip
        for shard in shards.values():
            shard.close()
    return out
