"""Training on real data: scikit-learn's digits with an MLP or a small CNN.

`train_run` trains one model with one optimizer and returns its curves and
figures; `hetadam train`, the demo and the numerics study all use it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

MODELS = ("mlp", "cnn")
WARMUP_STEPS = 2
"""Steps left out of the step timing."""


@dataclass
class Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(seed: int = 0) -> Digits:
    """The 1797 8x8 digit images shipped inside scikit-learn, scaled to [0, 1],
    split 80/20 with a fixed permutation."""
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    tr, te = order[:cut], order[cut:]
    return Digits(x[tr], y[tr], x[te], y[te])


def make_model(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if name == "mlp":
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
        )
    if name == "cnn":
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(32 * 16, 10),
        )
    raise ValueError(f"unknown model {name!r}: choose one of {MODELS}")


@dataclass
class RunResult:
    label: str
    losses: list[float] = field(default_factory=list)
    accuracy: float = 0.0
    final_loss: float = 0.0
    step_seconds: float = 0.0
    wall_seconds: float = 0.0
    steps: int = 0
    n_params: int = 0
    params_digest: str = ""
    saturated: int = 0

    @property
    def params_per_second(self) -> float:
        return self.n_params / self.step_seconds if self.step_seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "accuracy": self.accuracy,
            "final_loss": self.final_loss,
            "step_seconds": self.step_seconds,
            "wall_seconds": self.wall_seconds,
            "params_per_second": self.params_per_second,
            "steps": self.steps,
            "n_params": self.n_params,
            "params_digest": self.params_digest,
            "saturated": self.saturated,
            "losses": self.losses,
        }


def params_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def train_run(
    label: str,
    make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    *,
    model: str = "mlp",
    epochs: int = 30,
    batch_size: int = 32,
    seed: int = 0,
    data: Digits | None = None,
    progress: bool = False,
) -> RunResult:
    """Train `model` on the digits and measure it. The batches depend only on
    `seed`, so two runs with the same seed see the same gradients as long as
    their parameters agree. `wall_seconds` covers it all, from making the
    optimizer (a backend's start) to the test."""
    started = time.perf_counter()
    data = data or load_digits()
    net = make_model(model, seed)
    params = list(net.parameters())
    opt = make_optimizer(params)
    result = RunResult(label, n_params=sum(p.numel() for p in params))
    gen = torch.Generator().manual_seed(seed + 1)
    n = len(data.y_train)
    total = epochs * -(-n // batch_size)
    bar = _progress(total, label) if progress else None
    step_time = 0.0
    try:
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
                loss.backward()
                t0 = time.perf_counter()
                opt.step()
                if result.steps >= WARMUP_STEPS:  # the first steps compile and allocate
                    step_time += time.perf_counter() - t0
                result.losses.append(float(loss.detach()))
                result.steps += 1
                result.saturated += int(getattr(opt, "saturated", 0))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        close = getattr(opt, "close", None)
        if close is not None:
            close()
    result.step_seconds = step_time / max(result.steps - WARMUP_STEPS, 1)
    result.accuracy = accuracy(net, data.x_test, data.y_test)
    with torch.no_grad():
        result.final_loss = float(torch.nn.functional.cross_entropy(net(data.x_test), data.y_test))
    result.params_digest = params_digest(net)
    result.wall_seconds = time.perf_counter() - started
    return result


def _progress(total: int, label: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=f"{label:>22}", unit="step", leave=False, dynamic_ncols=True, mininterval=2.0)


def summary_table(results: list[RunResult], reference: str | None = None) -> str:
    """A markdown table of runs; `reference` names the run others are compared
    with bit for bit."""
    ref = next((r for r in results if r.label == reference), None)
    rows = [
        "| run | test accuracy | test loss | ms / step | Mparam/s | wall time | bit-identical to "
        + (reference or "-")
        + " |",
        "| --- | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in results:
        comparable = ref is not None and r is not ref and "fixed" in r.label
        same = ("yes" if r.params_digest == ref.params_digest else "no") if comparable else "-"
        rows.append(
            f"| {r.label} | {100 * r.accuracy:.1f}% | {r.final_loss:.4f} | {1e3 * r.step_seconds:.3f} | "
            f"{r.params_per_second / 1e6:.2f} | {r.wall_seconds:.1f} s | {same} |"
        )
    return "\n".join(rows)


def np_losses(result: RunResult, window: int = 20) -> np.ndarray:
    """The loss curve smoothed by a moving average."""
    losses = np.asarray(result.losses)
    if losses.size < window:
        return losses
    return np.convolve(losses, np.ones(window) / window, mode="valid")
