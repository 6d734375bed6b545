#!/usr/bin/env python3
"""Smoke test of a hetadam deployment, run on the board from the package folder.

1. Verify the package: manifest.json must be well formed and list the overlay
   (.bit and .hwh), the wheel and this script, and every file it lists must be
   there with its SHA-256; a malformed, corrupted or incomplete package is
   refused (exit status 3, the reason in one line) before anything is loaded.
2. Unpack the shipped wheel into a temporary folder (removed at exit, so the
   package folder stays as it was copied) and import hetadam from it (the
   driver needs NumPy only; without torch, as on PYNQ-Z2 images, the
   package's torch-based top level is skipped).
3. Load the overlay (overlay/hetadam.bit + .hwh) with PYNQ, or with
   `--transport fake` use the golden-model double of the kernel (a dry run
   that needs no board), and run a few steps of the fixed Adam update through
   the driver: several chunks, a partial block, round-to-nearest and
   stochastic rounding, waiting for each run as `--wait` says (the interrupt
   when the overlay wires it, by default). Every step must be bit-exact with
   the golden model (hetadam.numerics.fixed.adam_step). When torch is
   importable, also step a shard of the backend (`pynq`, or the driver over
   the double) and the `cpu` backend's fixed shard side by side from the same
   float gradients.
4. With `--train STEPS`, train a small least-squares model through the driver
   (NumPy computes the gradients: no torch needed): every step bit-exact with
   the golden model, and the loss must fall at least tenfold.

Prints one JSON line (the report) and exits 0 when everything matched, 1 when
a result differed or the kernel failed (timeout, no interrupt), 3 when the
package was refused.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import importlib
import importlib.util
import json
import shutil
import sys
import tempfile
import time
import types
import zipfile
from pathlib import Path, PurePosixPath

MANIFEST = "manifest.json"
REQUIRED = ("overlay/hetadam.bit", "overlay/hetadam.hwh", "board_smoke.py")
"""What the manifest must list besides the wheel: what this test loads, and itself."""
REFUSED = 3


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(package: Path) -> dict:
    """The manifest, once it is well formed, lists the overlay, the wheel and this
    script, and every file it lists matches its hash; raises ValueError otherwise."""
    try:
        manifest = json.loads((package / MANIFEST).read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise ValueError(f"unreadable {MANIFEST}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ValueError(f"{MANIFEST} is not a JSON object")
    files, wheel = manifest.get("files"), manifest.get("wheel")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ValueError(f"{MANIFEST}: 'files' is not an object of file names and SHA-256 digests")
    if not isinstance(wheel, str) or not wheel.endswith(".whl") or "/" in wheel:
        raise ValueError(f"{MANIFEST}: 'wheel' is not the file name of a wheel ({wheel!r})")
    if not isinstance(manifest.get("board"), str):
        raise ValueError(f"{MANIFEST}: 'board' is not a board name ({manifest.get('board')!r})")
    for rel in (*REQUIRED, wheel):
        if rel not in files:
            raise ValueError(f"{MANIFEST} lists no {rel}")
    for rel, digest in sorted(files.items()):
        parts = PurePosixPath(rel).parts
        if not parts or parts[0] == "/" or ".." in parts:
            raise ValueError(f"{MANIFEST} lists {rel!r}, which is not a path inside the package")
        path = package / rel
        if not path.is_file():
            raise ValueError(f"{rel} is missing")
        if sha256(path) != digest:
            raise ValueError(f"{rel} does not match its SHA-256 in the manifest")
    return manifest


def import_hetadam(wheel: Path) -> Path:
    """Unpack the shipped wheel into a temporary folder (removed at exit), put it
    first on sys.path and return it. Not into the package: on a board the smoke
    test runs as root, and a folder of root's there would stop the next
    deployment, whose login cannot replace it."""
    site = Path(tempfile.mkdtemp(prefix="hetadam-smoke-"))
    atexit.register(shutil.rmtree, site, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    sys.path.insert(0, str(site))
    if importlib.util.find_spec("torch") is None:
        # hetadam/__init__ imports the torch optimizer; the driver does not need it
        pkg = types.ModuleType("hetadam")
        pkg.__path__ = [str(site / "hetadam")]
        sys.modules["hetadam"] = pkg
    return site


def transport_for(kind: str, package: Path):
    if kind == "fake":
        from hetadam.driver.fake import FakeTransport

        return FakeTransport()
    from hetadam.driver.pynq import PynqTransport

    return PynqTransport.from_overlay(package / "overlay" / "hetadam.bit")


def make_driver(transport, wait: str):
    """The driver over `transport`, waiting for each run as `wait` says: "interrupt",
    "poll", or "auto" (the interrupt when the overlay wires it)."""
    from hetadam.driver import AdamDriver

    interrupt = transport.interrupts if wait == "auto" else wait == "interrupt"
    return AdamDriver(transport, interrupt=interrupt, timeout=10.0)


def check_driver(driver, n: int, chunk: int, steps: int, seed: int) -> dict:
    """Steps through the driver, each compared with the golden model."""
    from hetadam.driver.state import ResidentState
    from hetadam.numerics import DEFAULT

    report = check_kernel(ResidentState(driver, n, DEFAULT, chunk=chunk), n, steps, seed)
    return {**report, "chunk": chunk, "runs": driver.runs}


def check_kernel(state, n: int, steps: int, seed: int) -> dict:
    """Steps of `state` (a FixedKernel: the driver's ResidentState, or a RemoteKernel
    on a server), each compared with the golden model."""
    import numpy as np

    from hetadam.numerics import DEFAULT, adam_step, encode_step
    from hetadam.numerics.convert import quantize_grad, state_from_float

    rng = np.random.default_rng(seed)
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
    return {"steps": steps, "n": n, "saturated": saturated, "mismatches": mismatches}


def check_training(driver, steps: int, seed: int) -> dict:
    """Least squares, min |Xw - y|^2 / 2m over 200 parameters, trained from w = 0
    through the driver in chunks of 128: NumPy computes each gradient from the
    parameters the kernel wrote, the kernel applies Adam (lr 0.1). Every step
    must match the golden model and the loss must fall at least tenfold."""
    import numpy as np

    from hetadam.driver.state import ResidentState
    from hetadam.numerics import DEFAULT, adam_step, encode_step
    from hetadam.numerics.convert import params_from_fixed, quantize_grad, state_from_float

    rng = np.random.default_rng(seed)
    m, n = 256, 200
    X = rng.normal(0, 1, (m, n)) / np.sqrt(n)
    y = X @ rng.normal(0, 1, n)

    def loss(P: np.ndarray) -> tuple[float, np.ndarray]:
        r = X @ params_from_fixed(P) - y
        return 0.5 * float(r @ r) / m, X.T @ r / m

    state = ResidentState(driver, n, DEFAULT, chunk=128)
    ref = state_from_float(np.zeros(n, np.float32), np.zeros(n), np.zeros(n))
    state.upload(ref)
    first, mismatches = loss(state.params())[0], []
    for step in range(1, steps + 1):
        G, eg, _ = quantize_grad(loss(state.params())[1])
        sc = encode_step(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, step=step)
        state.run(G, eg, sc, 0)
        state.commit()
        ref, _ = adam_step(ref, G, eg, sc, 0, DEFAULT)
        if not state.download().equals(ref):
            mismatches.append(step)
    last = loss(state.params())[0]
    return {
        "steps": steps,
        "n": n,
        "loss_first": round(first, 6),
        "loss_last": round(last, 6),
        "mismatches": mismatches,
        "ok": not mismatches and last < first / 10,
    }


def check_backend(kind: str, package: Path, n: int, steps: int, seed: int) -> dict:
    """A shard of the board's backend and a shard of the cpu backend, stepped alike."""
    from hetadam.backends.base import FixedShard
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
    return compare_shards(board, n, steps, seed)


def compare_shards(board, n: int, steps: int, seed: int) -> dict:
    """`board` (a fixed shard of n elements) and a shard of the cpu backend, stepped
    from the same float gradients (with weight decay): parameters and state must
    stay identical."""
    import numpy as np
    import torch

    from hetadam.backends.base import Segment, StepHyper
    from hetadam.backends.cpu import CpuBackend
    from hetadam.numerics import DEFAULT

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


def check_remote(host: str, port: int, token: bytes, n: int, chunk: int, steps: int, seed: int) -> dict:
    """Steps through a `hetadam serve` at host:port, run from the training host:
    a RemoteKernel against the golden model and, where torch is installed, a
    shard of the `tcp://` backend against a shard of `cpu`. Errors on the link
    or the server are reported (`"error"`), not raised."""
    from hetadam.kernels import BackendError
    from hetadam.numerics import DEFAULT
    from hetadam.remote.client import Link, RemoteKernel

    name = f"tcp://{host}:{port}"
    report: dict = {"remote": name}
    link = Link(name, host, port, token, timeout=60)
    try:
        link.open()
        report["kernel"] = check_kernel(RemoteKernel(link, n, DEFAULT, chunk=chunk), n, steps, seed)
        link.close()
        if importlib.util.find_spec("torch") is not None:
            from hetadam.remote.backend import remote_backend_class

            backend = remote_backend_class(f"{name}?chunk={chunk}")(token=token.decode())
            try:
                report["backend"] = compare_shards(backend.create_shard(0, n, "fixed", DEFAULT), n, steps, seed)
            finally:
                backend.close()
    except BackendError as exc:  # the server or the link failed: named in the message
        report["error"] = str(exc)
    finally:
        link.close()
    checks = [report[k]["mismatches"] for k in ("kernel", "backend") if k in report]
    report["ok"] = "error" not in report and not any(checks)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--transport", choices=("pynq", "fake"), default="pynq")
    parser.add_argument(
        "--wait", choices=("auto", "poll", "interrupt"), default="auto",
        help="how the driver waits for a run (auto: the interrupt when the overlay wires it)",
    )  # fmt: skip
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=384)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--train", type=int, default=0, metavar="STEPS", help="then train a small model this long")
    parser.add_argument("--driver-only", action="store_true", help="skip the backend comparison (which needs torch)")
    args = parser.parse_args(argv)
    report: dict = {"package": str(args.package.resolve()), "transport": args.transport}
    try:
        manifest = verify(args.package)
    except ValueError as exc:
        report.update(ok=False, refused=f"package refused: {exc}")
        print(json.dumps(report))
        return REFUSED
    report.update(board=manifest["board"], version=manifest.get("version"))
    t0 = time.monotonic()
    report["site"] = str(import_hetadam(args.package / manifest["wheel"]))
    from hetadam.driver import DriverError

    report["hetadam"] = str(Path(importlib.import_module("hetadam.driver").__file__).parents[1])
    try:
        transport = transport_for(args.transport, args.package)
        driver = make_driver(transport, args.wait)
        report["wait"] = "interrupt" if driver.interrupt else "poll"
        report["driver"] = check_driver(driver, args.n, args.chunk, args.steps, args.seed)
        ok = not report["driver"]["mismatches"]
        if not args.driver_only and importlib.util.find_spec("torch") is not None:
            report["backend"] = check_backend(args.transport, args.package, args.n, args.steps, args.seed)
            ok = ok and not report["backend"]["mismatches"]
        if args.train:
            report["train"] = check_training(driver, args.train, args.seed)
            ok = ok and report["train"]["ok"]
    except DriverError as exc:  # a timeout, no interrupt line, a run that never finished
        report["error"] = str(exc)
        ok = False
    report.update(ok=ok, seconds=round(time.monotonic() - t0, 3))
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
