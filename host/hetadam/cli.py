"""The `hetadam` command: info, bench, train, serve, token.

`serve` and `token` import neither torch nor numba (a PYNQ board has neither),
so the backends are imported only by the commands that use them."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .kernels import BackendUnavailable


def cmd_info(args: argparse.Namespace) -> int:
    from . import backends

    print(f"{'backend':<10} {'numerics':<12} {'usable':<7} why not / how to get it")
    for name in backends.NAMES:
        print(info_row(name))
    return 0


def info_row(name: str) -> str:
    """One line of `hetadam info`; a backend whose checks fail says so on its own line."""
    from . import backends

    avail = backends.availability(name)
    try:
        numerics = ",".join(backends.backend_class(name).numerics)
    except Exception:  # unusable, and availability says why
        numerics = "-"
    why = "" if avail.usable else f"{avail.reason}. {avail.remedy}".strip(". ")
    return f"{name:<10} {numerics:<12} {'yes' if avail.usable else 'no':<7} {why}"


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench, table, write_json

    sizes = [int(float(s)) for s in args.sizes.split(",")]
    names = args.backends.split(",") if args.backends else None
    if args.split:
        return bench_split(args, sizes[-1])
    if args.host_model:
        return bench_host_model(args)
    rows = run_bench(sizes, names, repeat=args.repeat)
    print()
    print(table(rows))
    if args.json:
        write_json(rows, Path(args.json))
        print(f"\nwrote {args.json}")
    return 0


def bench_split(args: argparse.Namespace, size: int) -> int:
    from . import backends
    from .bench import plot_split, run_split_bench

    names = args.split.split(",")
    usable = [n for n in names if backends.availability(n).usable]
    if len(usable) < 2:
        print(f"hetadam bench --split needs two usable backends; usable here: {', '.join(usable) or 'none'}")
        return 2
    result = run_split_bench(size, usable[:2], numerics=args.numerics, repeat=args.repeat)
    if args.json:
        dump(result, args.json)
        plot_split(result, Path(args.json).with_suffix(".png"))
        print(f"wrote {args.json} and {Path(args.json).with_suffix('.png')}")
    return 0


def bench_host_model(args: argparse.Namespace) -> int:
    from .bench_host import host_table, run_host_bench, usable_fp32_backends

    names = usable_fp32_backends(args.backends.split(",") if args.backends else None)
    rows = run_host_bench(names, repeat=args.repeat)
    print()
    print(host_table(rows))
    if args.json:
        dump([r.as_dict() for r in rows], args.json)
        print(f"\nwrote {args.json}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .demo import run_training

    return run_training(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from .remote.serve import run

    return run(args)


def cmd_token(args: argparse.Namespace) -> int:
    from .remote.serve import announce_token
    from .remote.token import default_file, make_token

    return announce_token(make_token(args.file or default_file()))


def parser() -> argparse.ArgumentParser:
    from .remote.serve import add_arguments

    p = argparse.ArgumentParser(prog="hetadam", description="The Adam optimizer on heterogeneous hardware.")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="which backends are usable here, and why not")
    info.set_defaults(func=cmd_info)

    bench = sub.add_parser("bench", help="optimizer-step throughput against torch.optim.Adam")
    bench.add_argument("--sizes", default="1048576,16777216", help="comma-separated parameter counts")
    bench.add_argument("--backends", default="", help="comma-separated backends (default: every usable one)")
    bench.add_argument("--repeat", type=int, default=5, help="timed steps per measurement (median)")
    bench.add_argument("--json", default="", help="also write the rows to this JSON file")
    bench.add_argument("--split", default="", help="two backends, e.g. cpu,opencl: bench one step split across them")
    bench.add_argument("--numerics", default="fixed", choices=("fp32", "fixed"), help="numerics of --split")
    bench.add_argument(
        "--host-model",
        action="store_true",
        help="whole training iterations of a 12.6M-parameter model (float32 and bfloat16): torch's fused AdamW "
        "and HetAdam on the fp32 backends, with and without overlap",
    )
    bench.set_defaults(func=cmd_bench)

    train = sub.add_parser("train", help="train a model on scikit-learn's digits with HetAdam")
    train.add_argument("--backend", default="cpu", help="a backend, a comma-separated split, 'auto', or 'all'")
    train.add_argument("--numerics", default="fixed", choices=("fp32", "fixed"))
    train.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--report", default="", help="write a report with plots into this directory")
    train.add_argument("--json", default="", help="write the results to this JSON file")
    train.set_defaults(func=cmd_train)

    serve = sub.add_parser("serve", help="serve a fixed backend to optimizers on other hosts (docs/remote.md)")
    add_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="make the token that hetadam serve and its clients share (mode 600)")
    token.add_argument("file", nargs="?", type=Path, help="where to write it (default: ~/.config/hetadam/token)")
    token.set_defaults(func=cmd_token)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (BackendUnavailable, ValueError) as exc:
        print(f"hetadam: {exc}", file=sys.stderr)
        return 2


def dump(obj: object, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
