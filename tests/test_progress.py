"""Progress output: a bar on a terminal only; one plain line per evaluation in a log; the teacher
ladder's notes (snapshot chosen, whole-test accuracy under --eval-subset)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from fasttarget.progress import Progress, show_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_line_per_evaluation_and_no_bar():
    log = io.StringIO()
    progress = Progress(total=30, initial=0, desc="train A", enabled=True, stream=log)
    assert progress.bar is None
    for step in range(1, 31):
        progress.update(step, 2.0, 100.0)
        if step % 10 == 0:
            progress.evaluated(step, 1.5, 100.0, f"{step}%")
    progress.note("a note")
    progress.close()
    assert log.getvalue().splitlines() == [
        "train A: step 10/30  loss 1.500  100 img/s  acc 10%", "train A: step 20/30  loss 1.500  100 img/s  acc 20%",
        "train A: step 30/30  loss 1.500  100 img/s  acc 30%", "a note"]
    quiet = io.StringIO()
    disabled = Progress(total=30, initial=0, desc="train A", enabled=False, stream=quiet)
    disabled.evaluated(10, 1.5, 100.0, "10%")
    disabled.note("a note")
    assert quiet.getvalue() == "" and disabled.bar is None


def test_a_terminal_gets_a_bar():
    term = Terminal()
    progress = Progress(total=30, initial=0, desc="train A", enabled=True, stream=term)
    assert progress.bar is not None
    progress.evaluated(10, 1.5, 100.0, "10%")
    progress.close()
    assert "\r" in term.getvalue() and "acc 10%" in term.getvalue() and "step 10/30" not in term.getvalue()
    assert show_bar(True, Terminal()) and not show_bar(False, Terminal()) and not show_bar(True, io.StringIO())


def test_train_writes_plain_lines_when_stderr_is_not_a_terminal(small_sample_dir, tmp_path, run_cli, one_thread):
    code, _, err = run_cli("train", "--data", small_sample_dir, "--strategy", "A", "--steps", "4", "--eval-every", "2",
                           "--width", "0.125", "--batch-size", "32", "--device", "cpu", "--out", tmp_path / "run")
    assert code == 0, err
    lines = err.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["train A: step 2/4", "train A: step 4/4"], err
    assert "\r" not in err and all("acc " in line for line in lines)


@pytest.mark.slow  # ~30 s of CPU: training, subset and whole-test evaluations
def test_teacher_eval_subset_reports_whole_test_accuracy_and_snapshot_notes(sample_dir, tmp_path, run_cli,
                                                                            one_thread):
    from fasttarget.loader import build_loader
    from fasttarget.models import load_classifier
    from fasttarget.train import eval_loader_config, evaluate

    out = tmp_path / "ladder"
    code, stdout, err = run_cli(
        "teacher", "--data", sample_dir, "--out", out, "--accuracies", "0.12", "--width", "0.125",
        "--max-steps", "20", "--eval-every", "10", "--tolerance", "0.002", "--batch-size", "64", "--aug", "flip",
        "--device", "cpu", "--eval-subset", "300")
    assert code == 0, err
    manifest = json.loads((out / "ladder.json").read_text())
    assert manifest["config"]["eval_subset"] == 300
    (rung,) = manifest["rungs"]
    net, info = load_classifier(out / rung["path"])
    cpu = torch.device("cpu")
    (whole,) = evaluate(net, build_loader(eval_loader_config(sample_dir, cpu)), cpu)
    # The checkpoint records the whole test split's accuracy; the schedule's subset accuracy is kept beside it.
    assert info.test_accuracy == rung["accuracy"] == pytest.approx(whole, abs=1e-9)
    assert rung["subset_accuracy"] is not None and info.extra["subset_accuracy"] == rung["subset_accuracy"]
    assert f"{rung['path']}: {whole:.2%} on the whole test split ({rung['subset_accuracy']:.2%} on the" in err
    assert f"measured {whole:.2%} ({rung['subset_accuracy']:.2%} on the evaluation subset)" in stdout
    evaluated_steps = [s for s, _ in manifest["evaluations"]]
    assert [line.split("  ")[0] for line in err.splitlines() if line.startswith("teacher: ")] == [
        f"teacher: step {s}/20" for s in evaluated_steps]
    # A snapshot saved instead of the evaluated weights is explained (whether one is depends on the curve).
    snapshot_note = f"{rung['path']}: saved the weights of step {rung['step']} ({rung['subset_accuracy']:.2%}), not"
    assert (snapshot_note in err) == (rung["step"] not in evaluated_steps), err


def test_snapshot_note_names_both_accuracies_and_why():
    from pathlib import Path

    from fasttarget.teacher import Rung, _snapshot_note

    note = _snapshot_note(Rung(0.5, Path("out/teacher-acc50.pt"), 0.512, 283), 300, 0.55, 0.01)
    assert note == ("teacher-acc50.pt: saved the weights of step 283 (51.20%), not of step 300 (55.00%): that "
                    "evaluation overshot the 50% target by more than --tolerance 0.01, so the crossing was looked "
                    "up among the snapshots since the evaluation before")
    with_subset = _snapshot_note(Rung(0.5, Path("teacher-acc50.pt"), 0.49, 283, subset_accuracy=0.505), 300, 0.55, 0.01)
    assert "step 283 (50.50%)" in with_subset  # the accuracy the schedule (and the progress lines) measured
