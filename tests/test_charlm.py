"""The numerics study's hard task (hetadam.charlm): the corpus read from Debian's dict-devil, the schedule,
and a short training run that learns and depends only on its seed and its optimizer."""

from __future__ import annotations

import gzip
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hetadam import HetAdam
from hetadam.charlm import CORPUS_PATH, CharData, LmConfig, lm_run, load_corpus, lr_at
from hetadam.numerics import FixedFormat

needs_corpus = pytest.mark.skipif(not CORPUS_PATH.exists(), reason=f"no {CORPUS_PATH}: apt-get install dict-devil")
TINY = replace(LmConfig(), steps=25, batch=8, context=32, warmup=5, eval_batches=2)


def test_a_missing_corpus_names_the_package_that_brings_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dict-devil"):
        load_corpus(tmp_path / "devil.dict.dz")
    broken = tmp_path / "broken.dz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a gzip/dictzip file"):
        load_corpus(broken)


def test_the_dictfmt_header_entries_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "x.dict.dz"
    body = "ABSURDITY, n.  A statement or belief manifestly inconsistent with one's own opinion.\n" * 200
    path.write_bytes(gzip.compress(("00-database-url\nhttp://example\n" + body).encode()))
    text = load_corpus(path)
    assert "00-database" not in text and text.endswith("opinion.\n")


@needs_corpus
def test_the_corpus_is_the_devils_dictionary_split_nine_to_one() -> None:
    text = load_corpus()
    assert "THE DEVIL'S DICTIONARY" in text and "AMBROSE BIERCE" in text and len(text) > 300_000
    data = CharData.from_text(text)
    assert len(data.train) + len(data.val) == len(text)
    assert abs(len(data.val) / len(text) - 0.1) < 1e-3
    assert "".join(data.vocab[i] for i in data.train[:12]) == text[:12]


def test_the_learning_rate_warms_up_then_follows_a_cosine_to_a_tenth() -> None:
    cfg = LmConfig(steps=1000, warmup=50, lr=3e-3)
    assert lr_at(0, cfg) == pytest.approx(3e-3 / 50)
    assert lr_at(49, cfg) == pytest.approx(3e-3)
    assert lr_at(50, cfg) == pytest.approx(3e-3)
    assert lr_at(525, cfg) == pytest.approx(3e-3 * 0.55)
    assert lr_at(1000, cfg) == pytest.approx(3e-4)
    steps = [lr_at(t, cfg) for t in range(50, 1000)]
    assert steps == sorted(steps, reverse=True)


@needs_corpus
def test_a_short_run_learns_and_the_fixed_optimizer_follows_float_adamw() -> None:
    torch.set_num_threads(1)
    data = CharData.from_text(load_corpus())

    def float_adamw(groups: list[dict]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(groups, lr=TINY.lr, betas=TINY.betas)

    def fixed(groups: list[dict]) -> torch.optim.Optimizer:
        return HetAdam(groups, lr=TINY.lr, betas=TINY.betas, decoupled_weight_decay=True, numerics="fixed",
                       fixed_format=FixedFormat(m_bits=8, s_bits=8))  # fmt: skip

    a, b = lm_run("float", float_adamw, data, TINY, seed=3), lm_run("float", float_adamw, data, TINY, seed=3)
    assert a.val_loss == b.val_loss and a.train_losses == b.train_losses, "a seed fixes weights and batches"
    assert a.train_losses[-1] < a.train_losses[0] - 0.5 and a.val_loss < math.log(len(data.vocab))
    f = lm_run("fixed", fixed, data, TINY, seed=3)
    assert f.train_losses[0] == a.train_losses[0]
    assert abs(f.val_loss - a.val_loss) < 0.02 * a.val_loss
