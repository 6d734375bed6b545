"""`hetadam bench`: optimizer-step throughput of every usable backend and
numerics, as ratios against torch.optim.Adam (fused and foreach) measured in
the same run on the same parameters. Each `fixed` configuration is measured
twice, with and without the per-step check for parameters changed outside the
optimizer, which gives that check's cost."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import backends
from .optim import HetAdam

DEFAULT_SIZES = (1 << 20, 1 << 24)
SIZE_CAP = {"rtl-sim": 1 << 12, "pynq": 1 << 24}
"""Simulated hardware runs at kHz-MHz rates: it is benched at a small size."""


@dataclass
class BenchRow:
    name: str
    size: int
    seconds: float
    fused_seconds: float
    foreach_seconds: float

    @property
    def gparams(self) -> float:
        return self.size / self.seconds / 1e9

    @property
    def vs_fused(self) -> float:
        return self.fused_seconds / self.seconds

    @property
    def vs_foreach(self) -> float:
        return self.foreach_seconds / self.seconds

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "gparams_per_s": self.gparams, "vs_fused": self.vs_fused, "vs_foreach": self.vs_foreach}


def make_params(size: int, n_tensors: int = 4, seed: int = 0) -> list[torch.nn.Parameter]:
    """`size` elements in a few tensors, with gradients, like a model's."""
    g = torch.Generator().manual_seed(seed)
    per = size // n_tensors
    sizes = [per] * (n_tensors - 1) + [size - per * (n_tensors - 1)]
    params = []
    for n in sizes:
        p = torch.nn.Parameter(torch.randn(n, generator=g) * 0.1)
        p.grad = torch.randn(n, generator=g) * 1e-3
        params.append(p)
    return params


Maker = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def time_steps(make: Maker, size: int, repeat: int) -> float:
    """Median seconds of one optimizer step (after two warm-up steps)."""
    return time_interleaved([make], size, repeat)[0]


def time_interleaved(makers: Sequence[Maker], size: int, repeat: int) -> list[float]:
    """Median seconds of one step of each optimizer, their steps interleaved so
    that all of them see the same state of a shared, noisy machine."""
    opts = [make(make_params(size)) for make in makers]
    times: list[list[float]] = [[] for _ in opts]
    try:
        for round_ in range(repeat + 2):
            for opt, ts in zip(opts, times, strict=True):
                t0 = time.perf_counter()
                opt.step()
                if round_ >= 2:  # two warm-up steps
                    ts.append(time.perf_counter() - t0)
    finally:
        for opt in opts:
            close = getattr(opt, "close", None)
            if close is not None:
                close()
    return [statistics.median(ts) for ts in times]


def fused_adam(p: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.Adam(p, lr=1e-3, fused=True)


def torch_peers(size: int, repeat: int) -> tuple[float, float]:
    fused, foreach = time_interleaved([fused_adam, lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True)], size, repeat)
    return fused, foreach


def configurations(names: Sequence[str] | None) -> list[tuple[str, str]]:
    """(backend, numerics) pairs of every usable backend (or of `names`)."""
    out = []
    for name in names or backends.NAMES:
        if not backends.availability(name).usable:
            continue
        for numerics in backends.backend_class(name).numerics:
            out.append((name, numerics))
    return out


def run_bench(
    sizes: Sequence[int] = DEFAULT_SIZES,
    names: Sequence[str] | None = None,
    repeat: int = 5,
    log: Callable[[str], None] = print,
) -> list[BenchRow]:
    rows: list[BenchRow] = []
    for size in sizes:
        rounds = min(repeat * max(1, (1 << 24) // size), 100)  # small steps: more of them
        fused, foreach = torch_peers(size, rounds)
        rows.append(BenchRow("torch Adam fused", size, fused, fused, foreach))
        rows.append(BenchRow("torch Adam foreach", size, foreach, fused, foreach))
        log(f"size {size:>10,}: torch fused {size / fused / 1e9:.3f} Gparam/s, foreach {size / foreach / 1e9:.3f}")
        candidates = [("hetadam cpu fp32 check_finite=False", "cpu", "fp32", {"check_finite": False}, True)]
        for name, numerics in configurations(names):
            candidates.append((f"hetadam {name} {numerics}", name, numerics, {}, True))
            if numerics == "fixed":
                candidates.append((f"hetadam {name} {numerics} no change check", name, numerics, {}, False))
        for label, name, numerics, extra, detect in candidates:
            n = min(size, SIZE_CAP.get(name, size))

            def make(
                p: list[torch.nn.Parameter], b: str = name, nu: str = numerics, kw: dict = extra, d: bool = detect
            ) -> HetAdam:
                opt = HetAdam(p, lr=1e-3, backend=b, numerics=nu, **kw)
                opt._detect_param_changes = d
                return opt

            if n == size:  # its own fused peer, interleaved step for step
                peer, seconds = time_interleaved([fused_adam, make], size, rounds)
            else:  # simulated hardware: per element, against the peers at the full size
                peer, seconds = fused, time_steps(make, n, 2) * size / n
            row = BenchRow(label, size, seconds, peer, foreach * peer / fused)
            rows.append(row)
            log(
                f"  {row.name:<36} {row.gparams:.3f} Gparam/s  {row.vs_fused:.2f}x fused  {row.vs_foreach:.2f}x foreach"
            )
    return rows


def run_split_bench(
    size: int,
    names: Sequence[str] = ("cpu", "opencl"),
    fractions: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0),
    numerics: str = "fixed",
    repeat: int = 5,
    log: Callable[[str], None] = print,
) -> dict[str, object]:
    """Two backends alone, split by measured throughput, and split at fixed
    fractions (the share of the second), all against torch fused in one run."""
    fused, _ = torch_peers(size, repeat)
    out: dict[str, object] = {"size": size, "backends": list(names), "numerics": numerics, "fused_seconds": fused}
    alone = {}
    for name in names:
        alone[name] = time_steps(lambda p, b=name: HetAdam(p, lr=1e-3, backend=b, numerics=numerics), size, repeat)
        log(f"{name:>8} alone: {size / alone[name] / 1e9:.3f} Gparam/s ({fused / alone[name]:.2f}x fused)")
    out["alone_seconds"] = alone
    stats: list[dict[str, object]] = []

    def split_opt(p: list[torch.nn.Parameter], weights: Sequence[float] | None) -> HetAdam:
        rebalance = 3 if weights is None else 0
        opt = HetAdam(p, lr=1e-3, backend=list(names), numerics=numerics, split=weights, rebalance_every=rebalance)
        stats.append({"opt": opt})
        return opt

    auto = time_steps(lambda p: split_opt(p, None), size, max(repeat, 8))
    out["auto_seconds"] = auto
    out["auto_shares"] = [
        {"backend": s.backend, "elements": s.elements, "bytes_per_param": s.bytes_per_param}
        for s in stats[-1]["opt"].step_stats  # type: ignore[union-attr]
    ]
    log(f"   split (measured shares): {size / auto / 1e9:.3f} Gparam/s ({fused / auto:.2f}x fused)")
    sweep = []
    for f in fractions:
        if f in (0.0, 1.0):
            seconds = alone[names[1] if f else names[0]]
        else:
            seconds = time_steps(lambda p, f=f: split_opt(p, [1 - f, f]), size, repeat)
        sweep.append({"fraction": f, "seconds": seconds, "gparams_per_s": size / seconds / 1e9})
        log(f"   {100 * f:5.1f}% on {names[1]}: {size / seconds / 1e9:.3f} Gparam/s")
    out["sweep"] = sweep
    return out


def plot_split(result: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = result["sweep"]
    names = result["backends"]
    size = result["size"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([100 * s["fraction"] for s in sweep], [s["gparams_per_s"] for s in sweep], "o-", label="fixed split")
    ax.axhline(size / result["auto_seconds"] / 1e9, color="tab:green", linestyle="--", label="measured shares")
    ax.axhline(size / result["fused_seconds"] / 1e9, color="gray", linestyle=":", label="torch Adam fused")
    ax.set_xlabel(f"share of the step on {names[1]} (%), the rest on {names[0]}")
    ax.set_ylabel("Gparam/s")
    ax.set_title(f"{result['numerics']} Adam step, {size:,} parameters")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: Sequence[BenchRow]) -> str:
    lines = [
        "| optimizer | parameters | Gparam/s | vs torch fused | vs torch foreach |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r.name} | {r.size:,} | {r.gparams:.3f} | {r.vs_fused:.2f}x | {r.vs_foreach:.2f}x |")
    return "\n".join(lines)


def write_json(rows: Sequence[BenchRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    path.write_text(json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=2) + "\n")
