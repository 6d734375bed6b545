"""The co-design sweep: number format x lanes -> accuracy, FPGA resources, board throughput; a choice per board.

For each point (a hardware format, a lane count) on each board:

  accuracy    both tasks of the numerics study (scripts/numerics_study.py): digits (MLP test accuracy
              against float Adam) and the hard task, a character-level GPT (validation loss against float
              AdamW, the excess and its spread over seeds); parity on both is what "holds" means
  resources   yosys synth_xilinx of the RTL kernel built for the point (scripts/resource_report.py) on the
              board's part: LUT, FF, DSP, BRAM36, their share of the part and the DSP/BRAM headroom; a point
              fits when every resource stays within FIT_LIMIT of the part (room for the block design)
  bytes       per parameter and step, in the kernel's memory layout (and, modelled only, if m and s were
              packed to their widths)
  throughput  the modelled board rate (hetadam.board_model: LANES x clock against the ports' and the DDR's
              bounds), with the board's ports and with the masters split over two ports

and per board: the Pareto points (no other point is at least as accurate, as small and as fast, and
better in one) and a recommendation (the fastest point that fits and holds parity, then the smallest).
Writes <out>/dse.json, dse.md and dse.png. Every training run and every synthesis is cached (--cache),
so a re-run computes only what changed; --quick is a small sweep for CI (a minute or two).

    .venv/bin/python scripts/dse.py --out docs/dse          # the full sweep (make dse)
    .venv/bin/python scripts/dse.py --quick --out build/dse-quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scripts, also when imported by a test

import numerics_study as study
import resource_report

from hetadam.board_model import Board, load_board, throughput
from hetadam.charlm import LmConfig
from hetadam.numerics import DEFAULT, FixedFormat

ROOT = Path(__file__).resolve().parents[1]
FIT_LIMIT = 0.8
"""A point fits a part when each of its LUT, FF, DSP and BRAM stays within this share of the part: the rest
is for the block design (SmartConnects, the interrupt controller) and for routing."""
SPLIT_PORTS = (0, 2)
"""The masters split over two high-performance ports (p, g | ms, ex), as the PYNQ-Z2 design does."""


def _variant(fmt: FixedFormat, stochastic: bool = False) -> study.Variant:
    return study.Variant(fmt.hardware_name + (" stochastic" if stochastic else ""), fmt, stochastic)


@dataclass(frozen=True)
class Sweep:
    """What one run of the sweep covers."""

    variants: tuple[study.Variant, ...]
    """Hardware formats with a rounding mode (stochastic rounding is a run-time register: same build)."""
    lanes: tuple[int, ...]
    boards: tuple[str, ...]
    digits_epochs: int
    digits_seeds: int
    lm: LmConfig
    lm_seeds: int


FULL = Sweep(
    variants=(
        _variant(DEFAULT),
        _variant(FixedFormat(m_bits=12, s_bits=12)),
        _variant(FixedFormat(m_bits=8, s_bits=8)),
        _variant(FixedFormat(m_bits=6, s_bits=6)),
        _variant(FixedFormat(m_bits=4, s_bits=4)),
        _variant(FixedFormat(m_bits=4, s_bits=4), stochastic=True),
    ),
    lanes=(1, 2, 4, 8, 16),
    boards=("pynq-z2", "zcu104", "kv260"),
    digits_epochs=30,
    digits_seeds=2,
    lm=LmConfig(),
    lm_seeds=3,
)
"""The sweep of docs/dse.md: the numerics study's hard-task variants and every lane count the RTL takes."""
QUICK = Sweep(
    variants=(_variant(DEFAULT), _variant(FixedFormat(m_bits=8, s_bits=8))),
    lanes=(1,),
    boards=("pynq-z2", "zcu104"),
    digits_epochs=2,
    digits_seeds=1,
    lm=replace(LmConfig(), steps=12, batch=8, context=32, warmup=4, eval_batches=2),
    lm_seeds=1,
)
"""A sweep that checks the pipeline end to end in CI: every stage real, every size small."""


def accuracy(sweep: Sweep, run_cache: Path | None) -> dict[str, dict]:
    """Per variant (by name): digits accuracy and parity, the hard task's loss, excess and parity."""
    data = study.lm_data()
    seeds = range(sweep.digits_seeds)
    float_digits = statistics.mean(
        study.digits_accuracy(None, "mlp", s, sweep.digits_epochs, 1e-3, run_cache)["accuracy"] for s in seeds
    )
    lm_float = study.lm_summary(None, range(sweep.lm_seeds), sweep.lm, run_cache, data)
    out = {FLOAT: {"digits": float_digits, "lm_val_loss": lm_float["val_loss"], "lm_std": lm_float["val_loss_std"]}}
    for v in sweep.variants:
        digits = statistics.mean(
            study.digits_accuracy(v, "mlp", s, sweep.digits_epochs, 1e-3, run_cache)["accuracy"] for s in seeds
        )
        lm = study.lm_summary(v, range(sweep.lm_seeds), sweep.lm, run_cache, data)
        out[v.name] = {
            "digits": digits,
            "digits_parity": digits >= float_digits - study.PARITY,
            "lm_val_loss": lm["val_loss"],
            "lm_std": lm["val_loss_std"],
            "lm_excess": lm["excess"],
            "lm_excess_std": lm["excess_std"],
            "lm_parity": lm["parity"],
        }
    return out


FLOAT = "float"


def resources(sweep: Sweep, boards: list[Board], synth_cache: Path, jobs: int) -> dict[tuple[str, str, int], dict]:
    """yosys results per (family, hardware format, lanes), each synthesised once (a family maps the same
    cells onto each of its parts) and cached by its inputs' hash."""
    version = resource_report.yosys_version()
    parts = {b.family: b.device for b in boards}
    formats = {v.fmt.hardware_name: v.fmt for v in sweep.variants}
    configs = sorted(
        {(part, fmt, lanes) for part in parts.values() for fmt in formats.values() for lanes in sweep.lanes},
        key=lambda c: (-c[2], c[0], c[1].hardware_name),  # the longest first
    )
    synth_cache.mkdir(parents=True, exist_ok=True)

    def one(config: tuple[str, FixedFormat, int]) -> dict:
        part, fmt, lanes = config
        path = synth_cache / f"{resource_report.config_key(part, lanes, fmt, False, version)}.json"
        if path.exists():
            return json.loads(path.read_text())
        print(f"  yosys {part} {fmt.hardware_name} LANES={lanes} ...", flush=True)
        result = resource_report.synth(lanes, synth_cache, part, fmt)
        path.write_text(json.dumps(result, indent=1) + "\n")
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(one, configs))
    return {(r["family"], c[1].hardware_name, c[2]): r for c, r in zip(configs, results, strict=True)}


def points(sweep: Sweep, boards: list[Board], acc: dict[str, dict], res: dict) -> list[dict]:
    rows = []
    for board in boards:
        split = replace(board, hp_ports=SPLIT_PORTS)
        for v in sweep.variants:
            a, fmt = acc[v.name], v.fmt
            for lanes in sweep.lanes:
                r = res[(board.family, fmt.hardware_name, lanes)]
                share = {k: r["used"][k] / board.capacity[k] for k in board.capacity}
                t, ts = throughput(board, lanes, fmt.block), throughput(split, lanes, fmt.block)
                rows.append(
                    {
                        "board": board.name,
                        "part": board.part,
                        "clock_mhz": board.clock_mhz,
                        "format": v.name,
                        "lanes": lanes,
                        **{k: a[k] for k in ("digits", "digits_parity", "lm_val_loss", "lm_excess", "lm_parity")},
                        "lm_excess_std": a["lm_excess_std"],
                        "holds": a["digits_parity"] and a["lm_parity"],
                        "used": r["used"],
                        "share": share,
                        "dsp_headroom": board.capacity["DSP"] - r["used"]["DSP"],
                        "bram_headroom": board.capacity["BRAM36"] - r["used"]["BRAM36"],
                        "fits": all(v <= FIT_LIMIT for v in share.values()),
                        "bytes_per_param": t.bytes_per_element,
                        "bytes_per_param_packed": v.bytes_per_param,
                        "throughput": t.high,
                        "throughput_low": t.low,
                        "bound": t.bound,
                        "throughput_split": ts.high,
                        "bound_split": ts.bound,
                    }
                )
    mark_pareto(rows)
    return rows


def _objectives(row: dict) -> tuple[float, float, float]:
    """What a point is judged by, each the smaller the better: the hard task's excess loss, the largest
    share of the part it takes, and minus its modelled throughput."""
    return (row["lm_excess"], max(row["share"].values()), -row["throughput"])


def mark_pareto(rows: list[dict]) -> None:
    """row["pareto"]: no other point of the same board is at least as good in every objective and better in one."""
    for row in rows:
        mine = _objectives(row)
        row["pareto"] = not any(
            other is not row
            and other["board"] == row["board"]
            and all(o <= m for o, m in zip(_objectives(other), mine, strict=True))
            and _objectives(other) != mine
            for other in rows
        )


def recommend(rows: list[dict], board: str) -> dict | None:
    """The fastest point of `board` that fits and holds parity on both tasks; among equally fast points
    (within 1%), the one taking the smallest share of the part, then the fewest state bits."""
    ok = [r for r in rows if r["board"] == board and r["fits"] and r["holds"]]
    if not ok:
        return None
    best = max(r["throughput"] for r in ok)
    fast = [r for r in ok if r["throughput"] >= 0.99 * best]
    return min(fast, key=lambda r: (max(r["share"].values()), _state_bits(r["format"])))


def _state_bits(name: str) -> int:
    fmt = FixedFormat.parse(name.split()[0])
    return fmt.m_bits + fmt.s_bits


def markdown(sweep: Sweep, rows: list[dict], acc: dict[str, dict], boards: list[Board], tool: str) -> str:
    lm = sweep.lm
    f = acc[FLOAT]
    lines = [
        "# Co-design sweep (`make dse`)",
        "",
        f"Accuracy: digits MLP, {sweep.digits_epochs} epochs, mean of {sweep.digits_seeds} seed(s) (float Adam "
        f"{100 * f['digits']:.1f}%); character-level GPT ({lm.layers} layers, d={lm.d_model}) on The Devil's "
        f"Dictionary, {lm.steps} steps, {sweep.lm_seeds} seed(s) (float AdamW validation loss {f['lm_val_loss']:.4f}"
        f" ± {f['lm_std']:.4f} nats/char). Resources: {tool}, `synth_xilinx` (hierarchy kept) of the RTL kernel "
        f"with the point's LANES and format; a point fits at ≤ {100 * FIT_LIMIT:.0f}% of every resource. "
        "Throughput: modelled (hetadam.board_model), at the high end of the DDR efficiency; "
        f"split = the masters over HP ports {{{' '.join(map(str, SPLIT_PORTS))}}}.",
        "",
        "## Formats",
        "",
        "| format (rounding) | state bits | digits accuracy | LM validation loss | LM excess over float | parity |",
        "| --- | ---: | ---: | ---: | ---: | :---: |",
    ]
    for v in sweep.variants:
        a = acc[v.name]
        lines.append(
            f"| {v.name} | {v.state_bits} | {100 * a['digits']:.1f}% | "
            f"{a['lm_val_loss']:.4f} ± {a['lm_std']:.4f} | {100 * a['lm_excess']:+.2f}% ± "
            f"{100 * a['lm_excess_std']:.2f}% | {'yes' if a['digits_parity'] and a['lm_parity'] else 'no'} |"
        )
    for board in boards:
        mine = [r for r in rows if r["board"] == board.name]
        lines += [
            "",
            f"## {board.name} ({board.part}, {board.clock_mhz:g} MHz, {board.ddr}, HP ports "
            f"{{{' '.join(map(str, board.hp_ports))}}})",
            "",
            "| format | lanes | LUT | FF | DSP | BRAM36 | DSP / BRAM left | fits | bytes/param/step | "
            "M elem/s (bound) | split | Pareto |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: | ---: | ---: | ---: | :---: |",
        ]
        for r in mine:
            u, s = r["used"], r["share"]
            lines.append(
                f"| {r['format']} | {r['lanes']} | {u['LUT']} ({100 * s['LUT']:.0f}%) | "
                f"{u['FF']} ({100 * s['FF']:.0f}%) | {u['DSP']} ({100 * s['DSP']:.0f}%) | "
                f"{u['BRAM36']:g} ({100 * s['BRAM36']:.0f}%) | "
                f"{r['dsp_headroom']} / {r['bram_headroom']:g} | {'yes' if r['fits'] else 'no'} | "
                f"{r['bytes_per_param']:.2f} | {r['throughput'] / 1e6:.0f} ({r['bound']}) | "
                f"{r['throughput_split'] / 1e6:.0f} | {'**yes**' if r['pareto'] else ''} |"
            )
        lines += ["", recommendation_text(rows, board)]
    return "\n".join(lines) + "\n"


def recommendation_text(rows: list[dict], board: Board) -> str:
    best = recommend(rows, board.name)
    if best is None:
        return f"**{board.name}: no point fits and holds parity** in this sweep."
    text = (
        f"**{board.name}: {best['format']}, {best['lanes']} lane(s)**: {best['throughput'] / 1e6:.0f} M elements/s "
        f"({best['bound']}-bound), {100 * max(best['share'].values()):.0f}% of the part at most, LM excess "
        f"{100 * best['lm_excess']:+.2f}%."
    )
    if best["throughput_split"] > 1.01 * best["throughput"]:
        more = recommend([{**r, "throughput": r["throughput_split"]} for r in rows], board.name)
        if more is not None:
            text += (
                f" With the masters split over HP ports {{{' '.join(map(str, SPLIT_PORTS))}}} (hp_ports in "
                f"board.tcl): {more['format']}, {more['lanes']} lane(s), {more['throughput'] / 1e6:.0f} M elements/s."
            )
    return text


def plot(rows: list[dict], acc: dict[str, dict], sweep: Sweep, boards: list[Board], path: Path) -> None:
    """Left: each format's excess loss on the hard task (what the format decides). Then per board: the
    points' largest share of the part against their modelled rate, with the board's ports (filled) and with
    the masters split over two ports (hollow); Pareto points ringed, lanes written beside."""
    plt = study._pyplot()
    fig, axes = plt.subplots(1, 1 + len(boards), figsize=(4.6 * (1 + len(boards)), 4.2), squeeze=False)
    ax = axes[0][0]
    names = [v.name for v in sweep.variants]
    ax.errorbar(
        range(len(names)),
        [100 * acc[n]["lm_excess"] for n in names],
        yerr=[100 * acc[n]["lm_excess_std"] for n in names],
        fmt="o",
        capsize=4,
    )
    ax.axhline(100 * study.LM_PARITY, color="red", linestyle=":", linewidth=1, label="parity limit")
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xticks(range(len(names)), [n.replace("b32-g16-", "").replace(" stochastic", "\nstoch.") for n in names])
    ax.set_ylabel("LM excess loss over float AdamW (%)")
    ax.set_title("accuracy: the format", fontsize=10)
    ax.legend(fontsize=7)
    markers = dict(zip(names, "osD^vP*", strict=False))
    for ax, board in zip(axes[0][1:], boards, strict=True):
        mine = [r for r in rows if r["board"] == board.name]
        for name in names:
            pts = [r for r in mine if r["format"] == name]
            x = [100 * max(r["share"].values()) for r in pts]
            ax.scatter(x, [r["throughput"] / 1e6 for r in pts], marker=markers[name], s=36, label=name,
                       edgecolors=["red" if r["pareto"] else "none" for r in pts], linewidths=1.5)  # fmt: skip
            ax.scatter(x, [r["throughput_split"] / 1e6 for r in pts], marker=markers[name], s=36,
                       facecolors="none", edgecolors="gray", linewidths=0.8)  # fmt: skip
        for r in mine:
            if r["format"] == names[0]:
                share = 100 * max(r["share"].values())
                ax.annotate(f"{r['lanes']}L", (share, r["throughput"] / 1e6), xytext=(4, -10),
                            textcoords="offset points", fontsize=7)  # fmt: skip
        ax.axvline(100 * FIT_LIMIT, color="gray", linestyle=":", linewidth=1)
        ax.set_title(f"{board.name} ({board.device}, {board.clock_mhz:g} MHz)", fontsize=10)
        ax.set_xlabel("largest share of the part (%)")
        ax.set_ylabel("modelled M elements/s")
        ax.set_ylim(bottom=0)
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.suptitle(
        "format x lanes: filled = board's HP ports, hollow = masters split over two; red ring = Pareto;"
        " dotted = fit limit",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "dse")
    parser.add_argument("--quick", action="store_true", help="the small sweep for CI (a minute or two)")
    parser.add_argument(
        "--cache",
        type=Path,
        help="cache folder for training runs (runs/) and syntheses (synth/); "
        "default: the numerics study's run cache and build/dse-cache/synth",
    )
    parser.add_argument("--jobs", type=int, default=2, help="parallel yosys runs")
    args = parser.parse_args(argv)
    why = resource_report.why_not()
    if why is not None:
        print(f"dse needs yosys for the resources: {why}", file=sys.stderr)
        return 2
    sweep = QUICK if args.quick else FULL
    run_cache = args.cache / "runs" if args.cache else study.CACHE
    synth_cache = args.cache / "synth" if args.cache else ROOT / "build" / "dse-cache" / "synth"
    boards = [load_board(name) for name in sweep.boards]
    print(f"dse: {len(sweep.variants)} formats x {len(sweep.lanes)} lane counts on {', '.join(sweep.boards)}")
    acc = accuracy(sweep, run_cache)
    res = resources(sweep, boards, synth_cache, args.jobs)
    rows = points(sweep, boards, acc, res)
    args.out.mkdir(parents=True, exist_ok=True)
    tool = resource_report.yosys_version()
    recommendations = {}
    for b in boards:
        best = recommend(rows, b.name)
        recommendations[b.name] = None if best is None else {"format": best["format"], "lanes": best["lanes"]}
    report = {
        "sweep": {**asdict(replace(sweep, variants=())), "variants": [v.name for v in sweep.variants]},
        "tool": tool,
        "fit_limit": FIT_LIMIT,
        "accuracy": acc,
        "points": rows,
        "recommendations": recommendations,
    }
    (args.out / "dse.json").write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(sweep, rows, acc, boards, tool)
    (args.out / "dse.md").write_text(md)
    plot(rows, acc, sweep, boards, args.out / "dse.png")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
