#!/usr/bin/env python3
"""Smoke test of a hetadam deployment, run on the board from the package folder.

1. Verify the package: every file listed in manifest.json must be there with
   its SHA-256, and nothing else may be missing; a corrupted or incomplete
   package is refused (exit status 3) before anything is loaded.
2. Unpack the shipped wheel beside the package and import hetadam from it
   (the driver needs NumPy only; without torch, as on PYNQ-Z2 images, the
   package's torch-based top level is skipped).
3. Load the overlay (overlay/hetadam.bit + .hwh) with PYNQ, or with
   `--transport fake` use the golden-model double of the kernel (a dry run
   that needs no board), and run a few steps of the fixed Adam update through
   the driver: several chunks, a partial block, round-to-nearest and
   stochastic rounding. Every step must be bit-exact with the golden model
   (hetadam.numerics.fixed.adam_step). When torch is importable, also step a
   shard of the backend (`pynq`, or the driver over the double) and the `cpu`
   backend's fixed shard side by side from the same float gradients.

Prints one JSON line (the report) and exits 0 when everything matched, 1 when
a result differed, 3 when the package was refused.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import sys
import time
import types
import zipfile
from pathlib import Path

MANIFEST = "manifest.json"
REFUSED = 3


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(package: Path) -> dict:
    """The manifest, once every file it lists matches its hash; raises ValueError otherwise."""
    try:
        manifest = json.loads((package / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable {MANIFEST}: {exc}") from exc
    for rel, digest in sorted(files.items()):
        path = package / rel
        if not path.is_file():
            raise ValueError(f"{rel} is missing")
        if sha256(path) != digest:
            raise ValueError(f"{rel} does not match its SHA-256 in the manifest")
    return manifest


def import_hetadam(package: Path, wheel: str) -> None:
    """Unpack the shipped wheel and put it first on sys.path."""
    site = package / "site"
    with zipfile.ZipFile(package / wheel) as zf:
        zf.extractall(site)
    sys.path.insert(0, str(site))
    if importlib.util.find_spec("torch") is None:
        # hetadam/__init__ imports the torch optimizer; the driver does not need it
        pkg = types.ModuleType("hetadam")
        pkg.__path__ = [str(site / "hetadam")]
        sys.modules["hetadam"] = pkg


def transport_for(kind: str, package: Path):
    if kind == "fake":
        from hetadam.driver.fake import FakeTransport

        return FakeTransport()
    from hetadam.driver.pynq import PynqTransport

    return PynqTransport.from_overlay(package / "overlay" / "hetadam.bit")


def check_driver(transport, n: int, chunk: int, steps: int, seed: int) -> dict:
    """Steps through the driver, each compared with the golden model."""
    import numpy as np

    from hetadam.driver import AdamDriver
    from hetadam.driver.state import ResidentState
    from hetadam.numerics import DEFAULT, adam_step, encode_step
    from hetadam.numerics.convert import quantize_grad, state_from_float

    rng = np.random.default_rng(seed)
    driver = AdamDriver(transport, interrupt=transport.interrupts, timeout=10.0)
    state = ResidentState(driver, n, DEFAULT, chunk=chunk)
    ref = state_from_float(rng.normal(0, 1, n).astype(np.float32), rng.normal(0, 1e-3, n), rng.uniform(0, 1e-6, n))
    state.upload(ref)
    idx0 = 4 * DEFAULT.block
    mismatches, saturated = [], 0
    for step in range(1, steps + 1):
        G, eg, _ = quantize_grad(rng.normal(0, 1e-2, n))
        sc = encode_step(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, step=step, seed=seed, stochastic=step % 2 == 0)
        sat = state.run(G, eg, sc, idx0)
        state.commit()
        ref, expect_sat = adam_step(ref, G, eg, sc, idx0, DEFAULT)
        if not state.download().equals(ref) or sat != expect_sat:
            mismatches.append(step)
        saturated += sat
    return {
        "steps": steps,
        "n": n,
        "chunk": chunk,
        "runs": driver.runs,
        "saturated": saturated,
        "mismatches": mismatches,
    }


def check_backend(kind: str, package: Path, n: int, steps: int, seed: int) -> dict:
    """A shard of the board's backend and a shard of the cpu backend, stepped alike."""
    import numpy as np
    import torch

    from hetadam.backends.base import FixedShard, Segment, StepHyper
    from hetadam.backends.cpu import CpuBackend
    from hetadam.driver import AdamDriver
    from hetadam.driver.fake import FakeTransport
    from hetadam.driver.kernel import DriverKernel
    from hetadam.numerics import DEFAULT

    if kind == "fake":
        kernel = DriverKernel(AdamDriver(FakeTransport()), n, DEFAULT, backend="fake")
        board = FixedShard(0, n, kernel, DEFAULT)
    else:
        from hetadam.backends.pynq import PynqBackend

        board = PynqBackend(bitfile=package / "overlay" / "hetadam.bit", download=False).create_shard(
            0, n, "fixed", DEFAULT
        )
    cpu = CpuBackend().create_shard(0, n, "fixed", DEFAULT)
    rng = np.random.default_rng(seed)
    p0 = rng.normal(0, 1, n).astype(np.float32)
    params = {name: torch.from_numpy(p0.copy()) for name in ("board", "cpu")}
    board.import_state({}, p0)
    cpu.import_state({}, p0)
    mismatches = []
    for step in range(1, steps + 1):
        grad = torch.from_numpy(rng.normal(0, 1e-2, n).astype(np.float32))
        hyper = StepHyper(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, step=step)
        for name, shard in (("board", board), ("cpu", cpu)):
            shard.step([Segment(0, params[name], grad)], hyper)
            shard.commit()
        a, b = board.export_state(), cpu.export_state()
        same = torch.equal(params["board"], params["cpu"]) and all(
            np.array_equal(a[k], b[k]) for k in ("fixed_P", "fixed_M", "fixed_em", "fixed_S", "fixed_es")
        )
        if not same:
            mismatches.append(step)
    return {"steps": steps, "n": n, "mismatches": mismatches}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--transport", choices=("pynq", "fake"), default="pynq")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=384)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--driver-only", action="store_true", help="skip the backend comparison (which needs torch)")
    args = parser.parse_args(argv)
    report: dict = {"package": str(args.package.resolve()), "transport": args.transport}
    try:
        manifest = verify(args.package)
    except ValueError as exc:
        report.update(ok=False, refused=f"package refused: {exc}")
        print(json.dumps(report))
        return REFUSED
    report.update(board=manifest.get("board"), version=manifest.get("version"))
    t0 = time.monotonic()
    import_hetadam(args.package, manifest["wheel"])
    report["hetadam"] = str(Path(importlib.import_module("hetadam.driver").__file__).parents[1])
    transport = transport_for(args.transport, args.package)
    report["driver"] = check_driver(transport, args.n, args.chunk, args.steps, args.seed)
    ok = not report["driver"]["mismatches"]
    if not args.driver_only and importlib.util.find_spec("torch") is not None:
        report["backend"] = check_backend(args.transport, args.package, args.n, args.steps, args.seed)
        ok = ok and not report["backend"]["mismatches"]
    report.update(ok=ok, seconds=round(time.monotonic() - t0, 3))
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
