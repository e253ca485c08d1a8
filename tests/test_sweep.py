"""Sweep: grid expansion, idempotence, resume after SIGKILL, failure isolation, pairing.

The student, teacher and cache stages are replaced by small fakes that write the same
files the real ones do (run directory, ladder checkpoints, cache file), so the driver's
bookkeeping is tested in seconds; the dependency graph and retries are in
``test_sweep_graph``, the Ray and SLURM backends in ``test_sweep_backends``, the real
stages in ``test_sweep_smoke``.
"""

from __future__ import annotations

import dataclasses

import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fasttarget.errors import UserError
from fasttarget.results import ResultsIndex
from fasttarget.sweep import (
    BackendConfig,
    FleetRequest,
    RunRequest,
    Stages,
    SweepConfig,
    TeacherCheckpoint,
    describe_plan,
    plan_sweep,
    run_sweep,
)

TINY = {
    "name": "tiny",
    "data": {"source": "unused-by-fakes"},
    "student": {"eval_every": 5, "seeds": [0, 1]},
    "teacher": {"max_steps": 100},
    # The fakes write no student model: diagnostics of real runs are in test_diagnostics.
    "report": {"diagnostics": False},
    "grid": [
        {"name": "main", "strategies": ["A", "B", "C"], "teacher_accuracies": [0.3, 0.5],
         "teacher_augs": ["stdaug"], "student_augs": ["stdaug"], "ipc": [10, 50], "steps": [10, 20]},
    ],
}


# -- fakes (module level: picklable for the process pool) -----------------------------


def fake_acc(req: RunRequest, step: int) -> float:
    """A deterministic accuracy curve that depends on every axis."""
    bonus = {"A": 0.0, "B": 0.05, "C": 0.1}[req.spec.strategy] + (req.spec.teacher_acc or 0) / 10
    return min(0.99, 0.1 + step / 100 + bonus + req.spec.seed / 1000)


# The fake stages fail every run of this (real, so the config accepts it) augmentation.
FAILING_AUG = "cutmix"


def fake_train(req: RunRequest, kill_at: tuple[str, int] | None = None) -> None:
    """Writes the run-dir contract; resumes from ``checkpoints/last.pt`` (the last step)."""
    if req.spec.student_aug == FAILING_AUG:
        raise RuntimeError("synthetic failure")
    ckpt = req.run_dir / "checkpoints" / "last.pt"
    start = 0
    if req.resume:
        start = int(ckpt.read_text())
    else:
        req.run_dir.mkdir(parents=True)
    (req.run_dir / "config.json").write_text(json.dumps({"seed": req.spec.seed, "resume": req.resume}))
    ckpt.parent.mkdir(exist_ok=True)
    with open(req.run_dir / "metrics.jsonl", "a") as fh:
        for step in range(start + req.spec.eval_every, req.spec.steps + 1, req.spec.eval_every):
            acc = fake_acc(req, step)
            fh.write(json.dumps({"step": step, "images_seen": step * 128, "test_acc_h": acc * 100,
                                 "test_acc_g": acc * 100, "loss": 1.0}) + "\n")
            fh.flush()
            ckpt.write_text(str(step))
            if kill_at == (req.spec.run_id, step):
                os.kill(os.getpid(), signal.SIGKILL)
    (req.run_dir / "final.json").write_text(json.dumps(
        {"status": "done", "step": req.spec.steps, "test_acc_h": fake_acc(req, req.spec.steps) * 100,
         "test_acc_g": 0.0, "wall_s": 1.0}))


def fake_ladder(req) -> dict[float, TeacherCheckpoint]:
    req.out_dir.mkdir(parents=True, exist_ok=True)
    found = {}
    for acc in req.accuracies:
        if acc <= 0.6:  # the fake ladder never gets past 60 %
            path = req.out_dir / f"teacher-{acc}.pt"
            path.write_text("ckpt")
            found[acc] = TeacherCheckpoint(path, acc + 0.004)
    return found


def fake_cache(req) -> None:
    req.out_file.write_text(f"logits of {req.teacher}")


def fake_data(req) -> None:
    req.out_dir.mkdir(parents=True, exist_ok=True)
    (req.out_dir / "meta.json").write_text(json.dumps({"splits": {"train": {"class_counts": [5000] * 10}}}))


def fake_fleet(req: FleetRequest, kill_at: int | None = None) -> None:
    """Trains the members in lockstep, as a fleet does: at each evaluation every member writes its
    metrics row, then every checkpoint; SIGKILLed after the checkpoints of step ``kill_at``."""
    (steps,), (every,) = {m.spec.steps for m in req.members}, {m.spec.eval_every for m in req.members}
    starts = {int((m.run_dir / "checkpoints" / "last.pt").read_text()) if m.resume else 0 for m in req.members}
    assert len(starts) == 1, f"a fleet's members must resume from one step, got {starts}"
    req.fleet_dir.mkdir(parents=True, exist_ok=True)
    (req.fleet_dir / "fleet.json").write_text(json.dumps({"members": [m.spec.run_id for m in req.members]}))
    for m in req.members:
        if m.spec.student_aug == FAILING_AUG:
            raise RuntimeError("synthetic failure")
        (m.run_dir / "checkpoints").mkdir(parents=True, exist_ok=m.resume)
        (m.run_dir / "config.json").write_text(json.dumps({"seed": m.spec.seed, "resume": m.resume}))
    for step in range(starts.pop() + every, steps + 1, every):
        for m in req.members:
            acc = fake_acc(m, step)
            with open(m.run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps({"step": step, "images_seen": step * 128, "test_acc_h": acc * 100,
                                     "test_acc_g": acc * 100, "loss": 1.0}) + "\n")
        for m in req.members:
            (m.run_dir / "checkpoints" / "last.pt").write_text(str(step))
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    for m in req.members:
        (m.run_dir / "final.json").write_text(json.dumps(
            {"status": "done", "step": steps, "test_acc_h": fake_acc(m, steps) * 100, "test_acc_g": 0.0,
             "wall_s": 1.0}))


FAKES = Stages(prepare_data=fake_data, train_ladder=fake_ladder, build_cache=fake_cache, train_student=fake_train,
               train_fleet=fake_fleet)
INLINE = BackendConfig(workers=1)  # in this process: the Recorder's closures need no pickling


class Recorder:
    """Stages that count and record what they were asked to do."""

    def __init__(self):
        self.runs: list[RunRequest] = []
        self.fleets: list[FleetRequest] = []
        self.ladders = []
        self.caches = []

    def stages(self) -> Stages:
        def train(req):
            self.runs.append(req)
            fake_train(req)

        def ladder(req):
            self.ladders.append(req)
            return fake_ladder(req)

        def cache(req):
            self.caches.append(req)
            fake_cache(req)

        def fleet(req):
            self.fleets.append(req)
            fake_fleet(req)

        return Stages(prepare_data=fake_data, train_ladder=ladder, build_cache=cache, train_student=train,
                      train_fleet=fleet)


def _cfg(**overrides) -> SweepConfig:
    data = json.loads(json.dumps(TINY))
    data["grid"][0].update(overrides)
    return SweepConfig.from_dict(data)


# -- expansion ------------------------------------------------------------------------


def test_expansion_counts_and_strategy_a_has_no_teacher_axis():
    cfg = _cfg()
    plan = plan_sweep(cfg)
    by_strategy = {s: [r for r in plan.runs if r.strategy == s] for s in "ABC"}
    # 2 ipc × 2 seeds, one run per combination (budgets read from the 20-step run).
    assert len(by_strategy["A"]) == 4
    assert all(r.teacher_acc is None and r.teacher_aug is None for r in by_strategy["A"])
    assert len(by_strategy["B"]) == len(by_strategy["C"]) == 2 * 2 * 2
    assert {r.steps for r in plan.runs} == {20}
    assert plan.budgets == (10, 20)
    assert plan.ladders == {"stdaug": (0.3, 0.5)}
    assert plan.caches == (("stdaug", 0.3), ("stdaug", 0.5))
    assert len({r.run_id for r in plan.runs}) == len(plan.runs)


def test_expansion_one_run_per_budget_when_asked():
    data = json.loads(json.dumps(TINY))
    data["budgets_from_one_run"] = False
    plan = plan_sweep(SweepConfig.from_dict(data))
    assert sorted({r.steps for r in plan.runs}) == [10, 20]
    assert len(plan.runs) == 2 * (4 + 8 + 8)


def test_runs_shared_between_grids_are_trained_once():
    data = json.loads(json.dumps(TINY))
    data["grid"].append({"name": "again", "strategies": ["A"], "student_augs": ["stdaug", "mixup"],
                         "ipc": [10], "steps": [20]})
    plan = plan_sweep(SweepConfig.from_dict(data))
    assert len(plan.runs) == 20 + 2  # only the mixup A runs are new


@pytest.mark.parametrize("bad, message", [
    ({"strategies": ["D"]}, "strategies"),
    ({"teacher_accuracies": [30]}, "fractions"),
    ({"fractions": [0.1]}, "not both"),
    ({"steps": [7, 20]}, "multiples of eval_every"),
    ({"typo_key": 1}, "unknown key"),
])
def test_bad_configs_name_the_problem(bad, message):
    with pytest.raises(UserError, match=message):
        _cfg(**bad)


def test_toml_presets_parse():
    configs = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(configs.glob("*.toml")):
        cfg = SweepConfig.from_toml(path)
        assert plan_sweep(cfg).runs, path


def test_dry_run_describes_without_writing(tmp_path):
    cfg = dataclasses.replace(_cfg(), data_source=tmp_path)  # dry runs check that the source exists
    text = describe_plan(cfg, tmp_path / "out", estimate=False)
    assert "20 new" in text and "teacher ladder stdaug (30%, 50%): to run" in text
    assert not (tmp_path / "out").exists()


# -- execution ------------------------------------------------------------------------


def test_sweep_runs_everything_then_is_idempotent(tmp_path):
    rec = Recorder()
    summary = run_sweep(_cfg(), tmp_path, INLINE, stages=rec.stages())
    assert summary.counts == {"done": 20} and not summary.failed
    assert len(rec.runs) == 20 and len(rec.ladders) == 1 and len(rec.caches) == 2
    # C runs read the cache of their own teacher, B runs the teacher checkpoint itself.
    for req in rec.runs:
        if req.spec.strategy == "C":
            assert req.cache.name == f"stdaug-t{req.spec.teacher_acc * 100:g}.h5" and req.cache.is_file()
        if req.spec.strategy != "A":
            assert req.teacher.name == f"teacher-{req.spec.teacher_acc}.pt"
    index = ResultsIndex(tmp_path / "results.sqlite")
    row = index.runs(strategy="B", teacher_acc=0.5, ipc=10, seed=1)[0]
    assert row.status == "done" and row.teacher_acc_measured == pytest.approx(0.504)
    assert [e.step for e in index.evals(row.run_id)] == [5, 10, 15, 20]
    assert row.final_acc == pytest.approx(0.1 + 0.2 + 0.05 + 0.05 + 0.001)  # percent → fraction
    assert (tmp_path / "results.csv").read_text().count("\n") == 21
    # Workers may mount the sweep elsewhere: the index holds paths relative to its root only.
    assert row.run_dir == f"runs/{row.run_id}"
    assert str(tmp_path) not in (tmp_path / "results.csv").read_text()
    assert str(tmp_path) not in (tmp_path / "teachers" / "stdaug" / "rungs.json").read_text()
    assert {u.kind for u in index.units(status="done")} == {"data", "ladder", "cache", "run"}

    again = Recorder()
    summary = run_sweep(_cfg(), tmp_path, INLINE, stages=again.stages())
    assert summary.counts == {"done": 20}
    assert again.runs == [] and again.ladders == [] and again.caches == []


def test_failing_run_is_recorded_and_the_rest_go_on(tmp_path):
    cfg = _cfg(student_augs=["stdaug", FAILING_AUG], strategies=["A"])
    summary = run_sweep(cfg, tmp_path, INLINE, stages=FAKES)
    assert summary.counts == {"done": 4, "failed": 4}
    index = ResultsIndex(tmp_path / "results.sqlite")
    failed = index.runs(status="failed")
    assert {r.student_aug for r in failed} == {FAILING_AUG}
    assert all(r.error == "RuntimeError: synthetic failure" for r in failed)
    assert "Traceback" in (tmp_path / failed[0].run_dir / "error.txt").read_text()
    # A second invocation retries the failed runs only (twice each: the first try and one retry).
    rec = Recorder()
    run_sweep(cfg, tmp_path, INLINE, stages=rec.stages())
    assert sorted(r.spec.student_aug for r in rec.runs) == [FAILING_AUG] * 8


def test_missing_teacher_fails_only_its_runs(tmp_path):
    summary = run_sweep(_cfg(teacher_accuracies=[0.3, 0.7]), tmp_path, INLINE, stages=FAKES)
    assert summary.counts == {"done": 12, "failed": 8}
    assert all("teacher stdaug 70% was not reached" in e for e in summary.failed.values())
    manifest = json.loads((tmp_path / "teachers" / "stdaug" / "rungs.json").read_text())
    assert manifest["missed"] == ["0.7"]
    # Same teacher settings: the missed rung is settled, the ladder is not retrained.
    rec = Recorder()
    run_sweep(_cfg(teacher_accuracies=[0.3, 0.7]), tmp_path, INLINE, stages=rec.stages())
    assert rec.ladders == [] and rec.runs == []


def test_resume_after_sigkill(tmp_path):
    plan = plan_sweep(_cfg())
    victim = plan.runs[2]
    script = textwrap.dedent(f"""
        import functools, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_sweep as t
        from fasttarget.sweep import Stages, run_sweep
        train = functools.partial(t.fake_train, kill_at=({victim.run_id!r}, 10))
        stages = Stages(prepare_data=t.fake_data, train_ladder=t.fake_ladder,
                        build_cache=t.fake_cache, train_student=train)
        run_sweep(t._cfg(), {str(tmp_path)!r}, t.INLINE, stages=stages)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    index = ResultsIndex(tmp_path / "results.sqlite")
    assert index.runs(run_id=victim.run_id)[0].status == "running"
    index.close()

    rec = Recorder()
    summary = run_sweep(_cfg(), tmp_path, INLINE, stages=rec.stages())
    assert summary.counts == {"done": 20}
    trained = [r.spec.run_id for r in rec.runs]
    assert trained == [r.run_id for r in plan.runs[2:]]  # the first two were not redone
    assert rec.runs[0].resume and not any(r.resume for r in rec.runs[1:])
    lines = (tmp_path / "runs" / victim.run_id / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [5, 10, 15, 20]


def test_two_worker_processes_and_a_killed_one(tmp_path):
    """A worker process SIGKILLed mid-run breaks the pool: a fresh one takes the retry, which resumes."""
    cfg = _cfg(strategies=["A", "B"])
    victim = plan_sweep(cfg).runs[1].run_id
    stages = Stages(prepare_data=fake_data, train_ladder=fake_ladder, build_cache=fake_cache,
                    train_student=functools.partial(fake_train, kill_at=(victim, 10)))
    lines = []
    summary = run_sweep(cfg, tmp_path, BackendConfig(workers=2), retries=1, stages=stages, log=lines.append)
    assert summary.counts == {"done": 12}
    assert any(x.startswith(f"retry 1/1 {victim}: worker died: ") for x in lines), lines
    assert len(list((tmp_path / "runs").glob("*/final.json"))) == 12
    metrics = (tmp_path / "runs" / victim / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in metrics] == [5, 10, 15, 20]
    assert json.loads((tmp_path / "runs" / victim / "config.json").read_text())["resume"] is True


def test_paired_runs_share_seed_and_subset(tmp_path):
    rec = Recorder()
    run_sweep(_cfg(), tmp_path, INLINE, stages=rec.stages())
    groups: dict[tuple, list[RunRequest]] = {}
    for req in rec.runs:
        s = req.spec
        groups.setdefault((s.student_aug, s.ipc, s.fraction, s.steps, s.seed), []).append(req)
    assert len(groups) == 4
    for (_, ipc, _, _, seed), reqs in groups.items():
        # A, B×2 teachers, C×2 teachers: five runs on one stream, differing only in targets.
        assert sorted((r.spec.strategy, r.spec.teacher_acc or 0) for r in reqs) == [
            ("A", 0), ("B", 0.3), ("B", 0.5), ("C", 0.3), ("C", 0.5)]
        assert {r.spec.seed for r in reqs} == {seed} and {r.spec.ipc for r in reqs} == {ipc}
        assert len({(r.data_dir, r.batch_size, r.arch, r.width) for r in reqs}) == 1


def test_paired_train_configs_differ_only_in_targets(tmp_path):
    """The real TrainConfigs of paired runs agree on every field but strategy, teacher, cache, out."""
    pytest.importorskip("fasttarget.train")
    from fasttarget.sweep import train_config

    rec = Recorder()
    run_sweep(_cfg(), tmp_path, INLINE, stages=rec.stages())
    groups: dict[tuple, list[dict]] = {}
    for req in rec.runs:
        s = req.spec
        cfg = train_config(req).to_json()
        assert cfg["seed"] == cfg["subset_seed"] == s.seed  # data order, augmentation and subset
        groups.setdefault((s.student_aug, s.ipc, s.steps, s.seed), []).append(cfg)
    for cfgs in groups.values():
        shared = [{k: v for k, v in c.items() if k not in ("strategy", "teacher", "cache", "out")} for c in cfgs]
        assert all(x == shared[0] for x in shared)
        assert len({c["strategy"] for c in cfgs}) == 3


@pytest.mark.parametrize("stream", [False, True])
def test_small_subsets_stream_or_cap_the_batch(tmp_path, stream):
    """IPC × classes below a few batches: by default the run keeps its batch and streams across
    epochs; with stream_small_subsets = false the batch is capped at the subset."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text(json.dumps({"splits": {"train": {"class_counts": [60, 70]}}}))
    data = json.loads(json.dumps(TINY))
    data["data"] = {"dir": str(tmp_path / "data")}
    data.setdefault("student", {}).update(batch_size=64, stream_small_subsets=stream)
    data["grid"][0].update(strategies=["A"], ipc=[10, 50])
    rec = Recorder()
    run_sweep(SweepConfig.from_dict(data), tmp_path, INLINE, stages=rec.stages())
    from fasttarget.sweep import train_config

    got = sorted({(r.spec.ipc, r.batch_size, r.stream, train_config(r).stream) for r in rec.runs})
    # 20 and 100 images; a batch of 64: 100 < 4 batches streams too
    assert got == ([(10, 64, True, True), (50, 64, True, True)] if stream else
                   [(10, 20, False, False), (50, 64, False, False)])
    index = ResultsIndex(tmp_path / "results.sqlite")
    assert index.meta("dataset_ipc") == 60 and index.meta("class_counts") == [60, 70]


def _cli(monkeypatch, *args: str) -> int:
    from fasttarget.cli import main

    monkeypatch.setattr(sys, "argv", ["fasttarget", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code


def test_cli_dry_run_and_bad_config(tmp_path, monkeypatch, capsys, sample_dir):
    cfg = tmp_path / "tiny.toml"  # a real converted dir (dry runs check it) and a small student (the time probe)
    cfg.write_text(f'name = "tiny"\n[data]\ndir = "{sample_dir}"\n[model]\nwidth = 0.125\n[student]\nbatch_size = 16\n'
                   '[[grid]]\nstrategies = ["A"]\nstudent_augs = ["stdaug"]\nsteps = [10]\neval_every = 5\nseeds = [0, 1]\n')
    assert _cli(monkeypatch, "sweep", str(cfg), "--out", str(tmp_path / "o"), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "runs: 2 (2 new)" in out and "estimate: " in out and not (tmp_path / "o").exists()
    cfg.write_text(cfg.read_text().replace('["A"]', '["Z"]'))
    assert _cli(monkeypatch, "sweep", str(cfg), "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "strategies must be" in err and "Traceback" not in err
    assert _cli(monkeypatch, "report", str(tmp_path / "nothing")) == 2
    assert "fasttarget sweep CONFIG --out" in capsys.readouterr().err


def test_a_teacher_file_gone_retrains_its_ladder(tmp_path):
    """rungs.json is only trusted while the checkpoints it names exist (a cleaned-up or half-copied sweep)."""
    run_sweep(_cfg(strategies=["B"], ipc=[10]), tmp_path, INLINE, stages=FAKES)
    (tmp_path / "teachers" / "stdaug" / "teacher-0.3.pt").unlink()
    for run in (tmp_path / "runs").glob("B_t30*"):
        (run / "final.json").unlink()
    rec = Recorder()
    summary = run_sweep(_cfg(strategies=["B"], ipc=[10]), tmp_path, INLINE, stages=rec.stages())
    assert summary.counts == {"done": 4} and len(rec.ladders) == 1
    assert sorted(r.spec.teacher_acc for r in rec.runs) == [0.3, 0.3]


# -- diagnostics (the real measurements are in test_diagnostics) -----------------------


def fake_score(req) -> None:
    req.out_file.parent.mkdir(parents=True, exist_ok=True)
    req.out_file.write_text(json.dumps({"teacher": str(req.teacher), "subsets": len(req.subsets)}))


def fake_diagnose(req) -> None:
    """Writes diagnostics.json as the real stage does, from what the request names."""
    (req.run_dir / "diagnostics.json").write_text(json.dumps({
        "target_entropy": {"A": 0.0, "B": 1.5, "C": 1.25}[req.strategy],
        "agreement": None if req.teacher_scores is None else 0.5, "agreement_teacher": req.teacher}))


def _diag_cfg(**overrides) -> SweepConfig:
    return dataclasses.replace(_cfg(**overrides), diagnostics=True)


@pytest.mark.parametrize("max_fleet", [1, 4])
def test_diagnostics_follow_every_run_solo_or_in_fleets(tmp_path, max_fleet):
    stages = dataclasses.replace(FAKES, score_teacher=fake_score, diagnose_run=fake_diagnose)
    summary = run_sweep(_diag_cfg(), tmp_path, INLINE, stages=stages, max_fleet=max_fleet)
    assert summary.counts == {"done": 20}
    index = ResultsIndex(tmp_path / "results.sqlite")
    for row in index.runs():
        assert row.target_entropy == {"A": 0.0, "B": 1.5, "C": 1.25}[row.strategy] and row.agreement == 0.5
        # A compares with the strongest teacher of its paired soft-target runs.
        assert row.agreement_teacher == (f"stdaug-t{row.teacher_acc * 100:g}" if row.teacher_acc else "stdaug-t50")
    diagnostics = index.units(kind="diagnostics")
    assert len(diagnostics) == 2 + 20 and {u.status for u in diagnostics} == {"done"}
    assert {p.name for p in (tmp_path / "diagnostics").iterdir()} == {"stdaug-t30.npz", "stdaug-t50.npz"}
    # B's entropy samples: one per subset (ipc 10 and 50 of seeds 0 and 1), for each teacher.
    assert json.loads((tmp_path / "diagnostics" / "stdaug-t50.npz").read_text())["subsets"] == 4


def test_finished_sweep_rerun_with_diagnostics_trains_nothing(tmp_path):
    run_sweep(_cfg(), tmp_path, INLINE, stages=FAKES)  # a sweep from before diagnostics
    rec = Recorder()
    stages = dataclasses.replace(rec.stages(), score_teacher=fake_score, diagnose_run=fake_diagnose)
    lines: list[str] = []
    summary = run_sweep(_diag_cfg(), tmp_path, INLINE, stages=stages, log=lines.append, max_fleet=4)
    assert summary.trained == () and summary.counts == {"done": 20}
    assert rec.runs == [] and rec.fleets == [] and rec.ladders == [] and rec.caches == []
    assert "22 units to run" in lines[0], lines[0]
    assert all(r.target_entropy is not None for r in ResultsIndex(tmp_path / "results.sqlite").runs())
    converted = dataclasses.replace(_diag_cfg(), data_source=None, data_dir=tmp_path / "data")
    assert "diagnostics: 0 of 22 units to run" in describe_plan(converted, tmp_path, estimate=False)


def test_a_failed_run_fails_its_diagnostics_only(tmp_path):
    stages = dataclasses.replace(FAKES, score_teacher=fake_score, diagnose_run=fake_diagnose)
    summary = run_sweep(_diag_cfg(student_augs=["stdaug", FAILING_AUG], strategies=["A"]), tmp_path, INLINE,
                        stages=stages)
    assert summary.counts == {"done": 4, "failed": 4}
    units = ResultsIndex(tmp_path / "results.sqlite").units(kind="diagnostics")
    assert sorted((u.status, FAILING_AUG in u.key) for u in units) == [("done", False)] * 4 + [("failed", True)] * 4
