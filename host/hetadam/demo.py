"""`hetadam train` and the demo: the same model trained by the same optimizer
on every usable backend, beside torch.optim.Adam, with a report and plots."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import backends
from .optim import HetAdam
from .train import RunResult, load_digits, np_losses, summary_table, train_run

REFERENCE = "cpu fixed"


@dataclass(frozen=True)
class Plan:
    label: str
    backend: str | list[str] | None  # None: torch.optim.Adam
    numerics: str = "fixed"


def demo_plans() -> list[Plan]:
    """Every usable backend, each on the whole run: the simulated RTL too."""
    plans = [Plan("torch.optim.Adam", None, "fp32"), Plan("cpu fp32", "cpu", "fp32"), Plan(REFERENCE, "cpu")]
    for name in ("opencl", "hls-csim", "rtl-sim", "pynq"):
        if backends.availability(name).usable:
            plans.append(Plan(f"{name} fixed", name))
    return plans


def plans_from_args(args: argparse.Namespace) -> list[Plan]:
    if args.backend == "all":
        return demo_plans()
    backend: str | list[str] = args.backend.split(",") if "," in args.backend else args.backend
    label = f"{args.backend} {args.numerics}"
    return [Plan("torch.optim.Adam", None, "fp32"), Plan(label, backend, args.numerics)]


def run_training(args: argparse.Namespace) -> int:
    data = load_digits(args.seed)
    results: list[RunResult] = []
    for plan in plans_from_args(args):

        def make(params: list[torch.nn.Parameter], plan: Plan = plan) -> torch.optim.Optimizer:
            if plan.backend is None:
                return torch.optim.Adam(params, lr=args.lr)
            return HetAdam(params, lr=args.lr, backend=plan.backend, numerics=plan.numerics)

        result = train_run(
            plan.label,
            make,
            model=args.model,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            data=data,
            progress=True,
        )
        results.append(result)
        print(
            f"{plan.label:>24}: test accuracy {100 * result.accuracy:.1f}%  "
            f"({result.steps} steps in {result.wall_seconds:.1f} s)"
        )
    print()
    print(comparison_table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
    if args.report:
        path = write_report(results, Path(args.report), args)
        print(f"\nreport: {path}")
    return 0


def comparison_table(results: list[RunResult]) -> str:
    """The runs, the fixed ones compared bit for bit with the cpu fixed run."""
    return summary_table(results, REFERENCE if any(r.label == REFERENCE for r in results) else None)


def write_report(results: list[RunResult], directory: Path, args: argparse.Namespace) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ax.plot(np_losses(r), label=r.label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (moving average of 20)")
    ax.set_yscale("log")
    ax.set_title(f"digits {args.model}: loss per backend")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "loss.png", dpi=110)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [r.label for r in results]
    ax1.barh(labels, [100 * r.accuracy for r in results], color="tab:blue")
    ax1.set_xlabel("test accuracy (%)")
    ax1.set_xlim(min(100 * r.accuracy for r in results) - 5, 100)
    ax2.barh(labels, [r.params_per_second / 1e6 for r in results], color="tab:orange")
    ax2.set_xlabel("optimizer throughput (Mparam/s, this model)")
    ax2.set_xscale("log")
    fig.tight_layout()
    fig.savefig(directory / "accuracy_throughput.png", dpi=110)
    plt.close(fig)

    report = directory / "report.md"
    report.write_text(
        "\n".join(
            [
                f"# hetadam demo: digits {args.model}, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}",
                "",
                comparison_table(results),
                "",
                "![loss per backend](loss.png)",
                "",
                "![accuracy and throughput](accuracy_throughput.png)",
                "",
                "Parameters are compared bit for bit by a SHA-256 digest of every parameter tensor.",
                "Throughput is that of `optimizer.step()` on this small model (dominated by per-step",
                "overheads); `hetadam bench` measures it at 1M and 16M parameters. Wall time is the whole",
                "run: the start of the backend (a first build of a kernel included), every step, the test.",
                "",
            ]
        )
    )
    (directory / "results.json").write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
    return report
