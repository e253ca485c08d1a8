"""Diagnostics of a real tiny sweep: target entropy and teacher–student agreement, checked against
direct computations, and a rerun of a finished sweep that measures without training anything.

The sweep (5 runs of 2 steps on 640 real CIFAR-10 images, the ladder's untrained teacher, its
cache) first runs as sweeps did before diagnostics, its index then stripped of their columns;
the rerun with ``[report] diagnostics`` must add them and train nothing.
"""

from __future__ import annotations

import functools
import json
import sqlite3

import h5py
import numpy as np
import pytest
import torch

from fasttarget.cache import LOGITS
from fasttarget.dataset import DatasetMeta, read_labels, read_split
from fasttarget.diagnostics import (
    ENTROPY_PER_CLASS,
    entropy_rows,
    evaluation_subset,
    mean_entropy,
    sample_name,
    softmax,
)
from fasttarget.models import load_classifier
from fasttarget.results import ResultsIndex, read_csv
from fasttarget.subsets import SubsetConfig, select_subset
from fasttarget.sweep import BackendConfig, Stages, SweepConfig, run_sweep

# A real sweep (conversion-free, but every run trains and evaluates): minutes on a loaded machine.
slow = pytest.mark.slow

DIAGNOSTIC_COLUMNS = ("target_entropy", "agreement", "agreement_teacher")


def sweep_config(data_dir, diagnostics: bool) -> SweepConfig:
    return SweepConfig.from_dict({
        "name": "diag", "data": {"dir": str(data_dir)}, "model": {"width": 0.125},
        # The ladder's untrained network is the teacher: no teacher training in this test.
        "teacher": {"width": 0.125, "random_below": 0.15, "max_steps": 1},
        "student": {"batch_size": 32, "eval_every": 2, "seeds": [0]},
        "report": {"diagnostics": diagnostics},
        "grid": [
            {"name": "abc", "strategies": ["A", "B", "C"], "teacher_accuracies": [0.1], "teacher_augs": ["noaug"],
             "student_augs": ["stdaug"], "steps": [2]},
            {"name": "ipc", "strategies": ["A", "B"], "teacher_accuracies": [0.1], "teacher_augs": ["noaug"],
             "student_augs": ["stdaug"], "ipc": [10], "steps": [2]},
        ],
    })


def no_training(req) -> None:
    raise AssertionError(f"a finished sweep trained again: {type(req).__name__}")


NOTHING_TO_TRAIN = Stages(prepare_data=no_training, train_ladder=no_training, build_cache=no_training,
                          train_student=no_training, train_fleet=no_training)


@pytest.fixture(scope="module")
def sweep(small_sample_dir, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("diag-sweep")
    before = run_sweep(sweep_config(small_sample_dir, diagnostics=False), out, INLINE)
    assert before.counts == {"done": 5}, before.failed
    # An index as sweeps wrote it before diagnostics existed.
    db = sqlite3.connect(out / "results.sqlite")
    for column in DIAGNOSTIC_COLUMNS:
        db.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    db.commit()
    db.close()
    lines: list[str] = []
    again = run_sweep(sweep_config(small_sample_dir, diagnostics=True), out, INLINE, stages=NOTHING_TO_TRAIN,
                      log=lines.append)
    index = ResultsIndex(out / "results.sqlite")
    runs, units = {r.run_id: r for r in index.runs()}, index.units()
    index.close()
    return out, small_sample_dir, again, lines, runs, units


INLINE = BackendConfig(workers=1)


@slow
def test_rerun_of_a_finished_sweep_only_measures(sweep):
    out, data, again, lines, runs, units = sweep
    assert again.trained == () and again.counts == {"done": 5}
    settled = [line for line in lines if line.startswith("[")]
    # One scoring of the one teacher, one measurement per run; every one done, nothing else ran.
    assert len(settled) == 6 and all(" done " in line for line in settled), lines
    assert all("diagnostics of" in line or "scores of teacher" in line for line in settled)
    assert {u.key for u in units if u.kind == "diagnostics" and u.status == "done"} == (
        {"diagnostics:teacher-noaug-t10"} | {f"diagnostics:{run_id}" for run_id in runs})
    third: list[str] = []
    run_sweep(sweep_config(data, diagnostics=True), out, INLINE, stages=NOTHING_TO_TRAIN, log=third.append)
    assert not [line for line in third if line.startswith("[")], third  # nothing left to do


@slow
def test_entropy_is_zero_for_one_hot_and_the_targets_own_for_b_and_c(sweep):
    out, data, _, _, runs, _ = sweep
    temperature = 2.0  # the sweep's default T
    labels = read_labels(data, "train")
    teacher = out / "teachers" / "noaug" / "teacher-random.pt"
    assert teacher.is_file()
    for run in runs.values():
        assert run.status == "done" and run.target_entropy is not None
        if run.strategy == "A":
            assert run.target_entropy == 0.0
        subset = SubsetConfig(ipc=run.ipc, seed=run.seed)
        if run.strategy == "C":  # straight from the cache file's rows over the run's subset
            with h5py.File(out / "caches" / "noaug-t10.h5", "r") as f:
                logits = f[LOGITS][:][select_subset(labels, subset)]
            assert run.target_entropy == pytest.approx(mean_entropy(softmax(logits, temperature)), rel=1e-6)
        if run.strategy == "B":  # the teacher on the un-augmented images, computed here from the raw split
            picked = entropy_rows(labels, subset)
            expected = mean_entropy(softmax(direct_logits(teacher, data, "train")[picked], temperature))
            assert run.target_entropy == pytest.approx(expected, rel=1e-4)
            # Classes of 640 images hold fewer than ENTROPY_PER_CLASS: the whole subset is used.
            assert np.bincount(labels).max() < ENTROPY_PER_CLASS
            assert np.array_equal(picked, select_subset(labels, subset))
    # A real teacher's soft targets are neither one-hot nor uniform.
    b = [r.target_entropy for r in runs.values() if r.strategy != "A"]
    assert all(0 < h < np.log(10) for h in b)


@functools.lru_cache(maxsize=2)
def split_images(data, split: str) -> torch.Tensor:
    return torch.from_numpy(read_split(data, split)[0]).permute(0, 3, 1, 2).float().div(255)


def direct_logits(checkpoint, data, split: str) -> np.ndarray:
    """A classifier's logits on a whole split, from the decoded uint8 images and its own normalization."""
    net, info = load_classifier(checkpoint)
    images = split_images(data, split)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (info.mean, info.std))
    with torch.no_grad():
        return net((images - mean) / std).numpy()


@slow
def test_agreement_is_the_share_of_equal_predictions(sweep):
    out, data, _, _, runs, _ = sweep
    teacher = direct_logits(out / "teachers" / "noaug" / "teacher-random.pt", data, "test").argmax(1)
    count = DatasetMeta.load(data).count("test")
    assert evaluation_subset(count) is None  # 200 test images: all of them are scored
    for run in runs.values():
        student = direct_logits(out / run.run_dir / "final.pt", data, "test").argmax(1)
        assert run.agreement_teacher == "noaug-t10"  # A: the teacher of its paired B runs
        assert 0 <= run.agreement <= 1
        assert run.agreement == pytest.approx(float((student == teacher).mean()), abs=1 / count)
        diag = json.loads((out / run.run_dir / "diagnostics.json").read_text())
        assert diag["agreement_images"] == count and diag["agreement"] == run.agreement


@slow
def test_the_csv_and_meta_round_trip_the_diagnostics(sweep):
    out, _, _, _, runs, _ = sweep
    from_csv, _ = read_csv(out / "results.csv")
    assert {r.run_id: tuple(getattr(r, c) for c in DIAGNOSTIC_COLUMNS) for r in from_csv} == {
        r.run_id: tuple(getattr(r, c) for c in DIAGNOSTIC_COLUMNS) for r in runs.values()}


def test_evaluation_subset_and_entropy_rows_are_stratified_and_seeded():
    labels = np.repeat(np.arange(10), 1000)
    subset = evaluation_subset(len(labels))
    picked = select_subset(labels, subset)
    assert len(picked) == 2000 and np.bincount(labels[picked]).tolist() == [200] * 10
    assert np.array_equal(picked, select_subset(labels, evaluation_subset(len(labels))))
    run = SubsetConfig(ipc=500, seed=3)
    rows = entropy_rows(labels, run, per_class=200)
    assert np.bincount(labels[rows]).tolist() == [200] * 10
    assert np.isin(rows, select_subset(labels, run)).all()  # a sample of the run's own subset
    assert np.array_equal(entropy_rows(labels, SubsetConfig(ipc=10, seed=3)), select_subset(labels, SubsetConfig(ipc=10, seed=3)))
    assert sample_name(run) == "ipc500-seed3" and sample_name(SubsetConfig(seed=1)) == "full-seed1"
