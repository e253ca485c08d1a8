"""Sweeps as fleets: grouping, the same index as solo runs, resume after SIGKILL, blocked members,
CUDA fleet sizing, and fleet units on process workers.

The stages are ``test_sweep``'s fakes (``fake_fleet`` trains its members in lockstep and writes
every member's run-directory contract); the real ``train_fleet`` inside a sweep is
``test_sweep_smoke``'s, the Ray and SLURM backends ``test_sweep_backends``'.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path


from fasttarget.results import ResultsIndex
from fasttarget.sweep import BackendConfig, RunSpec, SweepConfig, describe_plan, group_fleets, plan_sweep, run_sweep
from fasttarget.sweep.plan import SweepLayout
from fasttarget.sweep.stages import FleetRequest, RunRequest, fleet_config, train_config
from fasttarget.sweep.units import FleetUnit, RunUnit, SweepContext, build_units

from test_sweep import FAILING_AUG, FAKES, INLINE, TINY, Recorder, _cfg

# TINY: per seed and IPC, one fleet key holds A + B×2 + C×2 for each step budget: 5 runs.


def rows(out: Path) -> dict[str, dict]:
    """Every field of every run row (but when it was written) and its evaluations: what ``report`` reads."""
    index = ResultsIndex(out / "results.sqlite")
    try:
        return {r.run_id: {**dataclasses.asdict(r), "updated_at": None,
                           "evals": [dataclasses.asdict(e) for e in index.evals(r.run_id)]}
                for r in index.runs()}
    finally:
        index.close()


def relative(req: RunRequest, root: Path) -> RunRequest:
    """A request with its paths relative to its sweep's root (to compare two sweeps')."""
    paths = {k: getattr(req, k) for k in ("run_dir", "data_dir", "teacher", "cache")}
    return dataclasses.replace(req, **{k: v and Path(v).relative_to(root) for k, v in paths.items()})


def test_runs_group_by_everything_but_targets():
    specs = [RunSpec("A", "stdaug", 100, 50, 0), RunSpec("B", "stdaug", 100, 50, 0, 0.3, "noaug"),
             RunSpec("C", "stdaug", 100, 50, 0, 0.3, "noaug"), RunSpec("A", "mixup", 100, 50, 0),
             RunSpec("A", "stdaug", 100, 50, 1), RunSpec("A", "stdaug", 200, 50, 0),
             RunSpec("A", "stdaug", 100, 25, 0), RunSpec("A", "stdaug", 100, 50, 0, ipc=10),
             RunSpec("B", "stdaug", 100, 50, 0, 0.5, "noaug")]
    fleets = group_fleets(specs, 8, lambda s: 128, lambda s: 0)
    assert [len(f) for f in fleets] == [4, 1, 1, 1, 1, 1]
    assert {s.strategy for s in fleets[0]} == {"A", "B", "C"}
    # Split evenly under the limit; the batch and the checkpoint step are part of the key.
    assert [len(f) for f in group_fleets(specs[:3] + specs[-1:], 3, lambda s: 128, lambda s: 0)] == [2, 2]
    assert [len(f) for f in group_fleets(specs[:3], 8, lambda s: 64 if s.strategy == "A" else 128,
                                         lambda s: 0)] == [1, 2]
    assert [len(f) for f in group_fleets(specs[:3], 8, lambda s: 128,
                                         lambda s: 50 if s.strategy == "C" else 0)] == [2, 1]


def test_fleet_sweep_writes_the_solo_sweeps_index(tmp_path):
    solo, fleet = Recorder(), Recorder()
    assert run_sweep(_cfg(), tmp_path / "solo", INLINE, stages=solo.stages()).counts == {"done": 20}
    summary = run_sweep(_cfg(), tmp_path / "fleet", INLINE, stages=fleet.stages(), max_fleet=4)
    assert summary.counts == {"done": 20} and len(summary.trained) == 20
    # 4 keys (2 seeds × 2 IPC) of 5 runs each, split 3 + 2 under a limit of 4: 8 fleets, no solo run.
    assert solo.fleets == [] and fleet.runs == []
    assert sorted(len(f.members) for f in fleet.fleets) == [2] * 4 + [3] * 4
    # Each member gets exactly the request its solo run got (same data, batch, teacher, cache, run_dir)…
    members = {r.spec.run_id: relative(r, tmp_path / "fleet") for f in fleet.fleets for r in f.members}
    assert members == {r.spec.run_id: relative(r, tmp_path / "solo") for r in solo.runs}
    # …and the index is the solo sweep's, row for row and field for field.
    assert rows(tmp_path / "fleet") == rows(tmp_path / "solo")
    index = ResultsIndex(tmp_path / "fleet" / "results.sqlite")
    assert {u.kind for u in index.units(status="done")} == {"data", "ladder", "cache", "fleet"}
    index.close()
    again = Recorder()
    assert run_sweep(_cfg(), tmp_path / "fleet", INLINE, stages=again.stages(), max_fleet=4).trained == ()
    assert again.fleets == [] and again.runs == []


def test_fleet_config_is_the_members_solo_configs(tmp_path):
    cfg = _cfg(ipc=[10], steps=[20])
    out = tmp_path / "out"
    run_sweep(cfg, out, INLINE, stages=FAKES)  # ladders and caches, so requests can be built
    ctx = SweepContext(cfg=cfg, plan=plan_sweep(cfg), layout=SweepLayout(out), stages=FAKES)
    for unit in (u for u in build_units(ctx) if isinstance(u, RunUnit)):
        (ctx.layout.run_dir(unit.spec) / "final.json").unlink()
    fleets = [u for u in build_units(ctx, 8) if isinstance(u, FleetUnit)]
    assert [len(f.members) for f in fleets] == [5, 5]
    req = fleets[0].request(ctx)
    fleet = fleet_config(req)
    assert fleet.base.out == out / "fleets" / fleets[0].fleet_id
    for member, run in zip(fleet.members, req.members):
        solo = dataclasses.replace(train_config(run), resume=fleet.base.resume)
        assert fleet.member_config(member) == solo and member.dir == out / "runs" / run.spec.run_id


def test_killed_fleet_resumes_its_members_and_skips_finished_ones(tmp_path):
    cfg = _cfg()
    script = textwrap.dedent(f"""
        import functools, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import dataclasses, test_sweep as t
        from fasttarget.sweep import run_sweep
        calls = []
        def dying(req):
            calls.append(req)
            t.fake_fleet(req, kill_at=10 if len(calls) == 3 else None)  # the third fleet dies at step 10
        run_sweep(t._cfg(), {str(tmp_path)!r}, t.INLINE, stages=dataclasses.replace(t.FAKES, train_fleet=dying),
                  max_fleet=4)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    index = ResultsIndex(tmp_path / "results.sqlite")
    before = {r.run_id: r.status for r in index.runs()}
    index.close()
    ctx = SweepContext(cfg=cfg, plan=plan_sweep(cfg), layout=SweepLayout(tmp_path / "unused"), stages=FAKES)
    planned = [{m.spec.run_id for m in u.members} for u in build_units(ctx, 4) if isinstance(u, FleetUnit)]
    assert {k for k, s in before.items() if s == "done"} == planned[0] | planned[1]
    killed = {k for k, s in before.items() if s == "running"}
    assert killed == planned[2]

    rec = Recorder()
    summary = run_sweep(cfg, tmp_path, INLINE, stages=rec.stages(), max_fleet=4)
    assert summary.counts == {"done": 20}
    resumed = [f for f in rec.fleets if any(m.resume for m in f.members)]
    assert len(resumed) == 1 and {m.spec.run_id for m in resumed[0].members} == killed
    assert all(m.resume for m in resumed[0].members)
    assert not {m.spec.run_id for f in rec.fleets for m in f.members} & {k for k, s in before.items() if s == "done"}
    for run_id in killed:
        steps = [json.loads(x)["step"] for x in (tmp_path / "runs" / run_id / "metrics.jsonl").read_text().splitlines()]
        assert steps == [5, 10, 15, 20]


def test_member_without_teacher_fails_alone(tmp_path):
    cfg = _cfg(teacher_accuracies=[0.3, 0.7], ipc=[10], seeds=[0], steps=[20])
    rec = Recorder()
    summary = run_sweep(cfg, tmp_path, INLINE, stages=rec.stages(), max_fleet=8)
    assert summary.counts == {"done": 3, "failed": 2}
    assert all("teacher stdaug 70% was not reached" in e for e in summary.failed.values())
    assert [sorted(m.spec.strategy for m in f.members) for f in rec.fleets] == [["A", "B", "C"]]
    again = Recorder()
    assert run_sweep(cfg, tmp_path, INLINE, stages=again.stages(), max_fleet=8).counts == {"done": 3, "failed": 2}
    assert again.fleets == [] and again.runs == []


def test_failing_fleet_fails_its_members_with_the_error(tmp_path):
    cfg = _cfg(student_augs=["stdaug", FAILING_AUG], strategies=["A", "B"], ipc=[10], seeds=[0], steps=[20])
    summary = run_sweep(cfg, tmp_path, INLINE, stages=FAKES, max_fleet=8)
    assert summary.counts == {"done": 3, "failed": 3}
    assert set(summary.failed.values()) == {"RuntimeError: synthetic failure"}
    assert list((tmp_path / "fleets").glob("*/error.txt"))


def test_two_worker_processes_run_fleets(tmp_path):
    summary = run_sweep(_cfg(), tmp_path / "procs", BackendConfig(workers=2), stages=FAKES, max_fleet=4)
    assert summary.counts == {"done": 20}
    run_sweep(_cfg(), tmp_path / "solo", INLINE, stages=FAKES)
    assert rows(tmp_path / "procs") == rows(tmp_path / "solo")


def test_cuda_fleets_are_sized_from_free_memory(tmp_path, monkeypatch):
    import fasttarget.sweep.run as sweep_run
    from fasttarget.fused import member_bytes
    from fasttarget.models import ModelConfig

    data = json.loads(json.dumps(TINY))
    data.update(device="cuda", model={"width": 0.125})
    cfg = SweepConfig.from_dict(data)
    ctx = SweepContext(cfg=cfg, plan=plan_sweep(cfg), layout=SweepLayout(tmp_path), stages=FAKES)
    # Before conversion the estimate assumes 224 px and 1000 classes; after, the dataset's own.
    need_224 = member_bytes(ModelConfig(width=0.125, num_classes=1000, image_size=224), 128)
    monkeypatch.setattr(sweep_run, "local_free_memory", lambda: int(10.5 * need_224 / 0.7))
    assert sweep_run.sweep_fleet_size(ctx, None) == 10
    assert sweep_run.sweep_fleet_size(ctx, 4) == 4 and sweep_run.sweep_fleet_size(ctx, 1) == 1
    monkeypatch.setattr(sweep_run, "local_free_memory", lambda: 1)
    assert sweep_run.sweep_fleet_size(ctx, None) == 1  # not even one fits: solo runs
    monkeypatch.setattr(sweep_run, "local_free_memory", lambda: None)
    assert sweep_run.sweep_fleet_size(ctx, None) == 32 and sweep_run.sweep_fleet_size(ctx, 6) == 6
    # CIFAR's 32 px with its stride-1 stem still needs less than the 224-px ImageNet-stem default.
    assert member_bytes(ModelConfig(width=0.125), 128) < need_224


def test_dry_run_shows_the_fleets(tmp_path):
    cfg = dataclasses.replace(_cfg(), data_source=tmp_path)  # the dry run checks that the source exists
    text = describe_plan(cfg, tmp_path / "out", max_fleet=4, estimate=False)
    assert "20 new" in text and ", 8 fleets" in text and text.count("(fleet ") == 20


def test_cli_refuses_max_fleet_zero(user_error, tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('name = "tiny"\n[data]\ndir = "d"\n[[grid]]\nstrategies = ["A"]\nstudent_augs = ["stdaug"]\n'
                   'steps = [10]\neval_every = 5\nseeds = [0]\n')
    user_error("a fleet of no runs", "sweep", cfg, "--out", tmp_path / "o", "--max-fleet", "0",
               expect="--max-fleet must be ≥ 1")


def test_fleet_request_needs_no_pickled_state(tmp_path):
    """What process, Ray and SLURM workers receive: a plain frozen dataclass of run requests."""
    import pickle

    run = RunRequest(spec=RunSpec("A", "stdaug", 10, 5, 0), run_dir=tmp_path / "r", data_dir=tmp_path, arch="resnet18",
                     width=0.125, batch_size=64, temperature=2.0, device="cpu", compile=None, resume=False)
    req = FleetRequest(members=(run,), fleet_dir=tmp_path / "f")
    assert pickle.loads(pickle.dumps(req)) == req
