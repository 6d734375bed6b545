"""The numerics study: which `fixed` format is the cheapest at float parity?

Sweeps state widths, block sizes, rounding and the parameter format; trains
scikit-learn's digits with an MLP and a small CNN for each; writes a markdown
table, a JSON file and a plot (accuracy against state bits).

    .venv/bin/python scripts/numerics_study.py --out docs/study
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hetadam import HetAdam
from hetadam.numerics import DEFAULT, FixedFormat
from hetadam.train import load_digits, train_run

PARITY = 0.01
"""A format is at parity when its mean test accuracy is within one point of float Adam's."""


@dataclass(frozen=True)
class Variant:
    name: str
    fmt: FixedFormat
    stochastic: bool = False

    @property
    def state_bits(self) -> int:
        return self.fmt.m_bits + self.fmt.s_bits

    @property
    def bytes_per_param(self) -> float:
        """Bytes a step moves per parameter: read p, g, m, s; write p, m, s (+ exponents),
        with each width in its smallest container (the hardware kernels use 16 bits)."""

        def container(bits: int) -> int:
            return 1 if bits <= 8 else 2

        state = container(self.fmt.m_bits) + container(self.fmt.s_bits)
        return 4 + container(self.fmt.g_bits) + 2 * state + 4 + 2 * 3 / self.fmt.block


VARIANTS = [
    Variant("default b32 m16 s16", DEFAULT),
    Variant("b32 m16 s16 stochastic", DEFAULT, True),
    Variant("b32 m12 s12", FixedFormat(m_bits=12, s_bits=12)),
    Variant("b32 m12 s12 stochastic", FixedFormat(m_bits=12, s_bits=12), True),
    Variant("b32 m8 s8", FixedFormat(m_bits=8, s_bits=8)),
    Variant("b32 m8 s8 stochastic", FixedFormat(m_bits=8, s_bits=8), True),
    Variant("b32 m16 s8", FixedFormat(s_bits=8)),
    Variant("b32 m8 s16", FixedFormat(m_bits=8)),
    Variant("b256 m16 s16", FixedFormat(block=256)),
    Variant("b256 m12 s12", FixedFormat(block=256, m_bits=12, s_bits=12)),
    Variant("b4096 m16 s16 (per tensor)", FixedFormat(block=4096)),
    Variant("b32 g8", FixedFormat(g_bits=8)),
    Variant("b32 p Q16.16", FixedFormat(p_frac=16)),
    Variant("b32 p Q16.16 stochastic", FixedFormat(p_frac=16), True),
]


def run(args: argparse.Namespace) -> list[dict]:
    data = load_digits()
    rows = []
    for model in args.models:
        seeds = list(range(args.seeds))
        float_acc = []
        for seed in seeds:
            r = train_run(
                "float",
                lambda p: torch.optim.Adam(p, lr=args.lr),
                model=model,
                epochs=args.epochs,
                seed=seed,
                data=data,
            )
            float_acc.append(r.accuracy)
        base = statistics.mean(float_acc)
        rows.append(
            {
                "model": model,
                "variant": "torch.optim.Adam (float32)",
                "accuracy": base,
                "state_bits": 64,
                "bytes_per_param": 28.0,
                "block": 0,
                "stochastic": False,
                "parity": True,
                "saturated": 0,
            }
        )
        print(f"{model}: float {100 * base:.2f}%", flush=True)
        for v in VARIANTS:
            accs, sats = [], []
            for seed in seeds:
                r = train_run(
                    v.name,
                    lambda p, v=v, seed=seed: HetAdam(
                        p, lr=args.lr, numerics="fixed", fixed_format=v.fmt, stochastic_rounding=v.stochastic, seed=seed
                    ),
                    model=model,
                    epochs=args.epochs,
                    seed=seed,
                    data=data,
                )
                accs.append(r.accuracy)
                sats.append(r.saturated)
            acc = statistics.mean(accs)
            row = {
                "model": model,
                "variant": v.name,
                "accuracy": acc,
                "state_bits": v.state_bits,
                "bytes_per_param": v.bytes_per_param,
                "block": v.fmt.block,
                "stochastic": v.stochastic,
                "parity": acc >= base - PARITY,
                "saturated": statistics.mean(sats),
                "format": asdict(v.fmt),
            }
            rows.append(row)
            print(f"{model}: {v.name:<30} {100 * acc:.2f}%  parity={row['parity']}", flush=True)
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    models = list(dict.fromkeys(r["model"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    acc = {(r["model"], r["variant"]): r for r in rows}
    head = "| format | state bits (m+s) | bytes/param/step | " + " | ".join(f"{m} accuracy" for m in models) + " |"
    lines = [
        f"Digits (scikit-learn), {args.epochs} epochs, lr {args.lr}, batch 32, mean of {args.seeds} seed(s); "
        f"parity = within {100 * PARITY:.0f} point of float Adam.",
        "",
        head,
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in models) + " |",
    ]
    for v in variants:
        first = acc[(models[0], v)]
        cells = []
        for m in models:
            r = acc[(m, v)]
            cells.append(f"{100 * r['accuracy']:.1f}%" + ("" if r["parity"] else " (below)"))
        lines.append(f"| {v} | {first['state_bits']} | {first['bytes_per_param']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for model, marker in zip(dict.fromkeys(r["model"] for r in rows), "os", strict=False):
        base = next(r["accuracy"] for r in rows if r["model"] == model and r["block"] == 0)
        ax.axhline(100 * base, color="gray", linestyle=":", linewidth=1)
        for stochastic, color in ((False, "tab:blue"), (True, "tab:orange")):
            pts = [r for r in rows if r["model"] == model and r["block"] and r["stochastic"] == stochastic]
            ax.scatter(
                [r["state_bits"] for r in pts],
                [100 * r["accuracy"] for r in pts],
                marker=marker,
                color=color,
                label=f"{model}, {'stochastic' if stochastic else 'nearest-even'} rounding",
            )
    ax.set_xlabel("state bits per parameter (m + s mantissas)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("digits: accuracy against state width (dotted: float Adam)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("build/study"))
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    rows = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "numerics_study.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "numerics_study.md").write_text(markdown(rows, args))
    plot(rows, args.out / "numerics_study.png")
    print(markdown(rows, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
