"""What a sweep trains: its student runs, the teacher ladders and caches they share, and where each lives."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from fasttarget.results import RunAxes, subset_label
from fasttarget.sweep.config import GridConfig, SweepConfig


@dataclass(frozen=True)
class RunSpec(RunAxes):
    """The axes of one student run (its identity), with the fields of :class:`RunAxes`.

    ``seed`` fixes data order, subset selection and augmentation parameters; nothing
    else does, which is what makes runs paired across strategies and teachers.
    """

    @property
    def teacher_key(self) -> tuple[str, float] | None:
        """``(teacher_aug, teacher_acc)`` for B and C, ``None`` for A."""
        return None if self.teacher_acc is None else (self.teacher_aug, self.teacher_acc)

    @property
    def run_id(self) -> str:
        """A readable unique name, e.g. ``B_t50-stdaug_mixup_ipc10_steps600_ev50_seed1``."""
        teacher = "none" if self.teacher_acc is None else f"t{pct(self.teacher_acc)}-{self.teacher_aug}"
        return (
            f"{self.strategy}_{teacher}_{self.student_aug}_{subset_label(self.ipc, self.fraction)}"
            f"_steps{self.steps}_ev{self.eval_every}_seed{self.seed}"
        )


def pct(acc: float) -> str:
    """An accuracy fraction as the percent used in names: ``0.3 -> "30"``."""
    return f"{acc * 100:g}"


def expand_grid(grid: GridConfig, budgets_from_one_run: bool = True) -> list[RunSpec]:
    """All runs of one grid, Strategy A once per non-teacher combination.

    Example:
        >>> g = GridConfig(name="g", strategies=("A", "B"), student_augs=("stdaug",), steps=(100, 200),
        ...                seeds=(0,), eval_every=50, teacher_accuracies=(0.3, 0.5), teacher_augs=("stdaug",))
        >>> [r.run_id for r in expand_grid(g)]  # doctest: +NORMALIZE_WHITESPACE
        ['A_none_stdaug_full_steps200_ev50_seed0', 'B_t30-stdaug_stdaug_full_steps200_ev50_seed0',
         'B_t50-stdaug_stdaug_full_steps200_ev50_seed0']
    """
    subsets: list[tuple[int | None, float | None]] = (
        [(n, None) for n in grid.ipc] or [(None, f) for f in grid.fractions] or [(None, None)]
    )
    steps = (max(grid.steps),) if budgets_from_one_run else grid.steps
    teachers = [(aug, acc) for aug in grid.teacher_augs for acc in grid.teacher_accuracies]
    runs = []
    for strategy in grid.strategies:
        for (t_aug, t_acc), s_aug, (ipc, frac), n, seed in itertools.product(
            teachers if strategy != "A" else [(None, None)], grid.student_augs, subsets, steps, grid.seeds
        ):
            runs.append(RunSpec(strategy, s_aug, n, grid.eval_every, seed, t_acc, t_aug, ipc, frac))
    return runs


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep needs: runs (deduplicated, in grid order), ladders and caches.

    ``ladders`` maps each teacher augmentation to the accuracies its ladder must reach;
    ``caches`` lists the ``(aug, acc)`` teachers whose logits Strategy C runs read.
    """

    runs: tuple[RunSpec, ...]
    ladders: dict[str, tuple[float, ...]]
    caches: tuple[tuple[str, float], ...]
    budgets: tuple[int, ...]


def plan_sweep(cfg: SweepConfig) -> SweepPlan:
    """Expand every grid and collect the shared teachers and caches."""
    runs: dict[str, RunSpec] = {}
    for grid in cfg.grids:
        for spec in expand_grid(grid, cfg.budgets_from_one_run):
            runs.setdefault(spec.run_id, spec)
    ladders: dict[str, set[float]] = {}
    caches: set[tuple[str, float]] = set()
    for spec in runs.values():
        if spec.teacher_key is not None:
            ladders.setdefault(spec.teacher_aug, set()).add(spec.teacher_acc)
            if spec.strategy == "C":
                caches.add(spec.teacher_key)
    budgets = sorted({s for g in cfg.grids for s in g.steps})
    return SweepPlan(
        runs=tuple(runs.values()),
        ladders={aug: tuple(sorted(accs)) for aug, accs in ladders.items()},
        caches=tuple(sorted(caches)),
        budgets=tuple(budgets),
    )


@dataclass(frozen=True)
class SweepLayout:
    """Where everything lives under a sweep root ``out``.

    The root must be storage every worker sees (the same path on each node). Files that
    outlive a run (``rungs.json``, the results index) hold paths relative to it, so a sweep
    directory stays valid when it is copied or mounted elsewhere.
    """

    out: Path

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    def run_dir(self, spec: RunSpec) -> Path:
        return self.runs / spec.run_id

    def ladder_dir(self, aug: str) -> Path:
        return self.out / "teachers" / aug

    def ladder_manifest(self, aug: str) -> Path:
        # Not the ladder's own ladder.json: this one maps each requested accuracy to its rung.
        return self.ladder_dir(aug) / "rungs.json"

    def cache_file(self, aug: str, acc: float) -> Path:
        return self.out / "caches" / f"{aug}-t{pct(acc)}.h5"

    def relative(self, path: Path) -> str:
        """``path`` relative to the root (as stored on disk and in the index)."""
        return Path(path).relative_to(self.out).as_posix()

    def resolve(self, stored: str) -> Path:
        """A stored path back under the root (an absolute one, from older sweeps, is kept)."""
        return self.out / stored


def class_counts(data_dir: Path) -> list[int] | None:
    """Images per class of the training split, from ``meta.json`` (``None`` without one)."""
    meta = Path(data_dir) / "meta.json"
    return json.loads(meta.read_text())["splits"]["train"]["class_counts"] if meta.is_file() else None


# Below this many batches a subset streams across epochs (fasttarget.order) instead of
# dropping its last partial batch every epoch (up to a quarter of it at 4 batches) or, below
# one batch, making none.
STREAM_BELOW_BATCHES = 4


def run_batch_size(batch_size: int, spec: RunSpec, counts: list[int] | None, stream: bool = False) -> tuple[int, bool]:
    """The batch of a run and whether its loader streams across epochs (``LoaderConfig.stream``).

    With ``stream`` (the sweep's ``stream_small_subsets``, the paper's way), a subset smaller
    than :data:`STREAM_BELOW_BATCHES` batches keeps ``batch_size`` and streams. Without it, the
    batch is capped at the subset's size: with ``drop_last`` a subset smaller than one batch
    (IPC 10 of CIFAR-10 is 100 images) would yield no batch at all.

    Example:
        >>> spec = RunSpec("A", "stdaug", 10, 5, 0, ipc=10)
        >>> run_batch_size(128, spec, [5000] * 10), run_batch_size(128, spec, [5000] * 10, stream=True)
        ((100, False), (128, True))
    """
    if counts is None:
        return batch_size, False
    if spec.ipc is not None:
        size = sum(min(spec.ipc, c) for c in counts)
    elif spec.fraction is not None:
        size = sum(int(spec.fraction * c) for c in counts)
    else:
        size = sum(counts)
    if stream:
        return batch_size, size < STREAM_BELOW_BATCHES * batch_size
    return max(1, min(batch_size, size)), False
