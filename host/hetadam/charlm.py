"""The hard task of the numerics study: a character-level GPT on a real text.

Digits cannot tell 8 from 16 bits of optimizer state (docs/numerics.md); a
language model trained for a thousand steps can. The corpus is Ambrose
Bierce's *The Devil's Dictionary* (1911, public domain, about 380k
characters), which Debian ships as the `dict-devil` package
(/usr/share/dictd/devil.dict.dz, gzip-compatible dictzip). Nothing here is
downloaded, so the study runs offline.

The model is nanoGPT's shape at toy size: token and position embeddings,
`layers` pre-norm transformer blocks (causal self-attention with `heads`
heads, a 4x GELU MLP), a final norm and a head tied to the token embedding.
It trains as such models do: AdamW with betas (0.9, 0.95), weight decay 0.1
on the matrices only, a linear warm-up then a cosine decay of the learning
rate to a tenth, and the gradient norm clipped to 1. The batches and the
validation windows depend only on the seed, so two optimizers compared at one
seed see the same data.
"""

from __future__ import annotations

import gzip
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

CORPUS_PATH = Path("/usr/share/dictd/devil.dict.dz")
"""Where Debian's dict-devil puts the text."""
CORPUS_REMEDY = "install it: apt-get install dict-devil (Debian's package of The Devil's Dictionary)"
VAL_FRACTION = 0.1
"""The last tenth of the text is held out for validation."""


def load_corpus(path: Path = CORPUS_PATH) -> str:
    """The corpus text, without dictfmt's `00-database-*` header entries."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"the corpus {path} is missing: {CORPUS_REMEDY}") from None
    except (OSError, EOFError) as exc:
        raise ValueError(f"the corpus {path} is not a gzip/dictzip file ({exc}): reinstall dict-devil") from exc
    lines = raw.decode("utf-8", errors="replace").splitlines(keepends=True)
    text = "".join(line for line in lines if not line.startswith(("00-database", "00database")))
    if len(text) < 10_000:
        raise ValueError(f"the corpus {path} holds only {len(text)} characters: reinstall dict-devil")
    return text


@dataclass
class CharData:
    """The corpus as token ids (one per character), split into train and validation."""

    vocab: list[str]
    train: torch.Tensor
    val: torch.Tensor

    @classmethod
    def from_text(cls, text: str) -> CharData:
        vocab = sorted(set(text))
        index = {c: i for i, c in enumerate(vocab)}
        ids = torch.tensor([index[c] for c in text], dtype=torch.int64)
        cut = int(len(ids) * (1 - VAL_FRACTION))
        return cls(vocab, ids[:cut], ids[cut:])


@dataclass(frozen=True)
class LmConfig:
    """Model size and training schedule (the defaults are the study's)."""

    layers: int = 2
    d_model: int = 128
    heads: int = 4
    context: int = 64
    batch: int = 32
    steps: int = 1000
    lr: float = 3e-3
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    eval_batches: int = 16


class Block(nn.Module):
    def __init__(self, cfg: LmConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    def __init__(self, vocab: int, cfg: LmConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.Sequential(*(Block(cfg) for _ in range(cfg.layers)))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as in GPT-2
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.layers) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        logits = self.head(self.ln(self.blocks(x)))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on the matrices (and the tied embedding), none on biases and norms."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_at(step: int, cfg: LmConfig) -> float:
    """Linear warm-up over `warmup` steps, then a cosine from lr down to lr * min_lr_ratio."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _windows(ids: torch.Tensor, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.arange(context)
    x = ids[starts[:, None] + offsets]
    return x, ids[starts[:, None] + offsets + 1]


@torch.no_grad()
def evaluate(model: nn.Module, ids: torch.Tensor, cfg: LmConfig, seed: int) -> float:
    """Mean loss over `eval_batches` fixed windows of `ids` (nats per character)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    losses = []
    for _ in range(cfg.eval_batches):
        starts = torch.randint(0, len(ids) - cfg.context - 1, (cfg.batch,), generator=gen)
        losses.append(float(model(*_windows(ids, starts, cfg.context))))
    return sum(losses) / len(losses)


@dataclass
class LmResult:
    label: str
    val_loss: float = math.nan
    train_losses: list[float] = field(default_factory=list)
    saturated: int = 0
    seconds: float = 0.0
    n_params: int = 0


def lm_run(
    label: str,
    make_optimizer: Callable[[list[dict]], torch.optim.Optimizer],
    data: CharData,
    cfg: LmConfig = LmConfig(),
    seed: int = 0,
) -> LmResult:
    """Train a CharGPT with the optimizer `make_optimizer(param_groups)` builds
    (AdamW's hyper-parameters come from cfg through the groups' lr and
    weight_decay; the optimizer must take betas=cfg.betas itself). Returns the
    final validation loss; a run whose loss turns non-finite stops there with
    val_loss = inf."""
    torch.manual_seed(seed)
    model = CharGPT(len(data.vocab), cfg)
    groups = param_groups(model, cfg.weight_decay)
    opt = make_optimizer(groups)
    result = LmResult(label, n_params=sum(p.numel() for p in model.parameters()))
    gen = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    try:
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            starts = torch.randint(0, len(data.train) - cfg.context - 1, (cfg.batch,), generator=gen)
            loss = model(*_windows(data.train, starts, cfg.context))
            value = loss.item()
            if not math.isfinite(value):
                result.val_loss = math.inf
                return result
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            result.train_losses.append(value)
            result.saturated += int(getattr(opt, "saturated", 0))
        result.val_loss = evaluate(model, data.val, cfg, seed)
    finally:
        result.seconds = time.perf_counter() - t0
        close = getattr(opt, "close", None)
        if close is not None:
            close()
    return result
