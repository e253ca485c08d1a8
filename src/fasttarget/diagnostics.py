"""What a finished run trained on and how close it came to its teacher: target entropy and agreement.

Two numbers per student run, which explain results the accuracies alone do not:

- **target entropy** (nats): the mean entropy of the run's targets. Strategy A's one-hot labels
  have 0. Strategy B's are ``softmax(teacher(x) / T)``, measured here on the *un-augmented*
  training images of the run's subset — on all of them when it has at most
  :data:`ENTROPY_PER_CLASS` images per class, else on its first :data:`ENTROPY_PER_CLASS` per
  class in the seeded order (:func:`entropy_rows`: a seeded, stratified sample of the run's own
  subset). Strategy C's are read from its cache over the run's whole subset, through the very
  :class:`~fasttarget.targets.CachedTargets` the run trained with, so they are exactly its targets.
- **agreement**: the share of test images on which the student's classifier ``h`` (``final.pt``)
  and a teacher predict the same class, on a seeded, class-stratified subset of about
  :data:`TEST_IMAGES` test images (:func:`evaluation_subset`: the ``SubsetConfig(fraction, seed)`` of
  ``fasttarget teacher --eval-subset``). For B and C the run's teacher; for A the teacher its
  paired soft-target runs had (see :func:`fasttarget.sweep.units.build_units`), so one-hot
  students show how far they got from it without ever seeing it.

A teacher's logits are computed once per sweep (:func:`score_teacher`, one file per teacher),
every run of it reads them (:func:`diagnose_run`).

Example:
    >>> import numpy as np
    >>> round(mean_entropy(np.array([[0.5, 0.5], [1.0, 0.0]])), 4)  # log 2 and 0
    0.3466
    >>> labels = np.repeat(np.arange(2), 10)
    >>> rows = entropy_rows(labels, SubsetConfig(ipc=6, seed=0), per_class=4)
    >>> len(rows), bool(np.isin(rows, select_subset(labels, SubsetConfig(ipc=6, seed=0))).all())
    (8, True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fasttarget.subsets import SubsetConfig, select_subset

# About this many test images are scored (stratified, seeded by TEST_SEED).
TEST_IMAGES = 2000
TEST_SEED = 0
# B's entropy is measured on at most this many training images per class of the run's subset.
ENTROPY_PER_CLASS = 200
DIAGNOSTICS_FILE = "diagnostics.json"


def mean_entropy(probs: Any) -> float:
    """Mean entropy in nats of the rows of ``probs`` (``[N, K]``, each row summing to 1); 0·log 0 = 0."""
    p = np.asarray(probs, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return float(terms.sum(axis=1).mean())


def softmax(logits: Any, temperature: float) -> np.ndarray:
    """``softmax(logits / T)`` along the last axis, in float64."""
    z = np.asarray(logits, np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def evaluation_subset(count: int, images: int = TEST_IMAGES) -> SubsetConfig | None:
    """The stratified test subset of about ``images`` images (``None``: the whole split is smaller)."""
    return None if images >= count else SubsetConfig(fraction=images / count, seed=TEST_SEED)


def entropy_rows(labels: np.ndarray, subset: SubsetConfig, per_class: int = ENTROPY_PER_CLASS) -> np.ndarray:
    """The training rows B's target entropy is measured on: the run's subset, at most ``per_class``
    of each class.

    Subsets of one seed are nested (:mod:`fasttarget.subsets`), so the IPC-``per_class`` subset
    of the run's seed holds, per class, the first ``per_class`` rows of the order the run's own
    subset was cut from: the intersection is a seeded, stratified sample of the run's subset. A
    split with a class of fewer than ``per_class`` images is small: its whole subset is used.
    """
    labels = np.asarray(labels)
    rows = select_subset(labels, subset)
    if np.bincount(labels).min() < per_class:
        return rows
    return np.intersect1d(rows, select_subset(labels, SubsetConfig(ipc=per_class, seed=subset.seed)))


def sample_name(subset: SubsetConfig) -> str:
    """The key of a run's entropy sample in a teacher's scores: ``ipc10-seed0``, ``full-seed3``."""
    kind = f"ipc{subset.ipc}" if subset.ipc is not None else (
        f"frac{subset.fraction:g}" if subset.fraction is not None else "full")
    return f"{kind}-seed{subset.seed}"


def _scores(model, loader, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, float32 logits)`` of ``model`` on the loader's samples (only ``rows`` when given), in order."""
    import torch

    found, logits = [], []
    with torch.no_grad():
        for batch in loader:
            index = batch.indices.cpu().numpy()
            keep = np.ones(len(index), bool) if rows is None else np.isin(index, rows)
            if keep.any():
                found.append(index[keep])
                logits.append(model(batch.images[torch.from_numpy(keep).to(batch.images.device)]).cpu().numpy())
    if not found:
        return np.empty(0, np.int64), np.empty((0, 0), np.float32)
    return np.concatenate(found), np.concatenate(logits).astype(np.float32)


def _loader(data_dir: Path, split: str, device: str):
    """Un-augmented images of a whole split in index order (the evaluation loader of ``fasttarget train``)."""
    import dataclasses

    from fasttarget.loader import build_loader
    from fasttarget.train import eval_loader_config, resolve_device

    return build_loader(dataclasses.replace(eval_loader_config(Path(data_dir), resolve_device(device)), split=split))


def score_teacher(teacher: Path, data_dir: Path, samples: tuple[SubsetConfig, ...], out_file: Path,
                  device: str = "cpu", test_images: int = TEST_IMAGES) -> None:
    """Score one teacher once for every run that reads it; write ``out_file`` (``.npz``) atomically.

    It holds the teacher's logits on the test subset (:func:`evaluation_subset`: ``test_rows``,
    ``test_logits``, ``test_labels``) and on the union of the training rows of ``samples``
    (:func:`entropy_rows` of each run subset: ``train_rows``, ``train_logits``), and each
    sample's rows under ``sample_<name>`` (:func:`sample_name`).
    """
    from fasttarget.dataset import DatasetMeta, read_labels
    from fasttarget.targets import load_teacher

    meta = DatasetMeta.load(data_dir)
    model, _ = load_teacher(teacher, meta, device)
    labels = read_labels(data_dir, "train", meta=meta)
    rows = {sample_name(s): entropy_rows(labels, s) for s in samples}
    union = np.unique(np.concatenate(list(rows.values()))) if rows else np.empty(0, np.int64)
    train_rows, train_logits = _scores(model, _loader(data_dir, "train", device), union) if len(union) else (
        union, np.empty((0, meta.num_classes), np.float32))
    all_test = read_labels(data_dir, "test", meta=meta)
    subset = evaluation_subset(len(all_test), test_images)
    wanted = np.arange(len(all_test)) if subset is None else select_subset(all_test, subset)
    test_rows, test_logits = _scores(model, _loader(data_dir, "test", device), wanted)
    test_labels = all_test[test_rows]
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    partial = out_file.with_name(out_file.name + ".partial.npz")
    np.savez(partial, train_rows=train_rows, train_logits=train_logits, test_rows=test_rows,
             test_logits=test_logits, test_labels=test_labels, **{f"sample_{k}": v for k, v in rows.items()})
    partial.replace(out_file)  # whole or absent: the driver takes the file as the unit's result


@dataclass(frozen=True)
class TeacherScores:
    """A teacher's scores as :func:`score_teacher` wrote them."""

    train_rows: np.ndarray
    train_logits: np.ndarray
    test_rows: np.ndarray
    test_logits: np.ndarray
    test_labels: np.ndarray
    samples: dict[str, np.ndarray]

    @classmethod
    def load(cls, path: Path) -> TeacherScores:
        with np.load(path) as f:
            samples = {k[len("sample_"):]: f[k] for k in f.files if k.startswith("sample_")}
            return cls(f["train_rows"], f["train_logits"], f["test_rows"], f["test_logits"], f["test_labels"],
                       samples)

    def train_logits_of(self, rows: np.ndarray) -> np.ndarray:
        """The stored training logits of ``rows`` (every one must have been scored)."""
        at = np.searchsorted(self.train_rows, rows)
        if len(rows) and (at.max() >= len(self.train_rows) or (self.train_rows[at] != rows).any()):
            raise ValueError("these training rows were not scored by this teacher")
        return self.train_logits[at]

    @property
    def test_accuracy(self) -> float:
        """The teacher's top-1 accuracy on the test subset."""
        return float((self.test_logits.argmax(1) == self.test_labels).mean())


def cache_entropy(cache_path: Path, data_dir: Path, subset: SubsetConfig, temperature: float) -> tuple[float, int]:
    """Mean entropy of Strategy C's targets over a run's whole subset and its image count.

    The targets are the un-mixed output of :class:`~fasttarget.targets.CachedTargets` (what the
    run's loader mixed into each batch).
    """
    import torch

    from fasttarget.augment import AugRecord
    from fasttarget.cache import TargetCache
    from fasttarget.dataset import read_labels
    from fasttarget.loader import Batch
    from fasttarget.targets import CachedTargets

    rows = select_subset(read_labels(data_dir, "train"), subset)
    # The run opened (and verified) this cache; hashing a large one again would cost more than the rest.
    targets = CachedTargets(TargetCache.open(cache_path, verify=False), temperature)
    index = torch.from_numpy(rows)
    probs = targets(Batch(torch.empty(len(rows), 0), torch.zeros(len(rows), dtype=torch.long), index, AugRecord()))
    return mean_entropy(probs.double().numpy()), len(rows)


def student_agreement(final_model: Path, data_dir: Path, scores: TeacherScores, device: str = "cpu") -> float:
    """Share of the scored test images on which the student's ``h`` and the teacher predict one class."""
    from fasttarget.dataset import DatasetMeta
    from fasttarget.targets import load_teacher

    meta = DatasetMeta.load(data_dir)
    student, _ = load_teacher(final_model, meta, device)
    rows, logits = _scores(student, _loader(data_dir, "test", device), scores.test_rows)
    if not np.array_equal(rows, scores.test_rows):
        raise ValueError(f"the student's test rows differ from the teacher's ({len(rows)} vs {len(scores.test_rows)})")
    return float((logits.argmax(1) == scores.test_logits.argmax(1)).mean())


def diagnose_run(run_dir: Path, data_dir: Path, strategy: str, temperature: float, subset: SubsetConfig,
                 teacher_scores: Path | None = None, teacher: str | None = None, cache: Path | None = None,
                 device: str = "cpu") -> dict[str, Any]:
    """Measure one finished run and write ``run_dir/diagnostics.json``; return what it holds.

    Args:
        run_dir: the run's directory (``final.pt`` in it).
        data_dir: the converted dataset it trained on.
        strategy: ``A``, ``B`` or ``C``.
        temperature: the run's T.
        subset: the run's training subset (``SubsetConfig(ipc, fraction, seed=subset_seed)``).
        teacher_scores: :func:`score_teacher`'s file of the teacher to compare with (B, C: the
            run's own; A: its paired teacher, or ``None`` for no agreement).
        teacher: that teacher's name in the result (``noaug-t60``).
        cache: Strategy C's cache file.
    """
    scores = TeacherScores.load(teacher_scores) if teacher_scores is not None else None
    if strategy == "A":
        entropy, images, of = 0.0, None, "one-hot labels"
    elif strategy == "B":
        if scores is None:
            raise ValueError("a Strategy B run needs its teacher's scores")
        rows = scores.samples[sample_name(subset)]
        entropy, images = mean_entropy(softmax(scores.train_logits_of(rows), temperature)), len(rows)
        of = f"teacher on the un-augmented {sample_name(subset)} sample of the run's subset"
    else:
        entropy, images = cache_entropy(cache, data_dir, subset, temperature)
        of = "cache rows of the run's whole subset"
    result = {
        "target_entropy": entropy, "entropy_images": images, "entropy_of": of, "temperature": temperature,
        "agreement": None if scores is None else student_agreement(Path(run_dir) / "final.pt", data_dir, scores,
                                                                   device),
        "agreement_teacher": None if scores is None else teacher,
        "agreement_images": None if scores is None else len(scores.test_rows),
        "teacher_subset_acc": None if scores is None else scores.test_accuracy,
    }
    partial = Path(run_dir) / (DIAGNOSTICS_FILE + ".partial")
    partial.write_text(json.dumps(result, indent=1))
    partial.replace(Path(run_dir) / DIAGNOSTICS_FILE)
    return result


def read_diagnostics(run_dir: Path) -> dict[str, Any] | None:
    """A run's ``diagnostics.json``, or ``None`` before it was measured."""
    path = Path(run_dir) / DIAGNOSTICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
