"""The numerics study: which `fixed` format is the cheapest at float parity?

Two tasks:

  digits  scikit-learn's digits with an MLP and a small CNN; sweeps state
          widths, block sizes, rounding and the parameter format
  lm      the hard task: a character-level GPT (hetadam.charlm: 2 layers,
          d=128, AdamW betas (0.9, 0.95), weight decay 0.1, cosine schedule,
          clipping) on The Devil's Dictionary (Debian's dict-devil), several
          seeds; final validation loss against float AdamW, with the spread

Every training run is cached (build/study-cache/, keyed by the run's settings
and a hash of the code it exercises), so a re-run only trains what changed;
scripts/dse.py reads the same cache. Writes markdown tables, JSON and plots.

    .venv/bin/python scripts/numerics_study.py --out docs/study                 # both tasks
    .venv/bin/python scripts/numerics_study.py --out docs/study --tasks lm      # the hard task only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

import hetadam
from hetadam import HetAdam
from hetadam.charlm import CharData, LmConfig, lm_run, load_corpus
from hetadam.numerics import DEFAULT, FixedFormat, formats
from hetadam.train import load_digits, train_run

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "study-cache"
PARITY = 0.01
"""digits: a format is at parity when its mean test accuracy is within one point of float Adam's."""
LM_PARITY = 0.01
"""lm: a format is at parity when its validation loss exceeds float AdamW's by at most 1% (mean over seeds
of the per-seed difference: a seed fixes the initial weights and the batches, so the pairs differ only by
the optimizer)."""
FLOAT = "float"
"""The name of the float baseline in every table."""


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
LM_VARIANTS = [
    Variant("default b32 m16 s16", DEFAULT),
    Variant("b32 m12 s12", FixedFormat(m_bits=12, s_bits=12)),
    Variant("b32 m8 s8", FixedFormat(m_bits=8, s_bits=8)),
    Variant("b32 m6 s6", FixedFormat(m_bits=6, s_bits=6)),
    Variant("b32 m4 s4", FixedFormat(m_bits=4, s_bits=4)),
    Variant("b32 m4 s4 stochastic", FixedFormat(m_bits=4, s_bits=4), True),
]
"""The hard task's variants, down to where the format gives way: each costs about 70 s a seed on one core
(the study's 7 x 3 runs: about 25 minutes)."""

# ---- the run cache ----------------------------------------------------------------------------------

_CODE = ("charlm.py", "train.py", "numerics/fixed.py", "numerics/scalars.py", "numerics/lfsr.py", "numerics/convert.py")
"""What a training run's result depends on, beside its settings: the spec and the training code (the
backends are bit-exact with the spec, so their code is not part of the key). formats.py enters by its
constants' values, so that an edit that changes no width keeps the cache."""


def code_hash() -> str:
    h = hashlib.sha256(torch.__version__.encode())
    base = Path(hetadam.__file__).parent
    for rel in _CODE:
        h.update(rel.encode() + b"\0" + (base / rel).read_bytes())
    constants = {k: v for k, v in vars(formats).items() if k.isupper() and isinstance(v, int)}
    h.update(json.dumps(constants, sort_keys=True).encode())
    return h.hexdigest()[:16]


def cached(cache: Path | None, key: dict, compute: Callable[[], dict]) -> dict:
    """compute(), or its earlier result for the same key and code (a JSON file in `cache`)."""
    if cache is None:
        return compute()
    blob = json.dumps({**key, "code": code_hash()}, sort_keys=True)
    path = cache / f"{key['task']}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}.json"
    if path.exists():
        return json.loads(path.read_text())["result"]
    result = compute()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": json.loads(blob), "result": result}, indent=1) + "\n")
    tmp.replace(path)
    return result


def _variant_key(v: Variant | None) -> dict:
    return {"variant": None} if v is None else {"variant": asdict(v.fmt), "stochastic": v.stochastic}


# ---- digits -----------------------------------------------------------------------------------------


def digits_accuracy(
    v: Variant | None, model: str, seed: int, epochs: int, lr: float, cache: Path | None
) -> dict[str, float]:
    """Test accuracy and saturations of one digits run (v None: float torch.optim.Adam)."""

    def compute() -> dict[str, float]:
        if v is None:
            make = lambda p: torch.optim.Adam(p, lr=lr)  # noqa: E731
        else:
            make = lambda p: HetAdam(  # noqa: E731
                p, lr=lr, numerics="fixed", fixed_format=v.fmt, stochastic_rounding=v.stochastic, seed=seed
            )
        r = train_run(v.name if v else FLOAT, make, model=model, epochs=epochs, seed=seed, data=load_digits())
        return {"accuracy": r.accuracy, "saturated": r.saturated}

    key = {"task": "digits", "model": model, "seed": seed, "epochs": epochs, "lr": lr, **_variant_key(v)}
    return cached(cache, key, compute)


def run_digits(args: argparse.Namespace) -> list[dict]:
    rows = []
    for model in args.models:
        seeds = list(range(args.seeds))
        float_acc = [digits_accuracy(None, model, s, args.epochs, args.lr, args.cache)["accuracy"] for s in seeds]
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
            runs = [digits_accuracy(v, model, s, args.epochs, args.lr, args.cache) for s in seeds]
            acc = statistics.mean(r["accuracy"] for r in runs)
            row = {
                "model": model,
                "variant": v.name,
                "accuracy": acc,
                "state_bits": v.state_bits,
                "bytes_per_param": v.bytes_per_param,
                "block": v.fmt.block,
                "stochastic": v.stochastic,
                "parity": acc >= base - PARITY,
                "saturated": statistics.mean(r["saturated"] for r in runs),
                "format": asdict(v.fmt),
            }
            rows.append(row)
            print(f"{model}: {v.name:<30} {100 * acc:.2f}%  parity={row['parity']}", flush=True)
    return rows


def markdown_digits(rows: list[dict], args: argparse.Namespace) -> str:
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


def plot_digits(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
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


# ---- the hard task: a character-level GPT ----------------------------------------------------------


def lm_loss(v: Variant | None, seed: int, cfg: LmConfig, cache: Path | None, data: Callable[[], CharData]) -> dict:
    """Validation loss (nats per character), saturations and seconds of one LM run (v None: float AdamW)."""

    def compute() -> dict:
        torch.set_num_threads(1)  # one core a run: the machine is shared
        if v is None:
            make = lambda g: torch.optim.AdamW(g, lr=cfg.lr, betas=cfg.betas)  # noqa: E731
        else:
            make = lambda g: HetAdam(  # noqa: E731
                g, lr=cfg.lr, betas=cfg.betas, decoupled_weight_decay=True, numerics="fixed",
                fixed_format=v.fmt, stochastic_rounding=v.stochastic, seed=seed,
            )  # fmt: skip
        r = lm_run(v.name if v else FLOAT, make, data(), cfg, seed)
        print(f"  lm {r.label:<24} seed {seed}: val loss {r.val_loss:.4f} ({r.seconds:.0f} s)", flush=True)
        return {"val_loss": r.val_loss, "saturated": r.saturated, "seconds": r.seconds, "n_params": r.n_params}

    key = {"task": "lm", "seed": seed, "cfg": asdict(cfg), **_variant_key(v)}
    return cached(cache, key, compute)


def lm_data() -> Callable[[], CharData]:
    """The corpus, read on first use (a cached study never reads it)."""
    box: list[CharData] = []

    def get() -> CharData:
        if not box:
            box.append(CharData.from_text(load_corpus()))
        return box[0]

    return get


def lm_summary(v: Variant | None, seeds: Sequence[int], cfg: LmConfig, cache: Path | None, data) -> dict:
    """One variant over the seeds, against float AdamW at the same seeds: the mean validation loss, its
    spread (sample standard deviation; 0 for one seed), the paired excess over float (mean and spread) and
    parity."""
    runs = [lm_loss(v, s, cfg, cache, data) for s in seeds]
    losses = [r["val_loss"] for r in runs]
    row = {
        "variant": v.name if v else FLOAT,
        "val_loss": statistics.mean(losses),
        "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
        "val_losses": losses,
        "saturated": statistics.mean(r["saturated"] for r in runs),
        "seconds": sum(r["seconds"] for r in runs),
    }
    if v is not None:
        base = [lm_loss(None, s, cfg, cache, data)["val_loss"] for s in seeds]
        rel = [(a - b) / b for a, b in zip(losses, base, strict=True)]
        row.update(
            format=asdict(v.fmt),
            stochastic=v.stochastic,
            state_bits=v.state_bits,
            excess=statistics.mean(rel),
            excess_std=statistics.stdev(rel) if len(rel) > 1 else 0.0,
            parity=statistics.mean(rel) <= LM_PARITY,
        )
    return row


def run_lm(args: argparse.Namespace) -> list[dict]:
    cfg = replace(LmConfig(), steps=args.lm_steps)
    seeds = list(range(args.lm_seeds))
    data = lm_data()
    rows = [lm_summary(None, seeds, cfg, args.cache, data)]
    rows += [lm_summary(v, seeds, cfg, args.cache, data) for v in LM_VARIANTS]
    return rows


def markdown_lm(rows: list[dict], args: argparse.Namespace) -> str:
    cfg = replace(LmConfig(), steps=args.lm_steps)
    lines = [
        f"Character-level GPT ({cfg.layers} layers, d={cfg.d_model}, {cfg.heads} heads, context {cfg.context}) on "
        f"The Devil's Dictionary, {cfg.steps} steps of batch {cfg.batch}, AdamW lr {cfg.lr:g} betas {cfg.betas} "
        f"weight decay {cfg.weight_decay} (matrices), {cfg.warmup}-step warm-up then cosine to "
        f"{cfg.min_lr_ratio:g}x, gradient norm clipped to {cfg.clip:g}; {args.lm_seeds} seeds. Validation loss in "
        f"nats per character (mean ± sample std over seeds); excess = mean over seeds of (fixed − float) / float; "
        f"parity = excess ≤ {100 * LM_PARITY:g}%.",
        "",
        "| optimizer state | state bits (m+s) | validation loss | excess over float | parity |",
        "| --- | ---: | ---: | ---: | :---: |",
    ]
    for r in rows:
        loss = f"{r['val_loss']:.4f} ± {r['val_loss_std']:.4f}"
        if r["variant"] == FLOAT:
            lines.append(f"| float AdamW (torch, fp32) | 64 | {loss} | — | — |")
            continue
        excess = f"{100 * r['excess']:+.2f}% ± {100 * r['excess_std']:.2f}%"
        lines.append(f"| {r['variant']} | {r['state_bits']} | {loss} | {excess} | {'yes' if r['parity'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot_lm(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    base = rows[0]
    ax.axhspan(
        base["val_loss"] - base["val_loss_std"], base["val_loss"] + base["val_loss_std"], color="gray", alpha=0.2
    )
    ax.axhline(base["val_loss"], color="gray", linestyle=":", label="float AdamW (± std)")
    for i, r in enumerate(rows[1:]):
        ax.errorbar([i], [r["val_loss"]], yerr=[r["val_loss_std"]], fmt="o", capsize=4)
    ax.set_xticks(range(len(rows) - 1), [r["variant"] for r in rows[1:]], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("char-level GPT on The Devil's Dictionary: final validation loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "study")
    parser.add_argument("--tasks", nargs="+", choices=("digits", "lm"), default=["digits", "lm"])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], help="digits models")
    parser.add_argument("--epochs", type=int, default=30, help="digits epochs")
    parser.add_argument("--seeds", type=int, default=2, help="digits seeds")
    parser.add_argument("--lr", type=float, default=1e-3, help="digits learning rate")
    parser.add_argument("--lm-steps", type=int, default=LmConfig().steps)
    parser.add_argument("--lm-seeds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=CACHE, help="run cache folder")
    parser.add_argument("--no-cache", dest="cache", action="store_const", const=None, help="train every run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if "digits" in args.tasks:
        rows = run_digits(args)
        (args.out / "numerics_study.json").write_text(json.dumps(rows, indent=2) + "\n")
        (args.out / "numerics_study.md").write_text(markdown_digits(rows, args))
        plot_digits(rows, args.out / "numerics_study.png")
        print(markdown_digits(rows, args))
    if "lm" in args.tasks:
        rows = run_lm(args)
        (args.out / "lm_study.json").write_text(json.dumps(rows, indent=2) + "\n")
        (args.out / "lm_study.md").write_text(markdown_lm(rows, args))
        plot_lm(rows, args.out / "lm_study.png")
        print(markdown_lm(rows, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
