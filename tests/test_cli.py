"""The `hetadam` command: info, bench and train, end to end at small sizes."""

from __future__ import annotations

import json
import re

import pytest

from hetadam import backends
from hetadam.cli import main
from hetadam.demo import REFERENCE, comparison_table
from hetadam.train import RunResult


def test_info_lists_every_backend_and_why_not(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["backend", "numerics", "usable"]
    rows = {line.split()[0]: line.split(maxsplit=3) for line in lines}
    assert list(rows) == list(backends.NAMES), "one row per backend, in registry order"
    for name, (_, numerics, usable, *why) in rows.items():
        avail = backends.availability(name)
        assert usable == ("yes" if avail.usable else "no"), name
        try:
            assert numerics == ",".join(backends.backend_class(name).numerics), name
        except backends.BackendUnavailable:  # its module does not import here
            assert numerics == "-", name
        assert bool(why) != avail.usable, f"{name}: an unusable backend says why, a usable one does not"
        if why:
            assert avail.reason in why[0] and avail.remedy in why[0], name


def test_bench_prints_ratios_and_writes_json(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """One row per configuration of the chosen backend, each ratio the quotient of the row's own
    timings, and the printed table says what the JSON says."""
    path = tmp_path / "bench.json"
    size = 65536
    assert main(["bench", "--sizes", str(size), "--backends", "cpu", "--repeat", "2", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    rows = json.loads(path.read_text())["rows"]
    assert sorted(r["name"] for r in rows) == sorted(
        [
            "torch Adam fused",
            "torch Adam foreach",
            "hetadam cpu fp32 check_finite=False",
            "hetadam cpu fp32",
            "hetadam cpu fixed",
            "hetadam cpu fixed no change check",
        ]
    )
    for r in rows:
        assert r["size"] == size
        assert r["seconds"] > 0 and r["fused_seconds"] > 0 and r["foreach_seconds"] > 0
        assert r["gparams_per_s"] == pytest.approx(size / r["seconds"] / 1e9)
        assert r["vs_fused"] == pytest.approx(r["fused_seconds"] / r["seconds"])
        assert r["vs_foreach"] == pytest.approx(r["foreach_seconds"] / r["seconds"])
        line = re.search(
            rf"^\| {re.escape(r['name'])} \| {size:,} \| ([\d.]+) \| ([\d.]+)x \| ([\d.]+)x \|$", out, re.M
        )
        assert line is not None, f"no table row for {r['name']!r} in:\n{out}"
        printed = [float(v) for v in line.groups()]
        assert printed == pytest.approx([r["gparams_per_s"], r["vs_fused"], r["vs_foreach"]], abs=0.006)
    foreach = next(r for r in rows if r["name"] == "torch Adam foreach")
    assert foreach["seconds"] == foreach["foreach_seconds"], "the foreach row is torch's foreach timing itself"


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


def test_train_writes_a_report_of_every_run(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report"
    args = ["train", "--backend", "cpu", "--numerics", "fixed", "--epochs", "1", "--report", str(report)]
    assert main(args) == 0
    out = capsys.readouterr().out
    results = json.loads((report / "results.json").read_text())
    assert [r["label"] for r in results] == ["torch.optim.Adam", "cpu fixed"]
    steps = results[0]["steps"]
    assert steps > 10, "one epoch of the digits in batches of 32"
    text = (report / "report.md").read_text()
    for r in results:
        assert r["steps"] == len(r["losses"]) == steps
        assert r["accuracy"] > 0.5, r["label"]  # one epoch already learns the digits
        assert f"{r['label']:>24}: test accuracy {100 * r['accuracy']:.1f}%" in out
        assert f"| {r['label']} | {100 * r['accuracy']:.1f}% | {r['final_loss']:.4f} |" in text
    assert results[0]["params_digest"] != results[1]["params_digest"], "fixed point is not float32"
    assert (report / "loss.png").stat().st_size > 0 and (report / "accuracy_throughput.png").stat().st_size > 0


def test_the_report_says_which_fixed_runs_are_bit_identical_to_cpu_fixed() -> None:
    def run(label: str, digest: str) -> RunResult:
        return RunResult(label, accuracy=0.9, step_seconds=1e-3, n_params=10, params_digest=digest)

    runs = [
        run("torch.optim.Adam", "aaaa"),
        run(REFERENCE, "bbbb"),
        run("opencl fixed", "bbbb"),
        run("hls-csim fixed", "cccc"),
        run("cpu fp32", "bbbb"),
    ]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in comparison_table(runs).splitlines()[2:]]
    assert {row[0]: row[-1] for row in cells} == {
        "torch.optim.Adam": "-",
        REFERENCE: "-",
        "opencl fixed": "yes",
        "hls-csim fixed": "no",
        "cpu fp32": "-",
    }


def test_bad_arguments_fail_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--backend", "tpu", "--epochs", "1"]) == 2
    assert "unknown backend" in capsys.readouterr().err
