"""A param group's resident state in and out of torch's per-parameter layout.

Shards hold the state of a group's flat element space (layout.py); torch's
state_dict holds it per parameter. Every numerics exports float32 `exp_avg`
and `exp_avg_sq` (and `max_exp_avg_sq` with amsgrad), so a state moves between
torch.optim.Adam, backends and numerics. `fixed` shards add their exact
arrays, which travel under the parameter's `"fixed"` key with the format they
belong to (`format_tag`); a state loaded into the same format is then exact.
A parameter stepped through a float32 master finer than itself (a bf16 or
fp16 one, masters.py) carries the master under `"master"`, so that a resumed
run goes on from the full-precision value.

The fixed arrays have one codec here (`FIXED_ARRAYS`): their names in the
state dict, their keys in a shard's export, their dtypes on the kernel and in
torch (which holds no uint16: S travels as int16 bits), and whether they hold
an element or a block each.

Loading is two-phase: `decode_group` checks everything a saved state can get
wrong (shapes, sizes, dtypes, the format tag, per-block lengths) and raises a
ValueError naming the parameter before anything has changed; `import_group`
then writes the decoded arrays into the shards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .numerics import FixedFormat
from .numerics.formats import EXP_ZERO

if TYPE_CHECKING:
    from .backends.base import Shard
    from .layout import GroupLayout

MOMENTS = ("exp_avg", "exp_avg_sq")
"""The float moments every numerics exports, as torch.optim.Adam names them."""
AMSGRAD_MOMENT = "max_exp_avg_sq"
FIXED_STATE_KEY = "fixed"
"""A parameter's state key for the exact fixed arrays."""
FORMAT_KEY = "format"
"""The key, among the fixed arrays, of the format they belong to."""
FORMAT_SHARD_KEY = "fixed_format"
"""The same, in a shard's export."""
MASTER_KEY = "master"
"""A parameter's state key for its float32 master (masters.py), when it has one finer than itself."""


@dataclass(frozen=True)
class FixedArray:
    """One array of the fixed state."""

    name: str
    """Its key under the parameter's "fixed" state (FixedState's field name)."""
    native: type[np.generic]
    """Its dtype on the kernel."""
    portable: type[np.generic]
    """Its dtype in a torch state dict (the native bits, signed)."""
    per_block: bool
    """One value per block of elements (a block exponent) instead of one per element."""

    @property
    def shard_key(self) -> str:
        """Its key in a shard's export_state / import_state."""
        return f"fixed_{self.name}"

    def length(self, numel: int, block: int) -> int:
        return -(-numel // block) if self.per_block else numel

    def fill(self) -> int:
        """The value of an element (or block) without state."""
        return EXP_ZERO if self.per_block else 0


FIXED_ARRAYS = (
    FixedArray("P", np.int32, np.int32, per_block=False),
    FixedArray("M", np.int16, np.int16, per_block=False),
    FixedArray("em", np.int8, np.int8, per_block=True),
    FixedArray("S", np.uint16, np.int16, per_block=False),
    FixedArray("es", np.int8, np.int8, per_block=True),
)
FIXED_KEYS = tuple(a.shard_key for a in FIXED_ARRAYS)


def format_tag(fmt: FixedFormat) -> np.ndarray:
    """The format a set of fixed arrays belongs to, as five int64."""
    return np.array([fmt.block, fmt.g_bits, fmt.m_bits, fmt.s_bits, fmt.p_frac], np.int64)


def _format_of_tag(tag: np.ndarray) -> FixedFormat:
    return FixedFormat(*(int(x) for x in tag))


# -- gathering and scattering the flat space ---------------------------------


def gather(shards: Sequence[Shard], size: int, block: int) -> dict[str, np.ndarray]:
    """The shards' exported state merged over a flat space of `size` elements."""
    merged: dict[str, np.ndarray] = {}
    per_block = {a.shard_key for a in FIXED_ARRAYS if a.per_block}
    for shard in shards:
        for key, arr in shard.export_state().items():
            if key == FORMAT_SHARD_KEY:
                merged[key] = arr
                continue
            blocked = key in per_block
            if key not in merged:
                merged[key] = np.zeros(-(-size // block) if blocked else size, arr.dtype)
            lo = shard.start // block if blocked else shard.start
            merged[key][lo : lo + arr.size] = arr
    return merged


def shard_part(flat: Mapping[str, np.ndarray], start: int, n: int, block: int) -> dict[str, np.ndarray]:
    """The elements [start, start + n) of a flat state, as a shard imports them."""
    per_block = {a.shard_key for a in FIXED_ARRAYS if a.per_block}
    part = {}
    for key, arr in flat.items():
        if key == FORMAT_SHARD_KEY:
            part[key] = arr
        elif key in per_block:
            part[key] = arr[start // block : -(-(start + n) // block)]
        else:
            part[key] = arr[start : start + n]
    return part


# -- export -------------------------------------------------------------------


def export_group(
    shards: Sequence[Shard],
    layout: GroupLayout,
    params: Sequence[torch.Tensor],
    steps: Sequence[int],
    masters: Sequence[torch.Tensor | None],
) -> list[dict[str, Any] | None]:
    """Each parameter's state in torch's layout (None for a parameter that
    never stepped: torch keeps no state for it), with its float32 master
    (`masters[i]`, a copy; None: none). The tensors are views of one fresh
    buffer per array: nothing is shared with the resident state."""
    flat = gather(shards, layout.size, layout.block)
    B = layout.block
    out: list[dict[str, Any] | None] = []
    for p, step, master, off, numel in zip(params, steps, masters, layout.offsets, layout.numels, strict=True):
        if not step:
            out.append(None)
            continue
        state: dict[str, Any] = {"step": torch.tensor(float(step))}
        if master is not None:
            state[MASTER_KEY] = master
        for key in (*MOMENTS, AMSGRAD_MOMENT):
            if key in flat:
                state[key] = torch.from_numpy(flat[key][off : off + numel]).reshape(p.shape)
        if FORMAT_SHARD_KEY in flat:
            fixed = {}
            for a in FIXED_ARRAYS:
                lo = off // B if a.per_block else off
                arr = flat[a.shard_key][lo : lo + a.length(numel, B)]
                fixed[a.name] = torch.from_numpy(arr.view(a.portable))
            fixed[FORMAT_KEY] = torch.from_numpy(flat[FORMAT_SHARD_KEY].copy())
            state[FIXED_STATE_KEY] = fixed
        out.append(state)
    return out


# -- import -------------------------------------------------------------------


@dataclass
class GroupState:
    """A param group's saved state, checked and laid out over the group's flat
    space: what `import_group` writes into the shards."""

    steps: list[int]
    """Each parameter's step count (0: it never stepped)."""
    flat: dict[str, np.ndarray]
    """Float moments, plus the exact fixed arrays and their format tag when every
    parameter with a state carries them in the optimizer's format."""
    masters: list[torch.Tensor | None]
    """Each parameter's saved float32 master (None: none saved)."""


def decode_group(
    saved: Sequence[Any],
    params: Sequence[torch.Tensor],
    labels: Sequence[str],
    layout: GroupLayout,
    fmt: FixedFormat,
    quantized: bool,
) -> GroupState:
    """Check the saved per-parameter states of one group and lay them out flat.

    `saved[i]` is the state saved for `params[i]` (None or empty: none);
    `labels[i]` names it in errors. `quantized`: the floats will be quantised
    to `fmt` (fixed numerics without exact arrays), so they must be finite.
    Raises ValueError saying what differs; reads only.
    """
    B = layout.block
    steps: list[int] = []
    masters: list[torch.Tensor | None] = [None] * len(params)
    flat = {key: np.zeros(layout.size, np.float32) for key in MOMENTS}
    fixed: list[tuple[int, int, dict[str, np.ndarray]]] = []
    inexact = False
    ours = format_tag(fmt)
    for i, (st, p, label) in enumerate(zip(saved, params, labels, strict=True)):
        off, numel = layout.offsets[i], layout.numels[i]
        if st is None or len(st) == 0:
            steps.append(0)
            continue
        if not isinstance(st, Mapping):
            raise ValueError(f"the saved state of {label} is a {type(st).__name__}, not a dict")
        if "step" not in st:
            raise ValueError(f"the saved state of {label} has no 'step' (is it a torch.optim.Adam state?)")
        steps.append(_step(st["step"], label))
        if MASTER_KEY in st:
            masters[i] = torch.from_numpy(_moment(st[MASTER_KEY], p, f"master of {label}").copy()).reshape(p.shape)
        for key in (*MOMENTS, AMSGRAD_MOMENT):
            if key in st:
                values = _moment(st[key], p, f"{key!r} of {label}")
                flat.setdefault(key, np.zeros(layout.size, np.float32))[off : off + numel] = values
            elif key in MOMENTS and numel:
                raise ValueError(f"the saved state of {label} has no {key!r} (is it a torch.optim.Adam state?)")
        if FIXED_STATE_KEY in st and not _cast_by_torch(st[FIXED_STATE_KEY]):
            tag, arrays = _fixed(st[FIXED_STATE_KEY], numel, label)
            if np.array_equal(tag, ours):
                fixed.append((off, numel, arrays))
                continue
        inexact = inexact or numel > 0
    if fixed and not inexact:
        for a in FIXED_ARRAYS:
            flat[a.shard_key] = np.full(a.length(layout.size, B), a.fill(), a.native)
        for off, numel, arrays in fixed:
            for a in FIXED_ARRAYS:
                lo = off // B if a.per_block else off
                flat[a.shard_key][lo : lo + a.length(numel, B)] = arrays[a.name]
        flat[FORMAT_SHARD_KEY] = ours
    elif quantized:
        for key in (*MOMENTS, AMSGRAD_MOMENT):
            if key in flat and not np.isfinite(flat[key]).all():
                raise ValueError(
                    f"the saved {key!r} of a parameter group holds NaN or Inf, which the fixed format cannot "
                    "hold: load it into numerics='fp32'"
                )
    return GroupState(steps, flat, masters)


def import_group(shards: Sequence[Shard], flat: Mapping[str, np.ndarray], params_flat: np.ndarray, block: int) -> None:
    """Write a group's flat state (`GroupState.flat`; empty: a fresh state) into
    its shards, for the parameters' current values `params_flat` (float32 over
    the group's flat space)."""
    for shard in shards:
        part = shard_part(flat, shard.start, shard.n, block)
        shard.import_state(part, params_flat[shard.start : shard.start + shard.n])


def _step(value: Any, label: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        v = float(value.item())
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
    else:
        raise ValueError(f"the saved step of {label} is {value!r}: a step count is one number")
    if not (np.isfinite(v) and v >= 0 and v == int(v)):
        raise ValueError(f"the saved step of {label} is {v}: a step count is a whole number >= 0")
    return int(v)


def _moment(value: Any, p: torch.Tensor, what: str) -> np.ndarray:
    """A saved float moment of parameter `p` as float32[numel]."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        kind = f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"
        raise ValueError(f"the saved {what} is {kind}, not a float tensor")
    if value.shape != p.shape:
        raise ValueError(
            f"the saved {what} has shape {tuple(value.shape)}, the parameter {tuple(p.shape)} "
            "(is the state from another model?)"
        )
    return value.detach().to("cpu", torch.float32).reshape(-1).numpy()


def _cast_by_torch(value: Any) -> bool:
    """Whether fixed arrays went through torch.optim.Optimizer.load_state_dict,
    which casts every state tensor of a float parameter to its dtype (the
    format tag included): they are no longer exact, and the floats stand."""
    tag = value.get(FORMAT_KEY) if isinstance(value, Mapping) else None
    return isinstance(tag, torch.Tensor) and tag.is_floating_point()


def _fixed(value: Any, numel: int, label: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A parameter's saved fixed arrays: (format tag, native arrays by name)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"the saved {FIXED_STATE_KEY!r} state of {label} is a {type(value).__name__}, not a dict")
    missing = [k for k in (*(a.name for a in FIXED_ARRAYS), FORMAT_KEY) if k not in value]
    if missing:
        raise ValueError(f"the saved {FIXED_STATE_KEY!r} state of {label} lacks {', '.join(missing)}")
    tag = _array(value[FORMAT_KEY], f"fixed format tag of {label}")
    if tag.dtype != np.int64 or tag.shape != (5,):
        raise ValueError(
            f"the saved fixed format tag of {label} is {tag.dtype}{list(tag.shape)}: it is five int64 "
            "(block, g_bits, m_bits, s_bits, p_frac)"
        )
    try:
        block = _format_of_tag(tag).block
    except ValueError as exc:
        raise ValueError(f"the saved fixed format tag of {label} is not a format: {exc}") from exc
    arrays = {}
    for a in FIXED_ARRAYS:
        arr = _array(value[a.name], f"fixed {a.name!r} of {label}")
        want = (a.length(numel, block),)
        if arr.dtype != a.portable or arr.shape != want:
            raise ValueError(
                f"the saved fixed {a.name!r} of {label} is {arr.dtype}{list(arr.shape)}; "
                f"{np.dtype(a.portable)}{list(want)} expected for {numel} elements in blocks of {block}"
            )
        arrays[a.name] = arr.view(a.native)
    return tag, arrays


def _array(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"the saved {what} is a {type(value).__name__}, not a tensor")
    return value.detach().cpu().numpy()
