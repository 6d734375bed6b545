"""`hetadam bench --host-model`: whole training iterations of a model with
more than 10M parameters (forward, backward, step), with torch's fused AdamW
as the baseline and HetAdam on each fp32 backend with and without `overlap`.

Each configuration trains its own copy of the model from the same start on
the same batches; a row gives the median seconds of the iteration, of forward
plus backward, and of `step()`. What overlap hides is measured on whole
iterations: the fraction of the plain path's step time that the overlapped
iteration no longer spends, `(iteration - iteration_overlap) / step`. The
hooks' copies run during backward, so backward may slow down where they
compete with it for the cores: that counts against them.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from . import backends
from .optim import HetAdam

WIDTHS = (1024, 2048, 2048, 2048, 1024)
"""The layers of the benched MLP: 12.6M parameters."""
BATCH = 32
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class HostRow:
    """One configuration's median timings, in seconds."""

    optimizer: str
    dtype: str
    params: int
    iteration: float
    forward_backward: float
    step: float
    hidden: float | None = None
    """For an overlapped row: the fraction of the plain row's step time the iteration saved."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def host_model(dtype: torch.dtype, widths: Sequence[int] = WIDTHS, seed: int = 0) -> torch.nn.Sequential:
    """An MLP through `widths`, GELU between its layers."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [torch.nn.Linear(a, b), torch.nn.GELU()]
    return torch.nn.Sequential(*layers[:-1]).to(dtype)


class _Timed:
    """One configuration being timed: its model, optimizer and timings."""

    def __init__(self, net: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        self.net, self.opt = net, opt
        self.whole: list[float] = []
        self.fwd_bwd: list[float] = []
        self.steps: list[float] = []

    def iterate(self, x: torch.Tensor, keep: bool) -> None:
        t0 = time.perf_counter()
        self.opt.zero_grad()
        self.net(x).float().square().mean().backward()
        t1 = time.perf_counter()
        self.opt.step()
        t2 = time.perf_counter()
        if keep:
            self.whole.append(t2 - t0)
            self.fwd_bwd.append(t1 - t0)
            self.steps.append(t2 - t1)

    def medians(self) -> tuple[float, float, float]:
        return statistics.median(self.whole), statistics.median(self.fwd_bwd), statistics.median(self.steps)


def run_host_bench(
    names: Sequence[str],
    dtypes: Sequence[str] = tuple(DTYPES),
    repeat: int = 10,
    lr: float = 1e-4,
    warmup: int = 2,
    widths: Sequence[int] = WIDTHS,
) -> list[HostRow]:
    """Rows for torch's fused AdamW, then HetAdam on each backend of `names`
    without and with overlap, for each model dtype. The configurations take
    turns iteration by iteration, so that a change in the machine's load
    spreads over all of them."""
    rows: list[HostRow] = []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        base = host_model(dtype, widths)
        size = sum(p.numel() for p in base.parameters())
        makers: dict[str, Callable[[torch.nn.Module], torch.optim.Optimizer]] = {
            "torch AdamW fused": lambda m: torch.optim.AdamW(m.parameters(), lr=lr, fused=True)
        }
        for name in names:
            for overlap in (False, True):
                makers[f"HetAdam {name}" + (" overlap" if overlap else "")] = hetadam_for(name, overlap, lr)
        g = torch.Generator().manual_seed(1)
        batches = [torch.randn(BATCH, widths[0], generator=g).to(dtype) for _ in range(4)]
        timed: dict[str, _Timed] = {}
        try:
            for label, make in makers.items():
                net = copy.deepcopy(base)
                timed[label] = _Timed(net, make(net))
            for i in range(warmup + repeat):
                for t in timed.values():
                    t.iterate(batches[i % len(batches)], keep=i >= warmup)
        finally:
            for t in timed.values():
                if isinstance(t.opt, HetAdam):
                    t.opt.close()
        for label, t in timed.items():
            iteration, fwd_bwd, step = t.medians()
            row = HostRow(label, dtype_name, size, iteration, fwd_bwd, step)
            if label.endswith(" overlap"):
                plain = timed[label.removesuffix(" overlap")].medians()
                row.hidden = (plain[0] - iteration) / plain[2]
            rows.append(row)
    return rows


def hetadam_for(name: str, overlap: bool, lr: float) -> Callable[[torch.nn.Module], torch.optim.Optimizer]:
    """HetAdam as AdamW with torch's defaults (weight_decay 0.01) on backend `name`."""

    def make(net: torch.nn.Module) -> torch.optim.Optimizer:
        return HetAdam(
            net.parameters(), lr=lr, weight_decay=0.01, decoupled_weight_decay=True, backend=name, overlap=overlap
        )

    return make


def usable_fp32_backends(names: Sequence[str] | None) -> list[str]:
    """The backends among `names` (default: cpu and opencl) that run fp32 and are usable here."""
    candidates = list(names) if names else ["cpu", "opencl"]
    return [n for n in candidates if backends.availability(n).usable and "fp32" in backends.backend_class(n).numerics]


def host_table(rows: Sequence[HostRow]) -> str:
    lines = [
        f"{'dtype':<9} {'optimizer':<26} {'iteration ms':>12} {'fwd+bwd ms':>11} {'step ms':>9} {'vs torch':>9} "
        f"{'hidden':>7}",
    ]
    for r in rows:
        torch_row = next(x for x in rows if x.dtype == r.dtype and x.optimizer.startswith("torch"))
        hidden = "" if r.hidden is None else f"{100 * r.hidden:6.1f}%"
        lines.append(
            f"{r.dtype:<9} {r.optimizer:<26} {r.iteration * 1e3:12.2f} {r.forward_backward * 1e3:11.2f} "
            f"{r.step * 1e3:9.2f} {torch_row.iteration / r.iteration:8.2f}x {hidden:>7}"
        )
    return "\n".join(lines)
