#!/usr/bin/env python3
"""Bench the opencl backend against torch.optim.Adam(fused=True) in the same run.

For each size and numerics (fp32 bit-exact with torch, fp32 without fused
multiply-adds, fixed) prints Gparam/s and the ratio to torch fused: `resident`
is the kernel alone on device-resident state, `step` a whole shard step with
its transfers. See hetadam.backends.opencl.bench_opencl and docs/opencl.md.

    .venv/bin/python scripts/bench_opencl.py --sizes 1048576 16777216 --json build/bench_opencl.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from hetadam.backends.opencl import OpenCLBackend, bench_opencl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1 << 20, 1 << 24], help="parameters per run")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing budget per size")
    parser.add_argument("--platform", help="OpenCL platform (index or name substring)")
    parser.add_argument("--device", help="OpenCL device (index or name substring)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    availability = OpenCLBackend.availability()
    if not availability.usable and args.platform is None and args.device is None:
        print(f"opencl backend not usable: {availability.reason}. {availability.remedy}", file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # compiler logs
        backend = OpenCLBackend(platform=args.platform, device=args.device)
        rows = bench_opencl(tuple(args.sizes), args.seconds, backend)
    print(f"device: {backend.device_name}")
    print(f"{'params':>10} {'numerics':<11} {'mode':<9} {'Gparam/s':>9} {'torch fused':>12} {'ratio':>6}")
    for r in rows:
        print(f"{r['n']:>10} {r['numerics']:<11} {r['mode']:<9} {r['gparam_s']:>9.3f} "
              f"{r['torch_fused_gparam_s']:>12.3f} {r['ratio']:>6.2f}")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
