"""The sweep's dependency graph and retries, driven by a simulated executor.

:class:`SimExecutor` runs each job inline when its simulated time comes (durations chosen
per unit), with a fixed number of slots, so the order in which units start and end is that of
a real cluster and fully deterministic: the tests check that a unit starts as soon as what it
needs exists (no phases), that a failing unit is retried and then recorded while the rest
goes on, and what a failure blocks.
"""

from __future__ import annotations

import functools
import json


from fasttarget.results import ResultsIndex
from fasttarget.sweep import Executor, Stages, SweepConfig, run_sweep
from fasttarget.sweep.executors import Outcome, run_task
from fasttarget.sweep.graph import UnitGraph

from test_sweep import FAKES, INLINE, fake_acc, fake_cache, fake_data, fake_ladder, fake_train


class SimExecutor(Executor):
    """``slots`` workers in simulated time: a task of key ``k`` takes ``durations(k)`` time units."""

    def __init__(self, slots: int, durations) -> None:
        self.slots = slots
        self._durations = durations
        self.now = 0.0
        self.events: list[tuple[float, str, str]] = []  # (time, "start"/"end", key)
        self._running: list[tuple[float, int, object]] = []
        self._n = 0
        self.closed = False

    def submit(self, tasks) -> None:
        for t in tasks:
            self.events.append((self.now, "start", t.key))
            self._running.append((self.now + self._durations(t.key), self._n, t))
            self._n += 1

    def wait(self) -> list[Outcome]:
        self._running.sort(key=lambda x: (x[0], x[1]))
        end, _, task = self._running.pop(0)
        self.now = end
        self.events.append((end, "end", task.key))
        ok, value = run_task(task.job, task.request, task.resources.threads)
        return [Outcome(task.key, ok, result=value if ok else None, error=None if ok else value)]

    def close(self) -> None:
        self.closed = True

    def time(self, what: str, key: str) -> float:
        return next(t for t, w, k in self.events if w == what and k == key)


def _two_ladder_cfg(**grid) -> SweepConfig:
    return SweepConfig.from_dict({
        "name": "graph", "data": {"source": "fake"}, "student": {"eval_every": 5, "seeds": [0]},
        "report": {"diagnostics": False},  # the fakes write no student model (see test_diagnostics)
        "grid": [{"name": "g", "strategies": ["A", "B", "C"], "teacher_accuracies": [0.3],
                  "teacher_augs": ["color", "flip"], "student_augs": ["stdaug"], "steps": [10], **grid}],
    })


def _durations(key: str) -> float:
    return {"ladder:color": 100.0, "ladder:flip": 10.0}.get(key, 1.0)


def test_runs_start_when_their_teacher_exists_not_after_every_ladder(tmp_path):
    sim = SimExecutor(slots=3, durations=_durations)
    summary = run_sweep(_two_ladder_cfg(), tmp_path, sim, stages=FAKES)
    assert summary.counts == {"done": 5} and sim.closed
    # Both ladders train at once, then the fast (flip) ladder's cache and runs go on while the slow (color) one trains.
    assert sim.time("start", "ladder:color") == sim.time("start", "ladder:flip")
    slow_done = sim.time("end", "ladder:color")
    assert sim.time("start", "cache:flip-t30") < slow_done
    assert sim.time("end", "run:B_t30-flip_stdaug_full_steps10_ev5_seed0") < slow_done
    assert sim.time("end", "run:C_t30-flip_stdaug_full_steps10_ev5_seed0") < slow_done
    assert sim.time("end", "run:A_none_stdaug_full_steps10_ev5_seed0") < slow_done
    # ... and the slow ladder's runs never start before it ends, the C run not before its cache.
    assert sim.time("start", "run:B_t30-color_stdaug_full_steps10_ev5_seed0") >= slow_done
    assert sim.time("start", "run:C_t30-color_stdaug_full_steps10_ev5_seed0") >= sim.time("end", "cache:color-t30")


def test_ready_units_never_exceed_the_slots(tmp_path):
    sim = SimExecutor(slots=2, durations=_durations)
    run_sweep(_two_ladder_cfg(), tmp_path, sim, stages=FAKES)
    running = peak = 0
    for _, what, _ in sorted(sim.events, key=lambda e: (e[0], e[1] == "start")):
        running += 1 if what == "start" else -1
        peak = max(peak, running)
    assert peak == 2


def flaky_train(req, fail_times: int) -> None:
    """Seed 1 dies after its step-5 checkpoint on its first ``fail_times`` attempts, like a lost worker."""
    marker = req.run_dir.parent / f"{req.spec.run_id}.attempts"
    attempts = int(marker.read_text()) if marker.is_file() else 0
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(attempts + 1))
    if req.spec.seed == 1 and attempts < fail_times:
        (req.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (req.run_dir / "metrics.jsonl").write_text(json.dumps({"step": 5, "test_acc_h": fake_acc(req, 5) * 100}) + "\n")
        (req.run_dir / "checkpoints" / "last.pt").write_text("5")
        raise RuntimeError(f"lost worker on attempt {attempts + 1}")
    fake_train(req)


def _seeds_cfg() -> SweepConfig:
    return SweepConfig.from_dict({
        "name": "retries", "data": {"source": "fake"}, "report": {"diagnostics": False},
        "grid": [{"strategies": ["A"], "student_augs": ["stdaug"], "steps": [10], "eval_every": 5, "seeds": [0, 1]}],
    })


def _stages(train) -> Stages:
    return Stages(prepare_data=fake_data, train_ladder=fake_ladder, build_cache=fake_cache, train_student=train)


def test_a_failing_unit_is_retried_and_resumes_from_its_checkpoint(tmp_path):
    lines = []
    summary = run_sweep(_seeds_cfg(), tmp_path, INLINE, retries=2,
                        stages=_stages(functools.partial(flaky_train, fail_times=2)), log=lines.append)
    assert summary.counts == {"done": 2}
    victim = "A_none_stdaug_full_steps10_ev5_seed1"
    assert [x for x in lines if x.startswith("retry")] == [
        f"retry 1/2 {victim}: RuntimeError: lost worker on attempt 1",
        f"retry 2/2 {victim}: RuntimeError: lost worker on attempt 2"]
    index = ResultsIndex(tmp_path / "results.sqlite")
    assert index.units(key=f"run:{victim}")[0].attempts == 3
    assert json.loads((tmp_path / "runs" / victim / "config.json").read_text())["resume"] is True
    # Resumed, not restarted: one evaluation per step, the same numbers as an unbroken run.
    row = index.runs(run_id=victim)[0]
    assert [e.step for e in index.evals(victim)] == [5, 10]
    clean = run_sweep(_seeds_cfg(), tmp_path / "clean", INLINE, stages=FAKES)
    assert clean.counts == {"done": 2}
    assert row.final_acc == ResultsIndex(tmp_path / "clean" / "results.sqlite").runs(run_id=victim)[0].final_acc


def test_a_unit_failing_every_retry_is_recorded_and_the_rest_finish(tmp_path):
    summary = run_sweep(_seeds_cfg(), tmp_path, INLINE, retries=1,
                        stages=_stages(functools.partial(flaky_train, fail_times=5)))
    victim = "A_none_stdaug_full_steps10_ev5_seed1"
    assert summary.counts == {"done": 1, "failed": 1}
    assert summary.failed == {victim: "RuntimeError: lost worker on attempt 2"}
    index = ResultsIndex(tmp_path / "results.sqlite")
    unit = index.units(key=f"run:{victim}")[0]
    assert (unit.status, unit.attempts) == ("failed", 2)
    assert "Traceback" in (tmp_path / "runs" / victim / "error.txt").read_text()


def broken_ladder(req):
    if req.aug == "color":
        raise FileNotFoundError(f"no teacher checkpoint under {req.out_dir}")
    return fake_ladder(req)


def test_a_failed_ladder_fails_its_runs_only(tmp_path):
    sim = SimExecutor(slots=2, durations=_durations)
    stages = Stages(prepare_data=fake_data, train_ladder=broken_ladder, build_cache=fake_cache, train_student=fake_train)
    summary = run_sweep(_two_ladder_cfg(), tmp_path, sim, retries=2, stages=stages)
    assert summary.counts == {"done": 3, "failed": 2}
    assert set(summary.failed) == {"B_t30-color_stdaug_full_steps10_ev5_seed0", "C_t30-color_stdaug_full_steps10_ev5_seed0"}
    assert all(e.startswith("teacher ladder color (30%) failed: FileNotFoundError: no teacher checkpoint")
               for e in summary.failed.values())
    index = ResultsIndex(tmp_path / "results.sqlite")
    ladder = index.units(key="ladder:color")[0]
    assert (ladder.status, ladder.attempts) == ("failed", 3)
    assert index.units(key="cache:color-t30")[0].status == "failed"
    assert [k for _, w, k in sim.events if w == "start"].count("ladder:color") == 3


def test_progress_line_per_unit_and_a_bar(tmp_path):
    lines, bar = [], []
    run_sweep(_two_ladder_cfg(), tmp_path, SimExecutor(2, _durations), stages=FAKES, log=lines.append,
              progress=lambda done, total: bar.append((done, total)))
    units = [x for x in lines if x.startswith("[")]
    # data, two ladders, two caches, five runs
    assert len(units) == 10 and bar == [(n, 10) for n in range(11)]
    assert units[-1].startswith("[10/10] done") and "ETA 0:00" in units[-1]
    assert any(x.startswith("[") and "teacher ladder flip (30%)  reached 30.4%" in x for x in units)
    assert any("A_none_stdaug_full_steps10_ev5_seed0  acc " in x for x in units)


def test_graph_blocks_transitively():
    g = UnitGraph({"data": (), "ladder": ("data",), "cache": ("ladder",), "run": ("cache", "data"), "other": ()})
    assert g.ready() == ["data", "other"]
    g.start("data")
    assert sorted(g.fail("data")) == ["cache", "ladder", "run"]
    assert g.ready() == ["other"] and not g.settled
