"""The teacher ladder: first-crossing saves, recorded accuracies, missed targets, the CLI."""

import json
import math

import pytest
import torch

from fasttarget.errors import UserError
from fasttarget.models import load_classifier
from fasttarget.teacher import Ladder, LadderConfig, teacher_filename, train_ladder
from fasttarget.train import evaluate, eval_loader_config


def test_ladder_saves_each_target_at_its_first_crossing():
    ladder = Ladder([0.5, 0.3, 0.7], eval_every=10, tolerance=0.01)
    sequence = [0.12, 0.26, 0.31, 0.28, 0.45, 0.52, 0.49, 0.74, 0.8]
    saved = {}
    for step, accuracy in enumerate(sequence, start=1):
        for target in ladder.record(step, accuracy):
            saved[target] = (step, accuracy)
    assert saved == {0.3: (3, 0.31), 0.5: (6, 0.52), 0.7: (8, 0.74)}
    assert ladder.done


def test_one_evaluation_can_clear_several_targets():
    ladder = Ladder([0.3, 0.5, 0.7], eval_every=20, tolerance=0.01, chance=0.1)
    assert ladder.record(40, 0.55) == [0.3, 0.5]
    assert ladder.pending == [0.7]
    assert not ladder.done


def test_scheduling_follows_the_slope_within_its_bounds():
    ladder = Ladder([0.5], eval_every=1000, tolerance=0.01, chance=0.1, first_eval=10)
    assert ladder.steps_to_next_eval() == 10  # no slope yet
    ladder.record(10, 0.11)  # slow so far: at most twice the last interval
    assert ladder.steps_to_next_eval() == 20
    ladder.record(100, 0.2)  # far (29 points to go at ~0.1/step): halfway there
    far = (0.5 - 0.2) / 2 / _fit([(0, 0.1), (10, 0.11), (100, 0.2)])
    assert ladder.steps_to_next_eval() == int(far) and 140 < far < 160
    ladder.record(300, 0.48)  # within three tolerances: half a point of predicted gain
    near = 0.005 / _fit([(10, 0.11), (100, 0.2), (300, 0.48)])
    assert ladder.steps_to_next_eval() == int(near) and 2 < near < 5
    dipped = Ladder([0.32], eval_every=1000, tolerance=0.01, chance=0.1)
    for step, accuracy in [(10, 0.3), (20, 0.25), (30, 0.2)]:  # jitter: the recent fit is negative,
        dipped.record(step, accuracy)                           # the slope since the start decides
    assert dipped.steps_to_next_eval() == int((0.32 - 0.2) / 2 / ((0.2 - 0.1) / 30)) < 20
    flat = Ladder([0.9], eval_every=100, tolerance=0.01, chance=0.1)
    flat.record(10, 0.1)
    assert flat.steps_to_next_eval() == 100  # no progress at all: the longest interval
    fast = Ladder([0.9], eval_every=100, tolerance=0.01, chance=0.1)
    fast.record(10, 0.895)
    assert fast.steps_to_next_eval() == 1  # at least one step


def _fit(points):
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


@pytest.mark.parametrize("curve", ["saturating", "slow start"])
def test_scheduled_evaluations_land_each_target_within_the_tolerance(curve):
    # Noise-free learning curves of both shapes a training run shows: a saturating one, and
    # one that starts slowly and speeds up (what narrow networks do in their first epoch).
    def accuracy(step):
        if curve == "saturating":
            return 0.1 + 0.6 * (1 - math.exp(-step / 400))
        return 0.1 + 0.6 / (1 + math.exp(-(step - 300) / 120))

    targets = [0.3, 0.45, 0.6]
    ladder = Ladder(targets, eval_every=200, tolerance=0.01, chance=0.1)
    saved, evaluations, step = {}, 0, 0
    while not ladder.done and step < 5000:
        step += ladder.steps_to_next_eval()
        evaluations += 1
        for target in ladder.record(step, accuracy(step)):
            saved[target] = accuracy(step)
    assert set(saved) == set(targets)
    for target, acc in saved.items():
        assert target <= acc <= target + 0.01, (target, acc)
    # Fewer evaluations than a fixed interval fine enough to land within 1 % would need
    # (0.5 % of gain at the steepest slope: every 3-4 steps, i.e. over 100 evaluations here).
    assert evaluations <= 40, evaluations


def test_teacher_filenames():
    assert teacher_filename(0.3) == "teacher-acc30.pt"
    assert teacher_filename(0.7) == "teacher-acc70.pt"
    assert teacher_filename(0.305) == "teacher-acc30.5.pt"


@pytest.mark.parametrize("kwargs, message", [
    ({"accuracies": (1.5,)}, "fractions in"),
    ({"accuracies": ()}, "no teacher to train"),
    ({"accuracies": (0.3, 0.3)}, "twice"),
    ({"ipc": 10, "fraction": 0.5}, "ipc"),
    ({"lr": -1.0}, "--lr must be a positive number"),
    ({"lr": float("nan")}, "--lr must be a positive number"),
    ({"weight_decay": -0.1}, "--weight-decay must be a number, 0 or more"),
    ({"max_steps": 0}, "--max-steps must be at least 1"),
])
def test_bad_ladder_configs_are_user_errors(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        LadderConfig(data=tmp_path, out=tmp_path / "t", **kwargs)


@pytest.mark.slow
def test_real_ladder_saves_the_first_checkpoint_reaching_each_target(sample_dir, tmp_path, one_thread):
    out = tmp_path / "ladder"
    cfg = LadderConfig(data=sample_dir, out=out, accuracies=(0.15, 0.99), aug="flip", width=0.125,
                       max_steps=40, eval_every=4, tolerance=0.5, random_init=True, batch_size=64,
                       device="cpu", progress=False)
    result = train_ladder(cfg)
    manifest = json.loads((out / "ladder.json").read_text())
    assert manifest["missed"] == [0.99] and list(result.missed) == [0.99]
    assert result.steps == 40  # 99 % is out of reach, so it ran to --max-steps

    random_rung, rung = result.rungs
    assert random_rung.target is None and random_rung.step == 0 and (out / "teacher-random.pt").is_file()
    assert rung.target == 0.15 and rung.path == out / "teacher-acc15.pt"
    # Saved at the first evaluation that reached 15 % (a tolerance of 50 points: never refined),
    # with the accuracy measured there.
    evaluations = [tuple(e) for e in manifest["evaluations"]]
    first = next((s, a) for s, a in evaluations if s > 0 and a >= 0.15)
    assert (rung.step, rung.accuracy) == first
    assert all(a < 0.15 for s, a in evaluations if 0 < s < rung.step)

    # The file holds those very weights: re-evaluating it gives the recorded accuracy.
    net, info = load_classifier(rung.path)
    assert info.test_accuracy == rung.accuracy and info.step == rung.step
    assert info.extra["target_accuracy"] == 0.15
    from fasttarget.loader import build_loader

    (measured,) = evaluate(net, build_loader(eval_loader_config(sample_dir, torch.device("cpu"))), torch.device("cpu"))
    assert measured == pytest.approx(rung.accuracy, abs=1e-9)

    with pytest.raises(UserError, match="already holds a teacher ladder"):
        train_ladder(cfg)


def test_an_overshooting_evaluation_is_refined_from_the_weight_snapshots(small_sample_dir, tmp_path, one_thread):
    from fasttarget.loader import build_loader

    out = tmp_path / "ladder"
    target = 0.12
    # A tolerance of 0.1 point: the evaluation that crosses 12 % overshoots it, so the saved
    # teacher comes from the snapshots of the steps before that evaluation.
    cfg = LadderConfig(data=small_sample_dir, out=out, accuracies=(target,), aug="flip", width=0.125, max_steps=30,
                       eval_every=20, tolerance=0.001, batch_size=64, device="cpu", progress=False)
    result = train_ladder(cfg)
    manifest = json.loads((out / "ladder.json").read_text())
    (rung,) = result.rungs
    crossing_step, crossing_acc = next((s, a) for s, a in manifest["evaluations"] if a >= target)
    previous = max((s for s, _ in manifest["evaluations"] if s < crossing_step), default=0)
    refinements = [tuple(r) for r in manifest["refinements"]]
    assert crossing_acc > target + cfg.tolerance
    assert refinements and all(previous < s < crossing_step for s, _ in refinements)
    # The saved weights are a snapshot's that reached the target: its step, its measured accuracy.
    assert (rung.step, rung.accuracy) in refinements and rung.step < crossing_step and rung.accuracy >= target
    net, info = load_classifier(rung.path)
    assert (info.step, info.test_accuracy) == (rung.step, rung.accuracy)
    cpu = torch.device("cpu")
    (measured,) = evaluate(net, build_loader(eval_loader_config(small_sample_dir, cpu)), cpu)
    assert measured == pytest.approx(rung.accuracy, abs=1e-9)
    # Bisection: every snapshot evaluated before the saved one stayed below the target.
    assert all(a < target for s, a in refinements if s < rung.step)


def test_teacher_cli_takes_space_separated_accuracies(small_sample_dir, tmp_path, capsys, monkeypatch, one_thread):
    from fasttarget.cli import main

    out = tmp_path / "t"
    monkeypatch.setattr("sys.argv", [
        "fasttarget", "teacher", "--data", str(small_sample_dir), "--out", str(out), "--accuracies", "0.98", "0.99",
        "--width", "0.125", "--max-steps", "2", "--eval-every", "2", "--batch-size", "32", "--aug", "noaug",
        "--device", "cpu", "--no-progress",
    ])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    assert json.loads((out / "ladder.json").read_text())["missed"] == [0.98, 0.99]
    assert "missed 98%, 99%" in capsys.readouterr().out
