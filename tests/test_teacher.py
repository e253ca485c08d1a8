"""The teacher ladder: first-crossing saves, recorded accuracies, missed targets, the CLI."""

import json

import pytest
import torch

from fasttarget.errors import UserError
from fasttarget.models import load_classifier
from fasttarget.teacher import Ladder, LadderConfig, teacher_filename, train_ladder
from fasttarget.train import evaluate, eval_loader_config


@pytest.fixture
def one_thread():
    """One intra-op thread: on the shared 2-core machine OpenMP spinning makes two far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_ladder_saves_each_target_at_its_first_crossing():
    ladder = Ladder([0.5, 0.3, 0.7], eval_every=10, fine_window=0.05)
    assert ladder.steps_to_next_eval(0.26) == 1
    sequence = [0.12, 0.26, 0.31, 0.28, 0.45, 0.52, 0.49, 0.74, 0.8]
    saved = {}
    for step, accuracy in enumerate(sequence):
        for target in ladder.crossed(accuracy):
            saved[target] = (step, accuracy)
    assert saved == {0.3: (2, 0.31), 0.5: (5, 0.52), 0.7: (7, 0.74)}
    assert ladder.done


def test_one_evaluation_can_clear_several_targets_and_scheduling_tightens_near_one():
    ladder = Ladder([0.3, 0.5, 0.7], eval_every=20, fine_window=0.02)
    assert ladder.steps_to_next_eval(0.2) == 20
    assert ladder.steps_to_next_eval(0.285) == 2
    assert ladder.crossed(0.55) == [0.3, 0.5]
    assert ladder.pending == [0.7]
    assert ladder.steps_to_next_eval(0.55) == 20
    assert not ladder.done


def test_teacher_filenames():
    assert teacher_filename(0.3) == "teacher-acc30.pt"
    assert teacher_filename(0.7) == "teacher-acc70.pt"
    assert teacher_filename(0.305) == "teacher-acc30.5.pt"


@pytest.mark.parametrize("kwargs, message", [
    ({"accuracies": (1.5,)}, "fractions in"),
    ({"accuracies": ()}, "no teacher to train"),
    ({"accuracies": (0.3, 0.3)}, "twice"),
    ({"ipc": 10, "fraction": 0.5}, "ipc"),
])
def test_bad_ladder_configs_are_user_errors(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        LadderConfig(data=tmp_path, out=tmp_path / "t", **kwargs)


@pytest.mark.slow
def test_real_ladder_saves_the_first_checkpoint_reaching_each_target(sample_dir, tmp_path, one_thread):
    out = tmp_path / "ladder"
    cfg = LadderConfig(data=sample_dir, out=out, accuracies=(0.15, 0.99), aug="flip", width=0.125,
                       max_steps=40, eval_every=4, fine_window=0.0, random_init=True, batch_size=64,
                       device="cpu", progress=False)
    result = train_ladder(cfg)
    manifest = json.loads((out / "ladder.json").read_text())
    assert manifest["missed"] == [0.99] and list(result.missed) == [0.99]
    assert result.steps == 40  # 99 % is out of reach, so it ran to --max-steps

    random_rung, rung = result.rungs
    assert random_rung.target is None and random_rung.step == 0 and (out / "teacher-random.pt").is_file()
    assert rung.target == 0.15 and rung.path == out / "teacher-acc15.pt"
    # Saved at the first evaluation that reached 15 %, with the accuracy measured there.
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


def test_teacher_cli_takes_space_separated_accuracies(sample_dir, tmp_path, capsys, monkeypatch, one_thread):
    from fasttarget.cli import main

    out = tmp_path / "t"
    monkeypatch.setattr("sys.argv", [
        "fasttarget", "teacher", "--data", str(sample_dir), "--out", str(out), "--accuracies", "0.98", "0.99",
        "--width", "0.125", "--max-steps", "2", "--eval-every", "2", "--batch-size", "32", "--aug", "noaug",
        "--device", "cpu", "--no-progress",
    ])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    assert json.loads((out / "ladder.json").read_text())["missed"] == [0.98, 0.99]
    assert "missed 98%, 99%" in capsys.readouterr().out
