"""What a sweep trains: its student runs, the teacher ladders and caches they share, and where each lives."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Sequence
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

    def fleet_dir(self, fleet_id: str) -> Path:
        # Only the fleet's fleet.json and lock: its members write runs/<run_id>, as solo runs do.
        return self.out / "fleets" / fleet_id

    def ladder_dir(self, aug: str) -> Path:
        return self.out / "teachers" / aug

    def ladder_manifest(self, aug: str) -> Path:
        # Not the ladder's own ladder.json: this one maps each requested accuracy to its rung.
        return self.ladder_dir(aug) / "rungs.json"

    def cache_file(self, aug: str, acc: float) -> Path:
        return self.out / "caches" / f"{aug}-t{pct(acc)}.h5"

    def teacher_scores(self, aug: str, acc: float) -> Path:
        # One teacher's logits for the diagnostics of every run that compares with it.
        return self.out / "diagnostics" / f"{aug}-t{pct(acc)}.npz"

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


# -- fleets ------------------------------------------------------------------------------

# Most members of a CPU fleet unless --max-fleet says otherwise; see docs/design.md, "Sweeps as
# fleets", for the measurement it rests on.
CPU_MAX_FLEET = 1
# Most members of a CUDA fleet sized from free memory (the largest fleet benchmarked).
CUDA_MAX_FLEET = 32
# Part of the free device memory a fleet may plan to fill: the estimate leaves out the
# allocator's fragmentation, compile workspaces and cuDNN's scratch.
MEMORY_SHARE = 0.7


def fleet_key(spec: RunSpec, batch_size: int) -> tuple:
    """What the members of one fleet share: everything but strategy and teacher.

    Dataset, architecture and width are the sweep's own; within a sweep, runs with equal
    student augmentation, subset, seed, step budget, evaluation interval and batch size see
    the same batches (see "Paired runs" in :mod:`fasttarget.sweep`), so they can share one
    loader pass.
    """
    return (spec.student_aug, spec.ipc, spec.fraction, spec.seed, spec.steps, spec.eval_every, batch_size)


def group_fleets(runs: Sequence[RunSpec], max_fleet: int, batch_size: Callable[[RunSpec], int],
                 resumed_at: Callable[[RunSpec], int]) -> list[tuple[RunSpec, ...]]:
    """The runs as fleets of at most ``max_fleet`` members, in plan order (a fleet of one is a solo run).

    Runs group by :func:`fleet_key` and by the step their checkpoint holds (``resumed_at``, 0
    without one): a fleet killed half-way regroups with exactly its unfinished members, all at
    one step, and resumes from their checkpoints, while runs not yet started form fleets of
    their own. A group larger than ``max_fleet`` splits into fleets of equal size (7 by 4:
    5 by 4: 3 + 2, never 4 + 1).

    Example:
        >>> runs = [RunSpec(s, "stdaug", 100, 50, seed, 0.3 if s != "A" else None,
        ...                 "noaug" if s != "A" else None) for seed in (0, 1) for s in "ABC"]
        >>> [[r.strategy + str(r.seed) for r in f] for f in group_fleets(runs, 2, lambda r: 128, lambda r: 0)]
        [['A0', 'B0'], ['C0'], ['A1', 'B1'], ['C1']]
    """
    if max_fleet < 1:
        raise ValueError(f"max_fleet must be ≥ 1, got {max_fleet}")
    groups: dict[tuple, list[RunSpec]] = {}
    for spec in runs:
        groups.setdefault((fleet_key(spec, batch_size(spec)), resumed_at(spec)), []).append(spec)
    fleets = []
    for members in groups.values():
        count = -(-len(members) // max_fleet)
        size = -(-len(members) // count)
        fleets += [tuple(members[i:i + size]) for i in range(0, len(members), size)]
    return fleets


def fleet_id(specs: Sequence[RunSpec]) -> str:
    """A short stable name for a fleet of runs (its directory under ``fleets/``).

    Example:
        >>> len(fleet_id([RunSpec("A", "stdaug", 10, 5, 0)]))
        12
    """
    return hashlib.sha1("\n".join(s.run_id for s in specs).encode()).hexdigest()[:12]


def fleet_size(device: str, max_fleet: int | None, member_bytes: int | None = None,
               free_bytes: int | None = None) -> int:
    """How many members a fleet may have.

    On CPU ``max_fleet`` (default :data:`CPU_MAX_FLEET`). On CUDA as many members as
    :data:`MEMORY_SHARE` of the free memory holds at ``member_bytes`` each (at most
    ``max_fleet``, default :data:`CUDA_MAX_FLEET`), at least one.

    Example:
        >>> fleet_size("cuda", None, member_bytes=2 << 30, free_bytes=40 << 30)
        14
        >>> fleet_size("cuda", 8, member_bytes=2 << 30, free_bytes=40 << 30), fleet_size("cpu", None)
        (8, 1)
    """
    if max_fleet is not None and max_fleet < 1:
        raise ValueError(f"max_fleet must be ≥ 1, got {max_fleet}")
    if device != "cuda":
        return max_fleet or CPU_MAX_FLEET
    limit = max_fleet or CUDA_MAX_FLEET
    if member_bytes is None or free_bytes is None:
        return limit
    return max(1, min(limit, int(free_bytes * MEMORY_SHARE // member_bytes)))
