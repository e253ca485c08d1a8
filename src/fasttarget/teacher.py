"""The teacher ladder: one CE training run saving the first checkpoint at each target accuracy.

The paper's teachers of different quality (Appendix A) come from one Strategy A training
run with plain cross-entropy, validated as it goes, "saved the first time it reached the
preset accuracy". :func:`train_ladder` does that on the test split:

- it schedules each evaluation from the learning curve measured so far (:class:`Ladder`):
  halfway to the next target while far from it, then every half ``tolerance`` of predicted
  gain, at most ``eval_every`` steps apart. A saved teacher so lands close above its target
  without evaluating every few steps all run long (on CPU an evaluation costs as much as
  dozens of training steps). An evaluation that still overshoots a target by more than the
  tolerance (test accuracy jitters by points between nearby steps) is refined: the weights
  of a few steps since the last evaluation are kept on the host, and the saved teacher is
  the snapshot found by bisecting them for the crossing. The measured accuracy is what is
  recorded, in the checkpoint and in ``ladder.json``, and a note says why it differs from the
  evaluation the progress showed;
- with ``eval_subset`` the schedule's evaluations use a seeded, class-stratified subset of
  about that many test images (faster on CPU); each saved teacher is then evaluated on the
  whole test split, and that accuracy is the one its checkpoint records;
- one evaluation that clears several targets saves the same weights for each of them;
- ``random_init`` also saves the untrained network (the paper's "10 %" teacher);
- it stops at the highest target or after ``max_steps``, reporting the targets it missed.

Files in ``out``: ``teacher-acc30.pt`` … (:func:`teacher_filename`), ``teacher-random.pt``,
and ``ladder.json`` (config, the saved rungs, the missed targets, every evaluation).

Example:
    >>> ladder = Ladder((0.5, 0.3), eval_every=100, tolerance=0.01, chance=0.1)
    >>> ladder.steps_to_next_eval()  # nothing measured yet: a short first interval
    10
    >>> ladder.record(10, 0.18), ladder.steps_to_next_eval()  # 12 points to go at 0.8/step: halfway
    ([], 7)
    >>> ladder.record(17, 0.28), ladder.steps_to_next_eval()  # 2 points to go: half a point per evaluation
    ([], 1)
    >>> ladder.record(19, 0.55), ladder.done
    ([0.3, 0.5], True)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fasttarget.config import LadderConfig
from fasttarget.errors import UserError
from fasttarget.losses import hard_targets, soft_cross_entropy
from fasttarget.models import CheckpointInfo, ModelConfig, build_classifier, save_classifier
from fasttarget.progress import Progress
from fasttarget.train import (
    BAR_EVERY,
    Throughput,
    autocast,
    build_optimizer,
    evaluate,
    iterate_steps,
    prepare_model,
    resolve_device,
    eval_loader_config,
    train_loader_config,
    training_subset,
    write_json,
)

LADDER_FILE = "ladder.json"
# At most this many weight snapshots are kept between two evaluations (see train_ladder).
SNAPSHOTS = 16
RANDOM_FILE = "teacher-random.pt"


def teacher_filename(target: float) -> str:
    """``0.3`` → ``"teacher-acc30.pt"`` (``0.305`` → ``"teacher-acc30.5.pt"``)."""
    return f"teacher-acc{round(target * 100, 6):g}.pt"


class Ladder:
    """Which targets are still pending, and when to evaluate next.

    Evaluations are scheduled from the measured learning curve. Its slope (a least-squares
    fit over the last three evaluations, the chance level at step 0 counting as one, or the
    slope since the start if that fit is not positive) predicts how far off the next target
    is. While it is more than three tolerances away, the next evaluation goes halfway there;
    closer, it goes where the curve should have gained half a tolerance, so the crossing is
    caught about that far above the target. Intervals stay between one step and the smaller
    of ``eval_every`` and twice the last interval (a curve about to take off looks flat from
    behind). Test accuracy also jitters from step to step, which no schedule can predict:
    the measured accuracy at the crossing is what gets recorded.

    Args:
        targets: target accuracies.
        eval_every: the most steps between two evaluations.
        tolerance: how far above a target an evaluation may land.
        chance: the accuracy at step 0 (``1 / classes``), the start of the curve.
        first_eval: steps before the first evaluation, when there is no slope yet.
    """

    def __init__(self, targets, eval_every: int, tolerance: float = 0.01, chance: float = 0.0, first_eval: int = 10):
        if eval_every < 1 or tolerance <= 0:
            raise UserError(f"--eval-every must be ≥ 1 and --tolerance > 0, got {eval_every} and {tolerance}")
        self.pending = sorted(targets)
        self.eval_every = eval_every
        self.tolerance = tolerance
        self.first_eval = first_eval
        self.history: list[tuple[int, float]] = [(0, chance)]

    @property
    def done(self) -> bool:
        return not self.pending

    def record(self, step: int, accuracy: float) -> list[float]:
        """Note an evaluation; return the pending targets it reaches (they are no longer pending)."""
        if step == self.history[-1][0]:
            self.history[-1] = (step, accuracy)  # a measured step 0 replaces the chance prior
        else:
            self.history.append((step, accuracy))
        reached = [t for t in self.pending if accuracy >= t]
        self.pending = [t for t in self.pending if accuracy < t]
        return reached

    def steps_to_next_eval(self) -> int:
        """Steps from the last evaluation to the next one."""
        if len(self.history) < 2 or self.done:
            return min(self.first_eval, self.eval_every)
        step, accuracy = self.history[-1]
        slope = _slope(self.history[-3:])
        if slope <= 0:  # jitter can hide recent progress: use the progress since the start
            slope = _slope([self.history[0], self.history[-1]])
        if slope <= 0:  # no progress measured at all: the longest interval
            return self.eval_every
        gap = self.pending[0] - accuracy
        steps = gap / 2 / slope if gap > 3 * self.tolerance else self.tolerance / 2 / slope
        longest = min(self.eval_every, 2 * (step - self.history[-2][0]))
        return int(min(longest, max(1, steps)))


def _evaluation_loader(cfg: LadderConfig, meta, device: torch.device, test_loader):
    """The loader the schedule evaluates on and its image count: ``test_loader``, or a seeded subset of it."""
    count = meta.count("test")
    if cfg.eval_subset is None or cfg.eval_subset >= count:
        return test_loader, count
    from fasttarget.loader import build_loader
    from fasttarget.subsets import SubsetConfig

    subset = SubsetConfig(fraction=cfg.eval_subset / count, seed=cfg.seed)
    loader = build_loader(dataclasses.replace(eval_loader_config(cfg.data, device), subset=subset))
    return loader, loader.num_samples


def _snapshot_note(rung: Rung, step: int, accuracy: float, tolerance: float) -> str:
    """Why a teacher's saved accuracy is not the one the evaluation at ``step`` showed."""
    saved = rung.accuracy if rung.subset_accuracy is None else rung.subset_accuracy  # as the schedule measured it
    return (f"{rung.path.name}: saved the weights of step {rung.step} ({saved:.2%}), not of step {step} "
            f"({accuracy:.2%}): that evaluation overshot the {rung.target:.0%} target by more than --tolerance "
            f"{tolerance:g}, so the crossing was looked up among the snapshots since the evaluation before")


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of accuracy over step."""
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx if sxx else 0.0


@dataclass(frozen=True)
class Rung:
    """One saved teacher: its target (``None`` for the random-init one), file, test accuracy, step,
    and its accuracy on the evaluation subset (``None`` without ``eval_subset``)."""

    target: float | None
    path: Path
    accuracy: float
    step: int
    subset_accuracy: float | None = None


@dataclass(frozen=True)
class LadderResult:
    """What a ladder run saved and missed.

    Attributes:
        rungs: saved teachers, in the order they were saved.
        missed: targets not reached within ``max_steps``.
        best_accuracy: the highest accuracy measured.
        steps: steps trained.
        evaluations: every ``(step, accuracy)`` measured.
        refinements: ``(step, accuracy)`` of the snapshots evaluated to find a crossing
            that an evaluation overshot.
    """

    rungs: tuple[Rung, ...]
    missed: tuple[float, ...]
    best_accuracy: float
    steps: int
    evaluations: tuple[tuple[int, float], ...]
    refinements: tuple[tuple[int, float], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "rungs": [{"target": r.target, "path": r.path.name, "accuracy": r.accuracy, "step": r.step,
                       "subset_accuracy": r.subset_accuracy} for r in self.rungs],
            "missed": list(self.missed), "best_accuracy": self.best_accuracy, "steps": self.steps,
            "evaluations": [list(e) for e in self.evaluations],
            "refinements": [list(e) for e in self.refinements],
        }


def train_ladder(cfg: LadderConfig) -> LadderResult:
    """Train one teacher with cross-entropy and save it at each target accuracy.

    Raises:
        UserError: bad data directory, or a ladder already in ``out`` without ``force``.
    """
    from fasttarget.dataset import DatasetMeta
    from fasttarget.loader import build_loader

    ladder_path = cfg.out / LADDER_FILE
    if ladder_path.exists() and not cfg.force:
        raise UserError(f"{cfg.out} already holds a teacher ladder: pass --force to retrain it or choose another --out")
    meta = DatasetMeta.load(cfg.data)
    device = resolve_device(cfg.device)
    subset = training_subset(cfg.ipc, cfg.fraction, cfg.subset_seed)
    loader = build_loader(train_loader_config(cfg.data, cfg.batch_size, cfg.aug, cfg.seed, device, subset))
    test_loader = build_loader(eval_loader_config(cfg.data, device))
    eval_loader, eval_count = _evaluation_loader(cfg, meta, device, test_loader)
    torch.manual_seed(cfg.seed)
    image_size = meta.image_shape[0] if meta.image_shape else 224
    model_cfg = ModelConfig(arch=cfg.arch, width=cfg.width, num_classes=meta.num_classes, image_size=image_size)
    net, forward = prepare_model(build_classifier(model_cfg), device, cfg.compile)
    optimizer = build_optimizer(net, cfg.lr, cfg.weight_decay)
    cfg.out.mkdir(parents=True, exist_ok=True)
    # Until the new manifest is written, no old one may vouch for teacher files being replaced.
    ladder_path.unlink(missing_ok=True)

    rungs: list[Rung] = []
    evaluations: list[tuple[int, float]] = []
    refinements: list[tuple[int, float]] = []
    # Weights of the steps since the last evaluation (on the host, at most SNAPSHOTS per
    # interval): when an evaluation overshoots a target by more than the tolerance, the
    # crossing is looked for among them instead of saving the late weights.
    snapshots: list[tuple[int, dict[str, torch.Tensor]]] = []

    def refine(target: float) -> bool:
        """Save the snapshot at or above ``target`` right after one below it, found by bisection.

        Assumes the accuracy rises between two evaluations; with jitter it still saves a
        measured crossing, only not necessarily the first. ``False``: no snapshot reaches it.
        """
        current = {k: v.detach().clone() for k, v in net.state_dict().items()}
        lo, hi, found_acc = 0, len(snapshots), None  # found: snapshots[hi], measured found_acc
        try:
            while lo < hi:
                mid = (lo + hi) // 2
                net.load_state_dict(snapshots[mid][1])
                (acc,) = evaluate(net, eval_loader, device)
                refinements.append((snapshots[mid][0], acc))
                if acc >= target:
                    hi, found_acc = mid, acc
                else:
                    lo = mid + 1
            if found_acc is not None:
                net.load_state_dict(snapshots[hi][1])
                save(target, found_acc, snapshots[hi][0])
        finally:
            net.load_state_dict(current)
        return found_acc is not None

    def save(target: float | None, accuracy: float, step: int) -> None:
        """Save the current weights, measured ``accuracy`` on the evaluation loader, as ``target``'s teacher."""
        path = cfg.out / (RANDOM_FILE if target is None else teacher_filename(target))
        subset_accuracy = None
        if eval_loader is not test_loader:
            subset_accuracy, (accuracy,) = accuracy, evaluate(net, test_loader, device)
            progress.note(f"{path.name}: {accuracy:.2%} on the whole test split "
                          f"({subset_accuracy:.2%} on the {eval_count}-image evaluation subset)")
        extra = {"target_accuracy": target, "aug": cfg.aug, "seed": cfg.seed, "lr": cfg.lr,
                 "weight_decay": cfg.weight_decay, "batch_size": cfg.batch_size, "ipc": cfg.ipc,
                 "fraction": cfg.fraction, "subset_accuracy": subset_accuracy}
        save_classifier(path, net, CheckpointInfo(model_cfg, accuracy, meta.fingerprint, meta.mean, meta.std,
                                                  step, extra))
        rungs.append(Rung(target, path, accuracy, step, subset_accuracy))

    ladder = Ladder(cfg.accuracies, cfg.eval_every, cfg.tolerance, chance=1 / meta.num_classes)
    progress = Progress(cfg.max_steps, 0, "teacher", cfg.progress)
    if cfg.random_init:
        (accuracy,) = evaluate(net, eval_loader, device)
        evaluations.append((0, accuracy))
        ladder.record(0, accuracy)
        save(None, accuracy, 0)

    throughput = Throughput(device)
    next_eval, step = ladder.steps_to_next_eval(), 0
    snapshot_every = -(-next_eval // SNAPSHOTS)  # ceil: at most SNAPSHOTS per interval
    try:
        for step, batch in iterate_steps(loader, 0, cfg.max_steps if not ladder.done else 0):
            with autocast(device):
                logits = forward(batch.images)
            loss = soft_cross_entropy(logits, hard_targets(batch.labels, meta.num_classes, batch.record))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            throughput.images += cfg.batch_size
            if step % BAR_EVERY == 0:
                progress.update(step, loss.item(), throughput.rate())
            if step < next_eval and step != cfg.max_steps:
                if step % snapshot_every == 0:
                    snapshots.append((step, {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}))
                continue
            throughput.pause()
            (accuracy,) = evaluate(net, eval_loader, device)
            evaluations.append((step, accuracy))
            progress.evaluated(step, loss.item(), throughput.rate(), f"{accuracy:.2%}")
            for target in ladder.record(step, accuracy):
                if accuracy > target + cfg.tolerance and snapshots and refine(target):
                    progress.note(_snapshot_note(rungs[-1], step, accuracy, cfg.tolerance))
                else:
                    save(target, accuracy, step)
            throughput.reset()
            if ladder.done:
                break
            interval = ladder.steps_to_next_eval()
            next_eval = step + interval
            snapshots.clear()
            snapshot_every = -(-interval // SNAPSHOTS)
    finally:
        progress.close()

    result = LadderResult(
        rungs=tuple(rungs), missed=tuple(ladder.pending),
        best_accuracy=max((a for _, a in evaluations), default=0.0), steps=step,
        evaluations=tuple(evaluations), refinements=tuple(refinements),
    )
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items()}
    write_json(ladder_path, {"config": config, "dataset_fingerprint": meta.fingerprint, **result.to_json()})
    return result
