"""Report: tables computed from known inputs, LOWESS applied, partial grids, end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from fasttarget.report import (
    Results,
    Stat,
    fig_acc_vs_step,
    fig_diagnostics,
    lowess_curve,
    soft_gaps,
    table1,
    table2,
    table3,
    table4,
    table_diagnostics,
    write_report,
)
from fasttarget.results import EvalRow, ResultsIndex, RunRow


def make_run(strategy: str, seed: int, curve, *, steps: int = 100, eval_every: int = 10,
             teacher: float | None = None, taug: str | None = "stdaug", saug: str = "stdaug",
             ipc: int | None = None, fraction: float | None = None) -> tuple[RunRow, list[EvalRow]]:
    """A finished run whose accuracy at step ``s`` is ``curve(s)``."""
    taug = taug if strategy != "A" else None
    teacher = teacher if strategy != "A" else None
    rid = f"{strategy}_{teacher}_{taug}_{saug}_{ipc}_{fraction}_{steps}_{seed}"
    evals = [EvalRow(rid, s, curve(s)) for s in range(eval_every, steps + 1, eval_every)]
    row = RunRow(run_id=rid, strategy=strategy, student_aug=saug, steps=steps, eval_every=eval_every, seed=seed,
                 teacher_acc=teacher, teacher_aug=taug, ipc=ipc, fraction=fraction, status="done",
                 final_step=steps, final_acc=curve(steps), teacher_acc_measured=teacher and teacher + 0.003)
    return row, evals


def results(pairs, budgets=(), dataset_ipc=None) -> Results:
    runs = [r for r, _ in pairs]
    return Results(runs, {r.run_id: e for r, e in pairs}, budgets, dataset_ipc, "synthetic")


def const(v):
    return lambda s: v


def test_stat_uses_sample_std():
    st = Stat.of([0.2, 0.4, 0.6])
    assert st.mean == pytest.approx(0.4) and st.std == pytest.approx(0.2) and st.n == 3
    assert st.pm() == "40.00 ± 20.00"


def test_table1_means_over_seeds_bold_best_and_a_reference():
    pairs = []
    for seed, jitter in ((0, -0.01), (1, 0.01)):
        pairs.append(make_run("B", seed, lambda s, j=jitter: 0.3 + s / 1000 + j, teacher=0.3))
        pairs.append(make_run("B", seed, lambda s, j=jitter: 0.2 + s / 400 + j, teacher=0.5))
        pairs.append(make_run("A", seed, const(0.25)))
    (section,) = table1(results(pairs))
    lines = section.body.splitlines()
    assert "| Step | T 30% | T 50% | A (one-hot) |" in lines
    row10 = next(line for line in lines if line.startswith("| 10 |"))
    row100 = next(line for line in lines if line.startswith("| 100 |"))
    # step 10: 30% teacher 0.31 vs 50% teacher 0.225 — the weaker teacher is best and bold.
    assert row10 == "| 10 | **31.00** | 22.50 | 25.00 |"
    assert row100 == "| 100 | 40.00 | **45.00** | 25.00 |"
    assert "seeds per cell: 2" in section.body and "30% measured 30.3%" in section.body


def test_table2_gain_is_c_over_b_at_budgets():
    pairs = [make_run("B", 0, const(0.40), teacher=0.3), make_run("C", 0, const(0.50), teacher=0.3),
             make_run("B", 0, const(0.80), teacher=0.7), make_run("C", 0, const(0.72), teacher=0.7)]
    section = table2(results(pairs, budgets=(50, 100)))
    rows = [line for line in section.body.splitlines() if line.startswith("|")]
    assert rows[0] == "| Step | Strategy | 30% | 70% |"
    assert rows[2:5] == ["| 50 | B | 40.00 | 80.00 |", "|  | C | 50.00 | 72.00 |", "|  | Gain | **1.25** | 0.90 |"]
    assert rows[5].startswith("| 100 | B |")


def test_table3_teacher_aug_by_accuracy():
    pairs = [make_run("B", 0, const(0.40), teacher=0.3, taug="stdaug"),
             make_run("B", 0, const(0.35), teacher=0.3, taug="mixup"),
             make_run("B", 0, const(0.60), teacher=0.5, taug="stdaug"),
             make_run("B", 0, const(0.65), teacher=0.5, taug="mixup")]
    body = table3(results(pairs)).body
    assert "| mixup | 35.00 | **65.00** |" in body
    assert "| stdaug | **40.00** | 60.00 |" in body


def test_table4_mean_std_and_shortest_run_per_seed():
    pairs = [make_run("A", s, const(v)) for s, v in ((0, 0.5), (1, 0.6), (2, 0.7))]
    body = table4(results(pairs)).body
    assert "| A | – | – | stdaug | full | 100 | 60.00 ± 10.00 | 3 |" in body
    # Two budgets of one configuration and seed: step 50 is read from the 50-step run.
    short = make_run("A", 0, const(0.1), steps=50)
    long = make_run("A", 0, const(0.9), steps=100)
    res = results([short, long])
    assert res.stat(res.runs, 50).mean == pytest.approx(0.1)
    assert res.stat(res.runs, 100).mean == pytest.approx(0.9)


def test_lowess_is_applied_to_the_plotted_curves():
    from statsmodels.nonparametric.smoothers_lowess import lowess

    rng = np.random.default_rng(0)
    noise = {(seed, s): rng.normal(0, 0.03) for seed in range(3) for s in range(10, 401, 10)}
    pairs = [make_run("B", seed, lambda s, seed=seed: 0.2 + 0.4 * (1 - np.exp(-s / 100)) + noise[(seed, s)],
                      steps=400, teacher=0.5) for seed in range(3)]
    pairs += [make_run("A", seed, lambda s: 0.1 + s / 1000, steps=400) for seed in range(3)]
    res = results(pairs)
    fig, _ = fig_acc_vs_step(res)
    ax = fig.axes[0]
    b_line = next(line for line in ax.get_lines() if line.get_label() == "B, teacher 50%")
    x, y = res.points(res.select(strategy="B"))
    expected = lowess(y, x, frac=0.1, it=0)  # 40 distinct steps: the paper's 10 % is wide enough
    xs, idx = np.unique(expected[:, 0], return_index=True)
    np.testing.assert_allclose(b_line.get_xdata(), xs)
    np.testing.assert_allclose(b_line.get_ydata(), expected[idx, 1] * 100)
    assert not np.allclose(b_line.get_ydata(), [y[x == s].mean() * 100 for s in xs])  # smoothed, not means
    assert ax.get_xlabel() == "Training step" and "accuracy" in ax.get_ylabel()


def test_few_evaluations_plot_seed_means_with_bands_teacher_lines_and_epochs():
    pairs = [make_run("B", seed, lambda s, seed=seed: 0.2 + s / 500 + seed / 100, steps=50, teacher=0.5)
             for seed in range(3)]
    pairs += [make_run("A", seed, lambda s, seed=seed: 0.1 + s / 400 + seed / 50, steps=50) for seed in range(3)]
    res = Results([r for r, _ in pairs], {r.run_id: e for r, e in pairs}, class_counts=[500] * 10, batch_size=100,
                  name="synthetic")
    fig, _ = fig_acc_vs_step(res)
    ax = fig.axes[0]
    a_line = next(line for line in ax.get_lines() if line.get_label() == "A (one-hot)")
    steps = np.arange(10, 51, 10)
    np.testing.assert_allclose(a_line.get_xdata(), steps)
    np.testing.assert_allclose(a_line.get_ydata(), (0.1 + steps / 400 + 0.02) * 100)  # mean of the seeds
    band = ax.collections[0].get_paths()[0].vertices[:, 1]  # ±1 sd of 0.1, 0.12, 0.14 around the mean
    assert band.max() - band.min() > 2 * 2.0 - 1e-6
    teacher = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert len(teacher) == 1 and teacher[0].get_ydata()[0] == pytest.approx(50.3)  # measured accuracy
    top = ax.child_axes  # the epoch axis: 50 steps × 100 images / 5000 = 1 epoch
    assert top and "Epochs of full" in top[0].get_xlabel()
    assert res.epochs(res.runs[0], 50) == pytest.approx(1.0)


def test_lowess_widens_for_few_steps():
    x = np.repeat([10.0, 20.0, 30.0, 40.0, 50.0], 3)
    y = x / 100
    xs, ys = lowess_curve(x, y)
    np.testing.assert_allclose(xs, [10, 20, 30, 40, 50])
    np.testing.assert_allclose(ys, xs / 100, atol=1e-9)


def _index_from(pairs, path: Path, budgets=()) -> None:
    index = ResultsIndex(path / "results.sqlite")
    for row, evals in pairs:
        index.upsert_run(row)
        index.replace_evals(row.run_id, evals)
    index.upsert_run(RunRow(run_id="bad", strategy="A", student_aug="boom", steps=10, eval_every=5, seed=0,
                            status="failed", error="RuntimeError: synthetic"))
    index.set_meta("budgets", list(budgets))
    index.set_meta("config", {"name": "synthetic"})
    index.set_meta("dataset_ipc", 500)
    index.close()


def test_partial_grid_report_says_what_is_not_covered(tmp_path):
    _index_from([make_run("A", s, lambda x: x / 200) for s in range(2)], tmp_path)
    written = write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "Not covered by this sweep: no Strategy B or C runs" in text
    assert text.count("**not covered**") >= 6  # every finding needs soft targets
    assert "RuntimeError: synthetic" in text  # failed runs listed
    assert all(p.exists() for p in written)


def test_full_report_end_to_end(tmp_path):
    pairs = []
    for seed in range(2):
        for ipc in (10, 50, None):
            big = ipc is None
            pairs.append(make_run("A", seed, lambda s, i=ipc: (0.2 if i else 0.1) + s / 300, ipc=ipc,
                                  steps=100 if big else 50))
            for t in (0.3, 0.7):
                for strategy in ("B", "C"):
                    pairs.append(make_run(strategy, seed, lambda s, t=t: t * 0.8 + s / 2000, teacher=t, ipc=ipc,
                                          steps=100 if big else 50))
    _index_from(pairs, tmp_path, budgets=(50, 100))
    out = tmp_path / "report"
    written = {p.name for p in write_report(tmp_path, out)}
    assert {"report.md", "claims.md", "claims.json", "results.csv", "fig_acc_vs_step.png", "fig_acc_vs_ipc.png",
            "fig_budget_matched.png"} <= written
    text = (out / "report.md").read_text()
    for title in ("Table 1:", "Table 2:", "Table 3:", "Table 4:", "Claim check"):
        assert title in text
    claims = json.loads((out / "claims.json").read_text())
    assert [c["finding"] for c in claims] == list("abcdef")


def test_report_is_redone_from_the_committed_csv_and_meta(tmp_path):
    pairs = [make_run("A", s, lambda x, s=s: x / 200 + s / 100, steps=100) for s in range(3)]
    pairs += [make_run("B", s, lambda x, s=s: 0.3 + x / 400 + s / 100, teacher=0.5, steps=100) for s in range(3)]
    _index_from(pairs, tmp_path)
    first = tmp_path / "first"
    write_report(tmp_path, first)
    assert json.loads((first / "meta.json").read_text())["dataset_ipc"] == 500
    committed = tmp_path / "committed"  # what a docs/results/<name> folder holds: no results.sqlite
    committed.mkdir()
    for name in ("results.csv", "meta.json"):
        (committed / name).write_bytes((first / name).read_bytes())
    write_report(committed)
    assert (committed / "claims.json").read_text() == (first / "claims.json").read_text()
    assert (committed / "report.md").read_text() == (first / "report.md").read_text()


def test_committed_cpu_small_results_re_report_to_their_committed_claims():
    from fasttarget.claims import check_claims

    committed = Path(__file__).resolve().parents[1] / "docs" / "results" / "cpu-small"
    res = Results.load(committed)
    assert len(res.runs) == 33 and res.class_counts == (5000,) * 10
    assert [c.to_json() for c in check_claims(res)] == json.loads((committed / "claims.json").read_text())


def _diagnosed(pairs, entropy: dict[str, float], agreement: dict[str, float]):
    """The runs with diagnostics: by strategy, plus the teacher accuracy and seed as small offsets."""
    out = []
    for row, evals in pairs:
        extra = (row.teacher_acc or 0) / 10 + row.seed / 100
        teacher = f"stdaug-t{(row.teacher_acc or 0.7) * 100:g}"
        out.append((dataclasses.replace(row, target_entropy=entropy[row.strategy] + (extra if row.strategy != "A" else 0),
                                        agreement=agreement[row.strategy] + extra, agreement_teacher=teacher), evals))
    return out


def test_diagnostics_table_figure_and_csv_round_trip(tmp_path):
    pairs = []
    for seed in range(2):
        pairs.append(make_run("A", seed, lambda s: 0.3))
        for t in (0.3, 0.7):
            pairs += [make_run(s, seed, lambda x, t=t: 0.3 + t / 10, teacher=t) for s in ("B", "C")]
    pairs = _diagnosed(pairs, {"A": 0.0, "B": 1.0, "C": 1.5}, {"A": 0.4, "B": 0.5, "C": 0.6})
    res = results(pairs)
    section = table_diagnostics(res)
    rows = {tuple(line.split(" | ")[:2]): line for line in section.body.splitlines() if line.startswith("| ")}
    # B, 70 % teacher: entropy 1.07 + seed/100 → 1.075 ± 0.007; agreement 57 % + seed → 57.5 ± 0.7
    assert "| 1.075 ± 0.007 | 57.5 ± 0.7 | stdaug-t70 | 37.0 ± 0.0 | 2 |" in rows[("| B", "70%")]
    assert "| 0.000 ± 0.000 | 40.5 ± 0.7 | stdaug-t70 |" in rows[("| A", "–")]
    gaps = {(r.strategy, r.teacher_acc, r.seed): round(g, 6) for r, g in soft_gaps(res)}
    assert gaps[("C", 0.7, 1)] == pytest.approx(0.07)  # paired with A of the same seed
    fig, _ = fig_diagnostics(res)
    assert fig is not None and len(fig.axes) == 2
    _index_from(pairs, tmp_path)
    written = {p.name for p in write_report(tmp_path, tmp_path / "report")}
    assert "fig_diagnostics.png" in written
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Target entropy and teacher–student agreement" in text and "fig_diagnostics.png" in text
    again = Results.load(tmp_path / "report")  # from the exported CSV, as a committed report is redone
    assert table_diagnostics(again).body == table_diagnostics(Results.load(tmp_path)).body


def test_a_csv_from_before_diagnostics_reports_without_them(tmp_path):
    committed = Path(__file__).resolve().parents[1] / "docs" / "results" / "cpu-small"
    assert "target_entropy" not in (committed / "results.csv").read_text().splitlines()[0]
    for name in ("results.csv", "meta.json"):
        (tmp_path / name).write_bytes((committed / name).read_bytes())
    res = Results.load(tmp_path)
    assert len(res.runs) == 33 and all(r.target_entropy is None and r.agreement is None for r in res.runs)
    assert table_diagnostics(res) is None
    written = {p.name for p in write_report(tmp_path)}
    text = (tmp_path / "report.md").read_text()
    assert "fig_diagnostics.png" not in written and "agreement" not in text.lower()
