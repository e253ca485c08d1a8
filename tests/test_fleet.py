"""Fleet training (``fasttarget train --member …``): members' run directories against solo runs,
a NaN member stopped alone, kill-and-resume equality, and the CLI's bad --member inputs."""

import json
from pathlib import Path

import pytest
import torch

from fasttarget.errors import UserError
from fasttarget.fleet import FleetConfig, Member, parse_members, train_fleet
from fasttarget.models import CheckpointInfo, ModelConfig, build_classifier, save_classifier
from fasttarget.dataset import DatasetMeta
from fasttarget.train import TERMS, TrainConfig, build_optimizer, build_run_student, train

QUICK = ["--ipc", "20", "--batch-size", "32", "--width", "0.125", "--device", "cpu", "--no-progress"]
COMMON = dict(aug="stdaug+mixup", steps=6, eval_every=3, ipc=20, batch_size=32, width=0.125, device="cpu",
              progress=False)
TIMING = ("img_per_s", "wall_s")
# On CPU a fleet runs each member through the solo network's own kernels (fused._members_forward),
# so its members train bit for bit as their solo runs: every metric but the timing is equal.


def make_teacher(path: Path, meta, seed: int = 1) -> Path:
    torch.manual_seed(seed)
    net = build_classifier(ModelConfig(width=0.125, num_classes=meta.num_classes))
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_classifier(path, net, CheckpointInfo(net.config, 0.1, meta.fingerprint, meta.mean, meta.std))


def metrics(run: Path, drop=TIMING) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


def files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*")}


@pytest.fixture(scope="module")
def inputs(small_sample_dir, tmp_path_factory):
    """A teacher and its Strategy C cache for the small sample (640 train images scored once)."""
    from fasttarget.cache import CacheBuildConfig, build_cache

    root = tmp_path_factory.mktemp("fleet-inputs")
    teacher = make_teacher(root / "t30.pt", DatasetMeta.load(small_sample_dir))
    cache = build_cache(CacheBuildConfig(data=small_sample_dir, teacher=teacher, out=root / "t30.h5", device="cpu",
                                         progress=False)).path
    return teacher, cache


def test_member_names_are_given_or_made_from_strategy_and_file():
    members = parse_members(["A", "B=t/t30.pt", "C=c/t30.h5", "C=t/t30.pt", "A", "mine=B=t/t50.pt"],
                            check_files=False)
    assert [m.name for m in members] == ["A", "B-t30", "C-t30", "C-t30-2", "A-2", "mine"]
    assert members[2] == Member("C-t30", "C", None, Path("c/t30.h5"))  # .h5: a cache
    assert members[3] == Member("C-t30-2", "C", Path("t/t30.pt"), None)  # otherwise the teacher of one


def test_members_write_their_solo_run_directories_and_train_like_solo_runs(small_sample_dir, inputs, tmp_path,
                                                                           one_thread):
    teacher, cache = inputs
    base = TrainConfig(data=small_sample_dir, out=tmp_path / "fleet", **COMMON)
    members = parse_members(["A", f"B={teacher}", f"C={cache}"])
    finals = train_fleet(FleetConfig(base, members))
    assert json.loads((tmp_path / "fleet" / "fleet.json").read_text())["members"] == ["A", "B-t30", "C-t30"]

    for member in members:
        fleet_run, solo_run = tmp_path / "fleet" / member.name, tmp_path / "solo" / member.name
        solo_final = train(TrainConfig(data=small_sample_dir, out=solo_run, strategy=member.strategy,
                                       teacher=member.teacher, cache=member.cache, **COMMON))
        assert files(fleet_run) == files(solo_run) == {"config.json", "metrics.jsonl", "final.json", "final.pt",
                                                       "checkpoints", "checkpoints/last.pt"}
        fleet_config, solo_config = (json.loads((r / "config.json").read_text()) for r in (fleet_run, solo_run))
        assert fleet_config.pop("out") == str(fleet_run) and solo_config.pop("out") == str(solo_run)
        assert fleet_config == solo_config

        fleet_rows, solo_rows = metrics(fleet_run, drop=()), metrics(solo_run, drop=())
        assert [set(r) for r in fleet_rows] == [set(r) for r in solo_rows]
        assert [r["step"] for r in fleet_rows] == [3, 6]
        assert [r | dict.fromkeys(TIMING) for r in fleet_rows] == [r | dict.fromkeys(TIMING) for r in solo_rows]

        final = finals[member.name]
        assert set(final) == set(solo_final) and final["status"] == "done" and final["step"] == 6
        assert final["test_acc_h"] == fleet_rows[-1]["test_acc_h"]
        fleet_ckpt, solo_ckpt = (torch.load(r / "checkpoints" / "last.pt", weights_only=False)
                                 for r in (fleet_run, solo_run))
        assert fleet_ckpt.keys() == solo_ckpt.keys() and fleet_ckpt["loader"] == solo_ckpt["loader"]
        assert {k: v.shape for k, v in fleet_ckpt["student"].items()} == {
            k: v.shape for k, v in solo_ckpt["student"].items()}
        assert fleet_ckpt["config"] | {"out": None} == solo_ckpt["config"] | {"out": None}
        # A member's checkpoint fits its solo run: the solo student and AdamW load it strictly.
        solo = build_run_student(TrainConfig(data=small_sample_dir, out=solo_run, **COMMON),
                                 DatasetMeta.load(small_sample_dir))
        solo.load_state_dict(fleet_ckpt["student"])
        build_optimizer(solo, 1e-3, 0.01).load_state_dict(fleet_ckpt["optimizer"])
        assert fleet_ckpt["optimizer"]["state"].keys() == solo_ckpt["optimizer"]["state"].keys()

    with pytest.raises(UserError, match="already holds a run"):
        train_fleet(FleetConfig(base, members))
    with pytest.raises(UserError, match="holds a fleet of members A, B-t30, C-t30, not A, C-t30"):
        train_fleet(FleetConfig(TrainConfig(data=small_sample_dir, out=tmp_path / "fleet", resume=True, **COMMON),
                                parse_members(["A", f"C={cache}"])))
    assert train_fleet(FleetConfig(TrainConfig(data=small_sample_dir, out=tmp_path / "fleet", resume=True, **COMMON),
                                   members)) == finals


class _NanFrom:
    """A target provider that turns NaN from its ``first``-th batch on (a broken cache, say)."""

    def __init__(self, provider, first: int):
        self.provider, self.first, self.calls = provider, first, 0
        self.num_classes = provider.num_classes

    def __call__(self, batch):
        self.calls += 1
        targets = self.provider(batch)
        return targets if self.calls < self.first else torch.full_like(targets, float("nan"))


def test_fused_b_teachers_score_as_the_solo_teachers(small_sample_dir, inputs, tmp_path, one_thread):
    from fasttarget.fleet import FleetTargets, fuse_teachers
    from fasttarget.loader import build_loader
    from fasttarget.train import open_run, train_loader_config

    teacher, cache = inputs
    meta = DatasetMeta.load(small_sample_dir)
    other = make_teacher(tmp_path / "t50.pt", meta, seed=2)
    fleet = FleetConfig(TrainConfig(data=small_sample_dir, out=tmp_path / "fleet", **COMMON),
                        parse_members([f"B={teacher}", "A", f"B={other}", f"C={cache}"]))
    runs = [open_run(fleet.member_config(m), torch.device("cpu"), False, 0, meta) for m in fleet.members]
    groups = fuse_teachers(runs, meta, torch.device("cpu"), compiled=False)
    assert [g.members for g in groups] == [(0, 2)]
    unfused = FleetTargets([run.targets for run in runs])
    fused = FleetTargets([run.targets for run in runs], groups)
    loader = build_loader(train_loader_config(small_sample_dir, 32, "stdaug+mixup", 0, torch.device("cpu")))
    for _, batch in zip(range(3), loader):
        expected, got = unfused(batch), fused(batch)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert not torch.equal(got[0], got[2])  # two teachers, two sets of targets
    # A lone B member keeps its own provider.
    assert fuse_teachers(runs[:2], meta, torch.device("cpu"), compiled=False) == []


def test_a_member_whose_loss_turns_nan_is_stopped_and_marked_failed_alone(small_sample_dir, inputs, tmp_path,
                                                                         monkeypatch, one_thread):
    import fasttarget.fleet as fleet

    _, cache = inputs
    specs = ["A", f"bad=C={cache}", f"C={cache}"]
    healthy = train_fleet(FleetConfig(TrainConfig(data=small_sample_dir, out=tmp_path / "healthy", **COMMON),
                                      parse_members(specs)))
    opened = fleet.open_run

    def open_run_breaking_bad(cfg, *args):
        run = opened(cfg, *args)
        if cfg.out.name == "bad":
            run.targets = _NanFrom(run.targets, first=5)
        return run

    monkeypatch.setattr(fleet, "open_run", open_run_breaking_bad)
    broken = train_fleet(FleetConfig(TrainConfig(data=small_sample_dir, out=tmp_path / "broken", **COMMON),
                                     parse_members(specs)))
    assert broken["bad"]["status"] == "failed" and broken["bad"]["step"] == 5
    assert "non-finite at step 5" in broken["bad"]["error"]
    assert json.loads((tmp_path / "broken" / "bad" / "final.json").read_text()) == broken["bad"]
    assert [r["step"] for r in metrics(tmp_path / "broken" / "bad")] == [3]  # evaluations before the failure
    assert broken["bad"]["test_acc_h"] == metrics(tmp_path / "broken" / "bad")[0]["test_acc_h"]
    for name in ("A", "C-t30"):  # the others bit for bit as in the fleet where nothing failed
        assert metrics(tmp_path / "broken" / name) == metrics(tmp_path / "healthy" / name)
        assert broken[name]["status"] == "done" and broken[name]["test_acc_h"] == healthy[name]["test_acc_h"]
    # Resumed, the failed member stays failed and the finished fleet has nothing left to do.
    monkeypatch.setattr(fleet, "open_run", opened)
    assert train_fleet(FleetConfig(TrainConfig(data=small_sample_dir, out=tmp_path / "broken", resume=True, **COMMON),
                                   parse_members(specs))) == broken


def test_killed_fleet_resumes_to_the_same_metrics(small_sample_dir, inputs, kill_and_resume):
    """SIGKILL a fleet past its first checkpoint, resume it, and compare with an uninterrupted fleet."""
    _, cache = inputs
    args = ["train", "--data", small_sample_dir, "--member", "A", "--member", f"C={cache}", "--aug", "stdaug+mixup",
            "--steps", "8", "--eval-every", "2", "--checkpoint-every", "4", "--seed", "3", *QUICK]
    # Killed after the evaluation that follows the first checkpoint: that one is dropped and redone.
    killed, straight = kill_and_resume(args, watch="C-t30", rows=3)
    for name in ("A", "C-t30"):
        assert len(metrics(straight / name)) == 4
        assert metrics(killed / name) == metrics(straight / name)


@pytest.mark.parametrize("what, member_args, expect", [
    ("--member with an unknown strategy", ["--member", "D"], "--member 'D': unknown strategy 'D'"),
    ("--member B without a teacher", ["--member", "B"], "strategy B needs a teacher checkpoint"),
    ("--member A with a file", ["--member", "A=t.pt"], "strategy A trains on one-hot labels and takes no file"),
    ("--member with a missing file", ["--member", "B=missing.pt"], "missing.pt does not exist"),
    ("--member name given twice", ["--member", "x=A", "--member", "x=A"], "--member name 'x' is given twice"),
    ("--member name with a slash", ["--member", "a/b=A"], "is not a plain directory name"),
    ("--member with too many '='", ["--member", "a=B=t.pt=x"], "is not [NAME=]STRATEGY[=FILE]"),
    ("--member with --strategy", ["--member", "A", "--strategy", "A"], "drop --strategy/--teacher/--cache"),
    ("--member with an architecture that does not fuse", ["--member", "A", "--arch", "vit_s"],
     "--arch vit_s does not fuse into a fleet"),
    ("neither --strategy nor --member", [], "pass --strategy A|B|C (one run) or --member"),
])
def test_bad_member_inputs_are_one_line_errors(user_error, sample_dir, tmp_path, what, member_args, expect):
    user_error(what, "train", "--data", sample_dir, "--out", tmp_path / "fleet", *member_args, *QUICK, expect=expect)
    assert not (tmp_path / "fleet").exists()


def test_throughput_stops_counting_time_at_pause(monkeypatch):
    """The img/s of a metrics row excludes the evaluation after the pause (it was counted twice)."""
    import fasttarget.train as train_module
    from fasttarget.train import Throughput

    now = iter([0.0, 10.0, 30.0])  # start, pause after 10 s of training, rate() read 20 s later
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: next(now))
    throughput = Throughput(torch.device("cpu"))
    throughput.images = 1000
    throughput.pause()
    assert throughput.rate() == pytest.approx(100.0)


def test_members_train_as_their_solo_runs_for_hundreds_of_steps(small_sample_dir, inputs, tmp_path, one_thread):
    """Issue 12's equivalence over a few hundred float32 steps: loss terms at every evaluation within
    1e-4 relative and final accuracies within 0.5 points of the solo runs (on CPU both hold exactly).

    A fused fleet whose kernels sum in another order than the solo ones drifts from its solo runs
    by points of accuracy within a few hundred steps (measured on the sample: member A 3.4 points
    apart after 300 steps of batch 32), which is why the CPU fleet runs the solo kernels; this test
    catches a return of that drift. Batch 8 keeps it to seconds.
    """
    _, cache = inputs
    run = dict(aug="stdaug", steps=200, eval_every=200, batch_size=8, width=0.125, device="cpu",
               progress=False, seed=1)
    members = parse_members(["A", f"C={cache}"])
    finals = train_fleet(FleetConfig(TrainConfig(data=small_sample_dir, out=tmp_path / "fleet", **run), members))
    for member in members[:1]:  # C's member trains beside it; its solo equality is the 6-step test's
        solo = train(TrainConfig(data=small_sample_dir, out=tmp_path / member.name, strategy=member.strategy,
                                 cache=member.cache, **run))
        fleet_rows, solo_rows = metrics(tmp_path / "fleet" / member.name), metrics(tmp_path / member.name)
        assert [r["step"] for r in fleet_rows] == [r["step"] for r in solo_rows] == [200]
        for fleet_row, solo_row in zip(fleet_rows, solo_rows):
            assert [fleet_row[k] for k in TERMS] == pytest.approx([solo_row[k] for k in TERMS], rel=1e-4)
        assert abs(finals[member.name]["test_acc_h"] - solo["test_acc_h"]) <= 0.005
        assert fleet_rows == solo_rows  # and, on CPU, bit for bit
    assert finals["A"]["test_acc_h"] > 0.15  # the members did train (10 classes: chance is 0.10)
