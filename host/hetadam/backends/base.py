"""What every backend provides: resident state for a range of elements, and a
two-phase step (compute, then commit or discard) so that a step is all or nothing.

A backend owns *shards*. A shard holds the optimizer state of `n` consecutive
elements of one flat parameter group (start index `start`, a multiple of the
block size) and keeps it resident between steps: gradients go in, parameters
come out. ``step`` computes the new state without touching the committed one;
``commit`` makes it current, ``discard`` drops it. Everything the optimizer
needs beyond that (flattening, hyper-parameters, hooks) lives in optim.py.

`fixed` backends implement one small interface, `FixedKernel`: upload a
FixedState, run the golden-model update on it, download it. The host-side
conversions they share (gradient quantisation, scalar encoding) live in
`FixedShard`, so every backend sees the same bits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..finite import all_finite
from ..kernels import BackendError as BackendError
from ..kernels import BackendUnavailable, FixedKernel
from ..numerics import FixedFormat, FixedState, adam_step
from ..numerics.convert import params_from_fixed, params_to_fixed, state_from_float, state_to_float
from ..numerics.fast import params_differ, params_to_float_into, quantize_grad_into
from ..numerics.formats import EXP_ZERO
from ..numerics.scalars import StepScalars, encode_step
from ..state_io import FIXED_KEYS, FORMAT_SHARD_KEY, format_tag


class NonFiniteGradientError(ValueError):
    """A gradient holds NaN or Inf; the step was not applied."""


@dataclass(frozen=True)
class Availability:
    usable: bool
    reason: str = ""
    remedy: str = ""

    def raise_if_unusable(self, name: str) -> None:
        if not self.usable:
            raise BackendUnavailable(f"backend {name!r} is not usable here: {self.reason}. {self.remedy}".strip())


@dataclass(frozen=True)
class Segment:
    """One parameter's elements inside a shard: 1-D float32 views of the
    parameter and its gradient (None: the parameter has no gradient this step
    and stays as it is, as in torch.optim), and the parameter's own step
    count for this update (None: the step's `StepHyper.step`)."""

    offset: int
    param: torch.Tensor
    grad: torch.Tensor | None
    step: int | None = None


@dataclass(frozen=True)
class StepHyper:
    """Hyper-parameters of one step of one param group, as floats (host side)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    step: int
    decoupled_weight_decay: bool = False
    amsgrad: bool = False
    maximize: bool = False
    seed: int = 0
    stochastic: bool = False
    check_finite: bool = True
    """Refuse a gradient that the host's own arithmetic (coupled weight decay) makes non-finite."""


class Shard(ABC):
    """Resident state of elements [start, start + n) of one flat group."""

    infallible = False
    """True when `step` cannot fail on inputs the optimizer checked (the host's
    own arithmetic): such a shard may run in place when no shard of the step can
    fail (runtime.py). A shard that may fail never touches its committed state
    or the parameters before `commit`."""
    link_rate: float | None = None
    """Bytes per second of the link between the host and the backend, when known
    (the `tcp://` backend's `link` option): step_stats' link utilisation."""

    def __init__(self, start: int, n: int) -> None:
        self.start = start
        self.n = n
        self.transactional = False
        """Set by the runtime: False only when the step runs in place (every shard infallible)."""
        self.wire_bytes = 0
        """Bytes moved between host and backend by the last step."""

    @abstractmethod
    def step(self, segments: list[Segment], hyper: StepHyper) -> int:
        """Compute the next state from the segments' gradients, leaving the
        committed state and the parameters as they are (an infallible shard
        that is not `transactional` may update them in place), and do
        everything that can fail, so that `commit` cannot. Returns the count of
        saturated elements."""

    @abstractmethod
    def commit(self) -> None:
        """Make the state computed by the last `step` current and write the new
        parameters into the segments' parameter views. Cannot fail."""

    @abstractmethod
    def discard(self) -> None:
        """Drop the state computed by the last `step`."""

    def changed_params(self, pieces: list[tuple[int, np.ndarray]]) -> list[bool]:
        """For each (offset, values) piece, whether the parameters this shard
        holds for elements [offset, offset + values.size) differ from `values`,
        the tensor's float32 values (changed outside the optimizer). By default
        none do: the shard steps from the tensors themselves."""
        return [False] * len(pieces)

    def reimport_params(self, pieces: list[tuple[int, np.ndarray]]) -> None:  # noqa: B027 - see changed_params
        """Take each piece's values as the parameters of its elements, keeping
        the moments; an element whose resident value equals its float32 value
        keeps it (see `changed_params`)."""

    @abstractmethod
    def export_state(self) -> dict[str, np.ndarray]:
        """Portable state of the n elements: float32 'exp_avg', 'exp_avg_sq' (and
        'max_exp_avg_sq' with amsgrad); fixed shards add their exact arrays."""

    @abstractmethod
    def import_state(self, state: dict[str, np.ndarray], params: np.ndarray) -> None:
        """Load a portable state (exact when it carries this shard's own format;
        zero moments when it is empty) for parameters `params` (float32[n])."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release backend resources."""


def prepare_fixed_grad(grad: np.ndarray, params: np.ndarray | None, hyper: StepHyper) -> np.ndarray:
    """Apply `maximize` and coupled (Adam, not AdamW) weight decay on the host, in
    float32 as torch does, before the gradient is quantised."""
    g = -grad if hyper.maximize else grad
    if params is not None and hyper.weight_decay and not hyper.decoupled_weight_decay:
        with np.errstate(over="ignore"):  # an overflow is the caller's to report (FixedShard.step)
            g = g + np.float32(hyper.weight_decay) * params
    return g


def encode_hyper(hyper: StepHyper, fmt: FixedFormat) -> StepScalars:
    """The register values of a step (raises ValueError when the format cannot hold them)."""
    return encode_step(
        lr=hyper.lr,
        beta1=hyper.beta1,
        beta2=hyper.beta2,
        eps=hyper.eps,
        step=hyper.step,
        weight_decay=hyper.weight_decay,
        decoupled_weight_decay=hyper.decoupled_weight_decay,
        seed=hyper.seed,
        stochastic=hyper.stochastic,
        fmt=fmt,
    )


class FixedShard(Shard):
    """A shard of `fixed` numerics over any FixedKernel."""

    def __init__(self, start: int, n: int, kernel: FixedKernel, fmt: FixedFormat) -> None:
        if start % fmt.block:
            raise ValueError(f"shard start {start} must be a multiple of the block size {fmt.block}")
        super().__init__(start, n)
        self.kernel = kernel
        self.fmt = fmt
        self._segments: list[Segment] = []
        self._pending_P: np.ndarray | None = None
        """The P of the pending state, read in `step` so that `commit` cannot fail."""
        self._G: np.ndarray | None = None
        self._eg: np.ndarray | None = None
        self.kernel.upload(FixedState.zeros(n, fmt))

    def scalars(self, hyper: StepHyper) -> StepScalars:
        return encode_hyper(hyper, self.fmt)

    def step(self, segments: list[Segment], hyper: StepHyper) -> int:
        self._segments = segments
        sc = self.scalars(hyper)
        if self._G is None:
            self._G = np.zeros(self.n, np.int16)  # padding between parameters stays 0
            self._eg = np.full(-(-self.n // self.fmt.block), EXP_ZERO, np.int8)
        G, eg = self._G, self._eg
        coupled = hyper.weight_decay and not hyper.decoupled_weight_decay
        P = self.kernel.params() if coupled else None
        for seg in segments:
            if seg.grad is None:
                G[seg.offset : seg.offset + seg.param.numel()] = 0
                continue
            g = seg.grad.numpy()
            if hyper.maximize or coupled:
                p = None if P is None else params_from_fixed(P[seg.offset : seg.offset + g.size], self.fmt)
                g = prepare_fixed_grad(g, None if p is None else p.astype(np.float32), hyper)
                if coupled and hyper.check_finite and not all_finite(torch.from_numpy(g)):
                    raise NonFiniteGradientError(
                        f"the gradient plus weight_decay={hyper.weight_decay:g} times the parameter (coupled weight "
                        f"decay) overflows float32 in a parameter of {g.size} elements; the step was not applied "
                        "(lower weight_decay, or use decoupled_weight_decay=True)"
                    )
            quantize_grad_into(g, G, eg, seg.offset, self.fmt)
        # On the wire: the 16-bit gradient mantissas and their block exponents in,
        # the 32-bit parameters out.
        self.wire_bytes = 0 if self.kernel.host_resident else G.nbytes + eg.nbytes + 4 * self.n
        if all(seg.grad is not None and seg.step in (None, hyper.step) for seg in segments):
            sat = self.kernel.run(G, eg, sc, self.start)
        else:
            sat = self._partial_step(segments, G, eg, hyper)
        self._pending_P = self.kernel.pending_params()
        return sat

    def _partial_step(self, segments: list[Segment], G: np.ndarray, eg: np.ndarray, hyper: StepHyper) -> int:
        """Some parameters have no gradient or their own step count: step each
        on the host with the golden model (each parameter's blocks are its own)
        and stage the result as the pending state."""
        old = self.kernel.download()
        new = old.copy()
        sat = 0
        B = self.fmt.block
        for seg in segments:
            if seg.grad is None:
                continue
            lo, hi = seg.offset, seg.offset + seg.param.numel()
            blo, bhi = lo // B, -(-hi // B)
            part = FixedState(old.P[lo:hi], old.M[lo:hi], old.em[blo:bhi], old.S[lo:hi], old.es[blo:bhi])
            sc = self.scalars(replace(hyper, step=seg.step or hyper.step))
            stepped, s = adam_step(part, G[lo:hi], eg[blo:bhi], sc, self.start + lo, self.fmt)
            new.P[lo:hi], new.M[lo:hi], new.S[lo:hi] = stepped.P, stepped.M, stepped.S
            new.em[blo:bhi], new.es[blo:bhi] = stepped.em, stepped.es
            sat += s
        self.kernel.stage(new)
        return sat

    def commit(self) -> None:
        P, self._pending_P = self._pending_P, None
        if P is None:  # nothing pending
            return
        self.kernel.commit()
        for seg in self._segments:
            if seg.grad is not None:
                params_to_float_into(P[seg.offset : seg.offset + seg.param.numel()], seg.param.numpy(), self.fmt)

    def discard(self) -> None:
        self._pending_P = None
        self.kernel.discard()

    def changed_params(self, pieces: list[tuple[int, np.ndarray]]) -> list[bool]:
        P = self.kernel.params()
        return [params_differ(P[off : off + x.size], x, self.fmt) for off, x in pieces]

    def reimport_params(self, pieces: list[tuple[int, np.ndarray]]) -> None:
        st = self.kernel.download()
        for off, x in pieces:
            _take_changed(st.P[off : off + x.size], x, self.fmt)
        self.kernel.upload(st)

    def export_state(self) -> dict[str, np.ndarray]:
        st = self.kernel.download()
        _, m, v = state_to_float(st, self.fmt)
        out = {"exp_avg": m.astype(np.float32), "exp_avg_sq": v.astype(np.float32)}
        out.update(zip(FIXED_KEYS, (st.P, st.M, st.em, st.S, st.es), strict=True))
        out[FORMAT_SHARD_KEY] = format_tag(self.fmt)
        return out

    def import_state(self, state: dict[str, np.ndarray], params: np.ndarray) -> None:
        if all(k in state for k in FIXED_KEYS) and np.array_equal(state.get(FORMAT_SHARD_KEY), format_tag(self.fmt)):
            st = FixedState(*(np.array(state[k]) for k in FIXED_KEYS))
            _take_changed(st.P, params, self.fmt)
        else:
            zeros = np.zeros(self.n, np.float32)
            st = state_from_float(params, state.get("exp_avg", zeros), state.get("exp_avg_sq", zeros), self.fmt)
        self.kernel.upload(st)

    def close(self) -> None:
        self.kernel.close()


def _take_changed(P: np.ndarray, params: np.ndarray, fmt: FixedFormat) -> None:
    """Parameters changed outside the optimizer: where `params` (float32) differs
    from P's float32 value, P takes the parameter's value; elsewhere P keeps the
    bits below float32's precision."""
    moved = params_from_fixed(P, fmt).astype(np.float32) != params
    if moved.any():
        P[moved] = params_to_fixed(params[moved], fmt)[0]


class Backend(ABC):
    """A processor that runs Adam steps. Subclasses register in backends/__init__.py."""

    name: str = ""
    numerics: tuple[str, ...] = ("fixed",)

    @classmethod
    @abstractmethod
    def availability(cls) -> Availability:
        """Whether this backend can run here, and if not why and how to get it."""

    @abstractmethod
    def create_shard(self, start: int, n: int, numerics: str, fmt: FixedFormat) -> Shard:
        """A shard for elements [start, start + n) of a flat group."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the backend (device contexts, simulator processes)."""
