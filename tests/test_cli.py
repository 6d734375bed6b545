"""The `hetadam` command: info, bench and train, end to end at small sizes."""

from __future__ import annotations

import json

import pytest

from hetadam import backends
from hetadam.cli import main


def test_info_lists_every_backend_and_why_not(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in backends.NAMES:
        assert name in out
    assert "pynq" in out and "no " in out  # not a board: unusable, with its reason


def test_bench_prints_ratios_and_writes_json(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bench.json"
    assert main(["bench", "--sizes", "65536", "--backends", "cpu", "--repeat", "2", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "vs torch fused" in out and "hetadam cpu fixed" in out
    rows = json.loads(path.read_text())["rows"]
    names = {r["name"] for r in rows}
    assert {"torch Adam fused", "torch Adam foreach", "hetadam cpu fp32", "hetadam cpu fixed"} <= names
    fused = next(r for r in rows if r["name"] == "torch Adam fused")
    assert fused["vs_fused"] == pytest.approx(1.0) and all(r["gparams_per_s"] > 0 for r in rows)


def test_bench_split_over_two_backends(tmp_path) -> None:
    if not backends.availability("opencl").usable:
        pytest.skip(reason=f"needs a second backend: {backends.availability('opencl').reason}")
    path = tmp_path / "split.json"
    args = ["bench", "--split", "cpu,opencl", "--sizes", "65536", "--repeat", "2", "--json", str(path)]
    assert main(args) == 0
    result = json.loads(path.read_text())
    assert result["sweep"][0]["fraction"] == 0.0 and result["auto_seconds"] > 0
    assert {s["backend"] for s in result["auto_shares"]} <= {"cpu", "opencl"}
    assert path.with_suffix(".png").stat().st_size > 0


def test_train_writes_a_report_and_compares_bits(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report"
    args = ["train", "--backend", "cpu", "--numerics", "fixed", "--epochs", "1", "--report", str(report)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "torch.optim.Adam" in out and "cpu fixed" in out and "test accuracy" in out
    assert (report / "report.md").read_text().count("|") > 10
    assert (report / "loss.png").stat().st_size > 0 and (report / "accuracy_throughput.png").stat().st_size > 0
    results = json.loads((report / "results.json").read_text())
    assert all(r["accuracy"] > 0.5 for r in results)  # one epoch already learns the digits


def test_bad_arguments_fail_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--backend", "tpu", "--epochs", "1"]) == 2
    assert "unknown backend" in capsys.readouterr().err
