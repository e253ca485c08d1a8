"""``fasttarget bench``: runs every suite on a tiny real input, writes the JSON schema, orients ratios."""

from __future__ import annotations

import json
import sys
import time

import pytest
from typer.testing import CliRunner

from fasttarget.bench import BARE_GATHER, GOALS, BenchConfig, Comparison, Row, format_table, measure, missed_goals
from fasttarget.cli import app, main
from fasttarget.errors import UserError

ROW_KEYS = {"name", "value", "unit", "baseline", "baseline_value", "ratio", "repeats", "min", "max"}
RECORD = 3073  # CIFAR-10 binary record: 1 label byte + 32*32*3 pixels


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    """The first records of the bundled sample in the CIFAR-10 binary layout: 600 train, 100 test images."""
    from fasttarget.demo import SAMPLE_SOURCE

    out = tmp_path_factory.mktemp("tiny") / "cifar-10-batches-bin"
    out.mkdir()
    (out / "batches.meta.txt").write_bytes((SAMPLE_SOURCE / "batches.meta.txt").read_bytes())
    for name, count in [*((f"data_batch_{i}.bin", 120) for i in range(1, 6)), ("test_batch.bin", 100)]:
        with open(SAMPLE_SOURCE / name, "rb") as fh:
            (out / name).write_bytes(fh.read(count * RECORD))
    return out


@pytest.fixture(scope="module")
def bench_json(tiny_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "all", "--source", str(tiny_source), "--repeats", "1", "--warmup", "0", "--batches", "1",
        "--json", str(out),
    ])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(out.read_text()), result.output


def test_bench_all_writes_every_suite_with_the_json_keys(bench_json):
    payload, output = bench_json
    assert set(payload) == {"machine", "rows"}
    assert {"cpu", "cores", "torch", "gpu"} <= set(payload["machine"])
    rows = payload["rows"]
    assert all(set(row) == ROW_KEYS for row in rows)
    prefixes = {row["name"].split()[0] for row in rows}
    assert prefixes == {"convert", "loader", "augment", "cache", "step", "fleet"}
    assert {"loader resident b128", "loader resident b512", "augment stdaug b256", "cache gather b128",
            "cache gather b128 cold", "step A b128", "step B b128", "step C b128"} <= {row["name"] for row in rows}
    for row in rows:
        assert row["repeats"] == 1 and row["value"] > 0 and row["baseline_value"] > 0
        assert row["ratio"] == pytest.approx(row["value"] / row["baseline_value"])
        assert row["min"] <= row["value"] <= row["max"]
    # The printed table has one line per row plus header, rule and machine line.
    table = output[output.index("measurement"):]
    assert "machine:" in table and all(row["name"] in table for row in rows)


def test_every_cpu_goal_has_a_row_in_bench_all(bench_json):
    """A goal whose (name, baseline) no suite produces would never be checked: renames must move goals too."""
    payload, output = bench_json
    measured = {(row["name"], row["baseline"]) for row in payload["rows"]}
    # The imagenet suite needs --imagenet photos (skipped here with a note); its goals are asserted
    # by benchmarks/test_bench_imagenet.py's slow test.
    cpu_goals = {key for key, goal in GOALS.items() if not goal.cuda_only and not key[0].startswith("imagenet")}
    assert cpu_goals <= measured
    # Each goal's verdict is printed on its row, and each raced baseline names its kernel in a note.
    assert output.count(": met") + output.count(": MISSED") == len(cpu_goals)
    assert "note: bare gather b128 is " in output and "note: h5py read once, in memory gather is " in output


def test_missed_goals_names_each_row_below_its_goal_and_only_those():
    def row(name, baseline, ratio, value=100.0):
        return Row(name, value, "batches/s", baseline, value / ratio, ratio, 9, value, value)

    rows = [row("loader resident b128", BARE_GATHER, 0.85), row("loader resident b512", BARE_GATHER, 0.95),
            row("loader ffcv b128", BARE_GATHER, 0.2), row("step B b128", "step A b128", 0.5)]
    assert missed_goals(rows, on_cuda=False) == [
        "loader resident b128 vs bare gather: ratio 0.85, 100 batches/s (n=9): goal ≥ 0.9× bare gather"]
    # The CUDA goal counts on CUDA runs only.
    assert [line.split(":")[0] for line in missed_goals(rows, on_cuda=True)] == [
        "loader resident b128 vs bare gather", "step B b128 vs step A b128"]


def test_ratio_is_oriented_so_higher_is_better_for_fasttarget():
    def work(seconds):
        return lambda: time.sleep(seconds)

    faster = measure(Comparison("fast", "call/s", 1, work(0.002), "slow", work(0.05)), repeats=3, warmup=0)
    slower = measure(Comparison("slow", "call/s", 1, work(0.05), "fast", work(0.002)), repeats=3, warmup=0)
    assert faster.ratio > 3 and slower.ratio < 1 / 3
    # Values are throughputs: calls per second, never more than the sleep allows.
    assert faster.value <= 1 / 0.002 and faster.baseline_value <= 1 / 0.05


def test_ratio_is_the_median_of_back_to_back_pairs_in_alternating_order(monkeypatch):
    import fasttarget.bench.timing as timing

    calls = []
    # Seconds per call, in call order: pair 0 ours-then-theirs, pair 1 theirs-then-ours, pair 2 ours first.
    seconds = iter([1.0, 2.0, 4.0, 2.0, 10.0, 1.0])

    def fake_elapsed(fn, device="cpu"):
        calls.append(fn())
        return next(seconds)

    monkeypatch.setattr(timing, "elapsed", fake_elapsed)
    comparison = Comparison("ours", "call/s", 1, lambda: "ours", "theirs", lambda: "theirs",
                            prepare=lambda: calls.append("prepare"))
    row = measure(comparison, repeats=3, warmup=0)
    # prepare runs, untimed, before every timed call of either side.
    assert calls == ["prepare", "ours", "prepare", "theirs", "prepare", "theirs", "prepare", "ours",
                     "prepare", "ours", "prepare", "theirs"]
    # Rates: ours 1, 0.5, 0.1; theirs 0.5, 0.25, 1. Pairs 2, 2, 0.1 -> median 2, while the
    # ratio of the medians (0.5 / 0.5) would hide the consistent 2x of the first two pairs.
    assert row.value == 0.5 and row.baseline_value == 0.5
    assert row.ratio == 2.0 and row.min == 0.1 and row.max == 1.0


def test_table_marks_goals_met_and_missed():
    def row(ratio):
        return Row("augment stdaug b256", 100 * ratio, "img/s", "kornia chain", 100, ratio, 1, 100 * ratio, 100 * ratio)

    assert GOALS[("augment stdaug b256", "kornia chain")].min_ratio == 2
    assert "≥ 2× Kornia chain: met" in format_table([row(2.5)])
    assert "≥ 2× Kornia chain: MISSED" in format_table([row(1.5)])
    cuda_goal = Row("step B b128", 1, "img/s", "step A b128", 1, 1.0, 1, 1, 1)
    assert "(CUDA goal)" in format_table([cuda_goal], {"cpu": "x", "cores": 2, "torch": "t", "gpu": None})


@pytest.mark.parametrize("kwargs", [{"suites": ("nope",)}, {"repeats": 0}, {"device": "tpu"}, {"width": 0}])
def test_bad_settings_are_user_errors(kwargs):
    with pytest.raises(UserError):
        BenchConfig(**kwargs)


def test_cli_reports_a_bad_suite_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["fasttarget", "bench", "convert", "lodaer"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown benchmark suite lodaer") and "\n" not in err
