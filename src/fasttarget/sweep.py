"""Resumable experiment grids over strategies, teachers, augmentations, subsets and seeds.

A sweep configuration (TOML, see ``configs/``) names the dataset, the model, how to train
the teacher ladder, and one or more ``[[grid]]`` tables. Each grid is a Cartesian
product of its axes — strategies × teacher accuracies × teacher augmentations × student
augmentations × IPC values (or fractions) × step budgets × seeds — except that Strategy
A, which uses no teacher, is not multiplied by the teacher axes. Runs are identified by
their axes (:attr:`RunSpec.run_id`), so a run listed by two grids is trained once.

Executing a sweep (:func:`run_sweep`) into a directory ``OUT``:

1. the dataset is converted once (``OUT/data``) unless the config names a converted one;
2. one teacher ladder per teacher augmentation is trained (``OUT/teachers/<aug>/``) and
   every Strategy C teacher's logits are cached once (``OUT/caches/``); all runs share them;
3. every student run trains in its own run directory ``OUT/runs/<run_id>/``;
4. the SQLite index ``OUT/results.sqlite`` and ``OUT/results.csv`` are kept up to date.

It is idempotent: finished runs (``final.json`` says ``done``) are skipped, a run killed
half-way resumes from its last checkpoint, a failed run is recorded with its error while
the others go on (and is retried by the next invocation).

**Paired runs.** A run's data order, subset and augmentation parameters all derive from
its ``seed`` alone; strategy and teacher never enter them. Runs that differ only in
strategy or teacher therefore see an identical sample stream, so A/B/C differences are
not sampling noise.

A subset smaller than one batch (IPC 10 of CIFAR-10 is 100 images) trains with the batch
capped at the subset's size (:func:`run_batch_size`), since ``drop_last`` would leave it
no batch at all.

**Step budgets.** The optimizer runs at a constant learning rate (AdamW, as the paper),
so a run's evaluation at step ``s`` is what a run stopped at ``s`` would report. With
``budgets_from_one_run = true`` (the default) a grid's ``steps = [1950, 7800, 39000]``
trains once to 39,000 steps and reads the smaller budgets from its evaluations (each
budget must then be a multiple of the evaluation interval); ``false`` trains one run per
budget.

Example (a fake student so it runs instantly; the default trains for real):
    >>> import json, tempfile, pathlib
    >>> from fasttarget.sweep import SweepConfig, Stages, run_sweep
    >>> cfg = SweepConfig.from_dict({"name": "demo", "data": {"dir": "/tmp/data"},
    ...     "grid": [{"strategies": ["A"], "student_augs": ["stdaug"], "steps": [10],
    ...               "eval_every": 5, "seeds": [0, 1]}]})
    >>> def fake_train(req):
    ...     req.run_dir.mkdir(parents=True, exist_ok=True)
    ...     (req.run_dir / "final.json").write_text(json.dumps(
    ...         {"status": "done", "step": 10, "test_acc_h": 0.5, "test_acc_g": 0.5, "wall_s": 0}))
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> run_sweep(cfg, out, stages=Stages(train_student=fake_train)).counts
    {'done': 2}
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from fasttarget.errors import UserError
from fasttarget.results import (
    CSV_FILE,
    INDEX_FILE,
    ResultsIndex,
    RunAxes,
    RunRow,
    eval_rows,
    final_accuracies,
    finished,
    read_run_dir,
    subset_label,
)

STRATEGIES = ("A", "B", "C")
DEVICES = ("cpu", "cuda")

# -- configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class GridConfig:
    """One Cartesian grid of student runs.

    Args:
        name: label used in the plan.
        strategies: subset of ``A``, ``B``, ``C``.
        teacher_accuracies: preset teacher accuracies (fractions) for B and C.
        teacher_augs: augmentations the teachers were trained with (B and C).
        student_augs: augmentations of the student runs (e.g. ``stdaug``, ``mixup``).
        ipc: images per class; ``fractions``: fractions of the training split. At most
            one of the two; neither means the full split.
        steps: step budgets.
        seeds: seeds (each also fixes data order, subset and augmentation parameters).
        eval_every: evaluation interval in steps.
    """

    name: str
    strategies: tuple[str, ...]
    student_augs: tuple[str, ...]
    steps: tuple[int, ...]
    seeds: tuple[int, ...]
    eval_every: int
    teacher_accuracies: tuple[float, ...] = ()
    teacher_augs: tuple[str, ...] = ()
    ipc: tuple[int, ...] = ()
    fractions: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        where = f"grid {self.name!r}"
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if not self.strategies or bad:
            raise UserError(f"{where}: strategies must be a non-empty list of A, B, C, got {list(self.strategies)}")
        if any(s in self.strategies for s in "BC") and not (self.teacher_accuracies and self.teacher_augs):
            raise UserError(f"{where}: strategies B and C need teacher_accuracies and teacher_augs")
        if any(not 0 < a < 1 for a in self.teacher_accuracies):
            raise UserError(f"{where}: teacher_accuracies are fractions in (0, 1), e.g. 0.3, got {list(self.teacher_accuracies)}")
        if self.ipc and self.fractions:
            raise UserError(f"{where}: give ipc or fractions, not both (use two grids)")
        if any(n < 1 for n in self.ipc) or any(not 0 < f <= 1 for f in self.fractions):
            raise UserError(f"{where}: ipc values must be ≥ 1 and fractions in (0, 1]")
        if not self.student_augs or not self.steps or not self.seeds:
            raise UserError(f"{where}: student_augs, steps and seeds must not be empty")
        if self.eval_every < 1 or any(s < 1 for s in self.steps):
            raise UserError(f"{where}: steps and eval_every must be positive")


@dataclass(frozen=True)
class TeacherSettings:
    """How teacher ladders are trained (one ladder per teacher augmentation).

    Args:
        arch: teacher architecture; width: its width multiplier.
        max_steps: give up on accuracies not reached by then.
        eval_every: the most steps between two ladder evaluations (the learning curve's
            slope schedules them sooner near a target; on CPU each evaluation costs a pass
            over the test split).
        tolerance: how far above its target a saved teacher may land.
        seed: seed of the teacher runs.
        random_below: grid teacher accuracies at or below this are the untrained network
            (the paper's "10 %" CIFAR-10 teacher: set 0.1 there; 0 = none).
    """

    arch: str = "resnet18"
    width: float = 1.0
    max_steps: int = 20000
    eval_every: int = 100
    tolerance: float = 0.01
    seed: int = 0
    random_below: float = 0.0


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep: data, models, teacher ladder settings and grids.

    Build it from TOML with :meth:`from_toml` (keys as in ``configs/cpu-small.toml``).

    Args:
        name: the sweep's name.
        dataset: dataset name for ``convert`` (``cifar10``, ``cifar100``, ``tinyimagenet``…).
        data_source: raw dataset to convert once into ``OUT/data``; or
        data_dir: an already converted dataset directory.
        arch, width: the student model.
        device: ``cpu`` or ``cuda`` (one worker per visible GPU by default).
        batch_size, temperature: student training settings.
        compile: ``torch.compile`` the student (``None``: on CUDA only).
        teacher: :class:`TeacherSettings`.
        grids: the :class:`GridConfig` tables.
        budgets_from_one_run: read smaller step budgets from the longest run's evaluations.
    """

    name: str
    grids: tuple[GridConfig, ...]
    dataset: str = "cifar10"
    data_source: Path | None = None
    data_dir: Path | None = None
    arch: str = "resnet18"
    width: float = 1.0
    device: str = "cpu"
    batch_size: int = 128
    temperature: float = 2.0
    compile: bool | None = None
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    budgets_from_one_run: bool = True

    def __post_init__(self) -> None:
        if (self.data_source is None) == (self.data_dir is None):
            raise UserError("[data]: give exactly one of `source` (raw data to convert) or `dir` (converted data)")
        if self.device not in DEVICES:
            raise UserError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not self.grids:
            raise UserError("a sweep needs at least one [[grid]] table")
        if self.budgets_from_one_run:
            for g in self.grids:
                off = [s for s in g.steps if s % g.eval_every]
                if off and len(g.steps) > 1:
                    raise UserError(
                        f"grid {g.name!r}: step budgets {off} are not multiples of eval_every={g.eval_every}; "
                        "change eval_every or set budgets_from_one_run = false"
                    )

    @classmethod
    def from_toml(cls, path: Path) -> SweepConfig:
        """Read a TOML sweep configuration (see ``configs/``)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no sweep config {path}: pass a TOML file such as configs/cpu-small.toml")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise UserError(f"{path} is not valid TOML: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepConfig:
        """Build from the parsed TOML tables; unknown keys are refused (they are typos)."""
        data = dict(data)
        _no_unknown("top level", data, {"name", "description", "device", "budgets_from_one_run",
                                         "data", "model", "teacher", "student", "grid"})
        dat = dict(data.get("data", {}))
        _no_unknown("[data]", dat, {"dataset", "source", "dir"})
        model = dict(data.get("model", {}))
        _no_unknown("[model]", model, {"arch", "width"})
        teacher = dict(data.get("teacher", {}))
        _no_unknown("[teacher]", teacher, {f.name for f in fields(TeacherSettings)})
        student = dict(data.get("student", {}))
        _no_unknown("[student]", student, {"batch_size", "temperature", "compile", "eval_every", "seeds"})
        grid_defaults = {k: student[k] for k in ("eval_every", "seeds") if k in student}
        grid_keys = {f.name for f in fields(GridConfig)}
        grids = []
        for i, g in enumerate(data.get("grid", [])):
            g = {"name": f"grid{i + 1}", **grid_defaults, **g}
            _no_unknown(f"[[grid]] {g['name']!r}", g, grid_keys)
            if "eval_every" not in g or "seeds" not in g:
                raise UserError(f"grid {g['name']!r}: set eval_every and seeds (in the grid or in [student])")
            grids.append(GridConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in g.items()}))
        return cls(
            name=data.get("name", "sweep"),
            grids=tuple(grids),
            dataset=dat.get("dataset", "cifar10"),
            data_source=Path(dat["source"]) if "source" in dat else None,
            data_dir=Path(dat["dir"]) if "dir" in dat else None,
            arch=model.get("arch", "resnet18"),
            width=float(model.get("width", 1.0)),
            device=data.get("device", "cpu"),
            batch_size=int(student.get("batch_size", 128)),
            temperature=float(student.get("temperature", 2.0)),
            compile=student.get("compile"),
            teacher=TeacherSettings(**teacher),
            budgets_from_one_run=bool(data.get("budgets_from_one_run", True)),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable copy (stored in the results index)."""
        return json.loads(json.dumps(asdict(self), default=str))


def _no_unknown(where: str, table: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


# -- the plan -------------------------------------------------------------------------


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
        teacher = "none" if self.teacher_acc is None else f"t{_pct(self.teacher_acc)}-{self.teacher_aug}"
        return (
            f"{self.strategy}_{teacher}_{self.student_aug}_{subset_label(self.ipc, self.fraction)}"
            f"_steps{self.steps}_ev{self.eval_every}_seed{self.seed}"
        )


def _pct(acc: float) -> str:
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


# -- requests handed to the stages ----------------------------------------------------


@dataclass(frozen=True)
class LadderRequest:
    """Train one teacher ladder: save the first checkpoint reaching each accuracy."""

    data_dir: Path
    out_dir: Path
    aug: str
    accuracies: tuple[float, ...]
    settings: TeacherSettings
    device: str
    batch_size: int


@dataclass(frozen=True)
class TeacherCheckpoint:
    """A ladder rung: the checkpoint file and the accuracy it really measured."""

    path: Path
    measured_acc: float


@dataclass(frozen=True)
class CacheRequest:
    """Cache one teacher's logits over the training split (Strategy C)."""

    data_dir: Path
    teacher: Path
    out_file: Path
    temperature: float
    device: str


@dataclass(frozen=True)
class RunRequest:
    """Everything one student run needs; ``train_student`` turns it into a run directory."""

    spec: RunSpec
    run_dir: Path
    data_dir: Path
    arch: str
    width: float
    batch_size: int
    temperature: float
    device: str
    compile: bool | None
    resume: bool
    teacher: Path | None = None
    cache: Path | None = None


def train_config(req: RunRequest):
    """The :class:`fasttarget.train.TrainConfig` of a student run.

    Data order, augmentation parameters and the subset all come from ``spec.seed``
    (``seed`` and ``subset_seed``), never from the strategy or the teacher: this is
    what pairs runs across strategies and teachers.
    """
    from fasttarget.train import TrainConfig

    s = req.spec
    return TrainConfig(
        data=req.data_dir, out=req.run_dir, strategy=s.strategy, teacher=req.teacher, cache=req.cache,
        aug=s.student_aug, steps=s.steps, eval_every=s.eval_every, seed=s.seed, ipc=s.ipc,
        fraction=s.fraction, subset_seed=s.seed, arch=req.arch, width=req.width,
        temperature=req.temperature, batch_size=req.batch_size, device=req.device, compile=req.compile,
        resume=req.resume, progress=False,
    )


def _real_prepare_data(cfg: SweepConfig, out: Path) -> Path:
    """Convert ``cfg.data_source`` into ``out/data`` once (a finished conversion is reused)."""
    from fasttarget.convert import ConvertConfig, convert
    from fasttarget.dataset import META_FILE

    data_dir = out / "data"
    if not (data_dir / META_FILE).is_file():
        convert(ConvertConfig(dataset=cfg.dataset, source=cfg.data_source, out=data_dir))
    return data_dir


def _real_train_ladder(req: LadderRequest) -> dict[float, TeacherCheckpoint]:
    """Run :func:`fasttarget.teacher.train_ladder`; map each requested accuracy to its rung."""
    from fasttarget.teacher import LadderConfig, train_ladder

    s = req.settings
    trained = tuple(a for a in req.accuracies if a > s.random_below)
    random_init = [a for a in req.accuracies if a <= s.random_below]
    result = train_ladder(LadderConfig(
        data=req.data_dir, out=req.out_dir, accuracies=trained, aug=req.aug, arch=s.arch, width=s.width,
        max_steps=s.max_steps, eval_every=s.eval_every, tolerance=s.tolerance, seed=s.seed,
        random_init=bool(random_init),
        batch_size=req.batch_size, device=req.device, force=True,
    ))
    found = {}
    for rung in result.rungs:
        for acc in random_init if rung.target is None else [rung.target]:
            found[acc] = TeacherCheckpoint(rung.path, rung.accuracy)
    return found


def _real_build_cache(req: CacheRequest) -> None:
    from fasttarget.cache import CacheBuildConfig, build_cache

    build_cache(CacheBuildConfig(data=req.data_dir, teacher=req.teacher, out=req.out_file,
                                 temperature=req.temperature, device=req.device, progress=False))


def _real_train_student(req: RunRequest) -> None:
    from fasttarget.train import train

    train(train_config(req))


@dataclass(frozen=True)
class Stages:
    """The four steps a sweep calls; tests swap in fakes, the defaults do the real work.

    Each must be a module-level function when ``workers > 1`` (they are pickled).

    Args:
        prepare_data: ``(cfg, out) -> data_dir``; must be idempotent.
        train_ladder: ``LadderRequest -> {accuracy: TeacherCheckpoint}`` (missing = not reached).
        build_cache: ``CacheRequest -> None``, writes ``out_file`` atomically.
        train_student: ``RunRequest -> None``, writes the run directory.
    """

    prepare_data: Callable[[SweepConfig, Path], Path] = _real_prepare_data
    train_ladder: Callable[[LadderRequest], dict[float, TeacherCheckpoint]] = _real_train_ladder
    build_cache: Callable[[CacheRequest], None] = _real_build_cache
    train_student: Callable[[RunRequest], None] = _real_train_student


# -- execution -------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepSummary:
    """Outcome of :func:`run_sweep`: run counts by status and the runs trained now."""

    counts: dict[str, int]
    trained: tuple[str, ...]
    failed: dict[str, str]


@dataclass(frozen=True)
class _Layout:
    out: Path

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
        return self.out / "caches" / f"{aug}-t{_pct(acc)}.h5"


def _guarded(fn: Callable[[Any], Any], arg: Any) -> tuple[bool, Any]:
    """Call ``fn(arg)``; an exception becomes ``(False, "Type: message\\n<traceback>")``."""
    try:
        return True, fn(arg)
    except Exception as err:  # a failed run must not stop the others
        return False, f"{type(err).__name__}: {err}\n{traceback.format_exc()}"


def _init_worker(devices: Any, threads: int) -> None:
    """Pool worker start-up: pin one GPU per process, share the CPU cores fairly."""
    import numba
    import torch

    # Both pools, or the stdaug kernel's numba threads would still fight the other workers.
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    device = devices.get()
    if device is not None:
        torch.cuda.set_device(device)


def _gpu_count(device: str) -> int:
    if device != "cuda":
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_workers(cfg: SweepConfig) -> int:
    """One worker per visible GPU for CUDA sweeps, one otherwise."""
    return max(1, _gpu_count(cfg.device))


def _map_jobs(jobs: list[tuple[str, Callable, Any]], workers: int, device: str) -> Iterator[tuple[str, bool, Any]]:
    """Run ``fn(arg)`` for each ``(key, fn, arg)``; yield ``(key, ok, result)`` as they finish."""
    if not jobs:
        return
    if workers <= 1 or len(jobs) == 1:
        for key, fn, arg in jobs:
            yield (key, *_guarded(fn, arg))
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    gpus = _gpu_count(device)
    devices = ctx.Queue()
    for i in range(workers):
        devices.put(i % gpus if gpus else None)
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(devices, threads)) as pool:
        futures = {pool.submit(_guarded, fn, arg): key for key, fn, arg in jobs}
        for fut in as_completed(futures):
            try:
                ok, result = fut.result()
            except Exception as err:  # the worker process itself died (e.g. out of memory)
                ok, result = False, f"worker process died: {type(err).__name__}: {err}"
            yield futures[fut], ok, result


def _row(spec: RunSpec, status: str, **extra: Any) -> RunRow:
    # asdict holds the axes only: run_id and teacher_key are properties, not fields.
    return RunRow(run_id=spec.run_id, status=status, **asdict(spec), **extra)


def _sync_run(index: ResultsIndex, layout: _Layout, spec: RunSpec, measured: float | None,
              error: str | None = None) -> str:
    """Update the index row of ``spec`` from its run directory; return its status."""
    run_dir = layout.run_dir(spec)
    final, metrics = read_run_dir(run_dir)
    index.replace_evals(spec.run_id, eval_rows(spec.run_id, metrics))
    common = dict(run_dir=str(run_dir), teacher_acc_measured=measured)
    if finished(final):
        acc_h, acc_g = final_accuracies(final)
        index.upsert_run(_row(spec, "done", final_step=final.get("step"), final_acc=acc_h,
                              final_acc_g=acc_g, wall_s=final.get("wall_s"), **common))
        return "done"
    if error is not None:
        index.upsert_run(_row(spec, "failed", error=error, **common))
        return "failed"
    previous = index.runs(run_id=spec.run_id)
    keep = previous[0] if previous and previous[0].status == "failed" else None
    index.upsert_run(_row(spec, "failed" if keep else "planned", error=keep.error if keep else None, **common))
    return "failed" if keep else "planned"


def _load_ladder(layout: _Layout, aug: str) -> dict[str, Any] | None:
    path = layout.ladder_manifest(aug)
    return json.loads(path.read_text()) if path.is_file() else None


def _ladder_done(manifest: dict[str, Any] | None, accs: tuple[float, ...], settings: TeacherSettings) -> bool:
    """A ladder is settled when every accuracy was reached, or missed under the same settings."""
    if manifest is None:
        return False
    found = {float(a) for a in manifest["found"]}
    missed = {float(a) for a in manifest["missed"]}
    same = manifest.get("settings") == json.loads(json.dumps(asdict(settings)))
    return all(a in found or (a in missed and same) for a in accs)


def _first_line(error: str) -> str:
    return error.splitlines()[0] if error else error


def run_sweep(
    cfg: SweepConfig,
    out: Path,
    workers: int | None = None,
    stages: Stages = Stages(),
    log: Callable[[str], None] = lambda _msg: None,
) -> SweepSummary:
    """Execute (or resume) a sweep into ``out``; see the module docstring.

    Args:
        cfg: the sweep.
        out: sweep directory (created; reused when it exists).
        workers: parallel processes (default :func:`default_workers`).
        stages: the functions that prepare data, train teachers, cache and train runs.
        log: receives one line per event (the CLI prints them).

    Returns:
        A :class:`SweepSummary`; failures are in it and in the index, never raised.
    """
    out = Path(out)
    layout = _Layout(out)
    workers = workers or default_workers(cfg)
    plan = plan_sweep(cfg)
    index = ResultsIndex(out / INDEX_FILE)
    try:
        index.set_meta("config", cfg.to_json())
        index.set_meta("budgets", list(plan.budgets))
        ladders = {aug: _load_ladder(layout, aug) for aug in plan.ladders}
        todo = _pending(index, layout, plan, ladders)
        log(f"sweep {cfg.name}: {len(plan.runs)} runs, {len(plan.runs) - len(todo)} already done")
        if not todo:
            return _finish(index, out, plan, (), {})

        data_dir = cfg.data_dir or stages.prepare_data(cfg, out)
        class_counts = _class_counts(data_dir)
        if class_counts:
            index.set_meta("dataset_ipc", min(class_counts))
        failed_teachers = _train_ladders(cfg, plan, layout, data_dir, workers, stages, ladders, log)
        failed_caches = _build_caches(cfg, plan, layout, data_dir, workers, stages, ladders, todo, log)

        jobs, failed = [], {}
        for spec in todo:
            blocker = failed_teachers.get(spec.teacher_aug) if spec.teacher_key else None
            blocker = blocker or _missing_teacher(ladders, spec) or failed_caches.get(spec.teacher_key)
            if blocker:
                failed[spec.run_id] = blocker
                _sync_run(index, layout, spec, None, error=blocker)
                continue
            jobs.append((spec.run_id, stages.train_student,
                         _request(cfg, layout, data_dir, spec, ladders, class_counts)))
            index.upsert_run(_row(spec, "running", run_dir=str(layout.run_dir(spec))))
        by_id = {s.run_id: s for s in todo}
        trained = []
        for n, (run_id, ok, result) in enumerate(_map_jobs(jobs, workers, cfg.device), 1):
            spec = by_id[run_id]
            error = None if ok else result
            if error:
                layout.run_dir(spec).mkdir(parents=True, exist_ok=True)
                (layout.run_dir(spec) / "error.txt").write_text(error)
            elif not finished(read_run_dir(layout.run_dir(spec))[0]):
                error = "the run returned without writing a final.json with status done"
            status = _sync_run(index, layout, spec, _measured(ladders, spec), error=error and _first_line(error))
            if status == "failed":
                failed[run_id] = _first_line(error)
            else:
                trained.append(run_id)
            acc = index.runs(run_id=run_id)[0].final_acc
            log(f"[{n}/{len(jobs)}] {status:6s} {run_id}" + (f"  acc {acc:.2%}" if acc is not None else
                                                              f"  {_first_line(error)}"))
        return _finish(index, out, plan, tuple(trained), failed)
    finally:
        index.write_csv(out / CSV_FILE)
        index.close()


def _class_counts(data_dir: Path) -> list[int] | None:
    """Images per class of the training split, from ``meta.json`` (``None`` without one)."""
    meta = Path(data_dir) / "meta.json"
    return json.loads(meta.read_text())["splits"]["train"]["class_counts"] if meta.is_file() else None


def run_batch_size(batch_size: int, spec: RunSpec, class_counts: list[int] | None) -> int:
    """The batch of a run: ``batch_size``, capped at the subset's size.

    With ``drop_last`` a subset smaller than one batch (IPC 10 of CIFAR-10 is 100 images)
    would yield no batch at all; capped, every step is one pass over the subset.

    Example:
        >>> run_batch_size(128, RunSpec("A", "stdaug", 10, 5, 0, ipc=10), [5000] * 10)
        100
    """
    if class_counts is None:
        return batch_size
    if spec.ipc is not None:
        size = sum(min(spec.ipc, c) for c in class_counts)
    elif spec.fraction is not None:
        size = sum(int(spec.fraction * c) for c in class_counts)
    else:
        size = sum(class_counts)
    return max(1, min(batch_size, size))


def _pending(index: ResultsIndex, layout: _Layout, plan: SweepPlan,
             ladders: dict[str, dict[str, Any] | None]) -> list[RunSpec]:
    """Sync every planned run from disk; return those not finished."""
    return [s for s in plan.runs if _sync_run(index, layout, s, _measured(ladders, s)) != "done"]


def _finish(index: ResultsIndex, out: Path, plan: SweepPlan, trained: tuple[str, ...],
            failed: dict[str, str]) -> SweepSummary:
    ids = {s.run_id for s in plan.runs}
    counts: dict[str, int] = {}
    for row in index.runs():
        if row.run_id in ids:
            counts[row.status] = counts.get(row.status, 0) + 1
    return SweepSummary(counts=counts, trained=trained, failed=failed)


def _measured(ladders: dict[str, dict[str, Any] | None], spec: RunSpec) -> float | None:
    rung = (ladders.get(spec.teacher_aug) or {}).get("found", {}).get(str(spec.teacher_acc))
    return None if rung is None else rung["measured_acc"]


def _missing_teacher(ladders: dict[str, dict[str, Any] | None], spec: RunSpec) -> str | None:
    if spec.teacher_key is None:
        return None
    manifest = ladders.get(spec.teacher_aug)
    if manifest is not None and str(spec.teacher_acc) in manifest["found"]:
        return None
    best = (manifest or {}).get("best_acc")
    reached = f" (best reached {best:.1%})" if best is not None else ""
    return f"teacher {spec.teacher_aug} {_pct(spec.teacher_acc)}% was not reached by the ladder{reached}"


def _request(cfg: SweepConfig, layout: _Layout, data_dir: Path, spec: RunSpec,
             ladders: dict[str, dict[str, Any] | None], class_counts: list[int] | None) -> RunRequest:
    run_dir = layout.run_dir(spec)
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    if run_dir.exists() and not resume:
        # Killed before its first checkpoint: nothing to resume, start clean.
        shutil.rmtree(run_dir)
    teacher = cache = None
    if spec.teacher_key is not None:
        teacher = Path(ladders[spec.teacher_aug]["found"][str(spec.teacher_acc)]["path"])
        if spec.strategy == "C":
            cache = layout.cache_file(*spec.teacher_key)
    return RunRequest(spec=spec, run_dir=run_dir, data_dir=data_dir, arch=cfg.arch, width=cfg.width,
                      batch_size=run_batch_size(cfg.batch_size, spec, class_counts),
                      temperature=cfg.temperature, device=cfg.device, compile=cfg.compile, resume=resume, teacher=teacher, cache=cache)


def _train_ladders(cfg: SweepConfig, plan: SweepPlan, layout: _Layout, data_dir: Path, workers: int,
                   stages: Stages, ladders: dict[str, dict[str, Any] | None],
                   log: Callable[[str], None]) -> dict[str, str]:
    """Train the unsettled ladders; update ``ladders`` in place; return errors by aug."""
    jobs = []
    for aug, accs in plan.ladders.items():
        if _ladder_done(ladders[aug], accs, cfg.teacher):
            continue
        log(f"teacher ladder {aug}: training to {', '.join(_pct(a) + '%' for a in accs)}")
        req = LadderRequest(data_dir=data_dir, out_dir=layout.ladder_dir(aug), aug=aug, accuracies=accs,
                            settings=cfg.teacher, device=cfg.device, batch_size=cfg.batch_size)
        jobs.append((aug, stages.train_ladder, req))
    errors = {}
    for aug, ok, result in _map_jobs(jobs, workers, cfg.device):
        if not ok:
            errors[aug] = f"teacher ladder {aug} failed: {_first_line(result)}"
            log(errors[aug])
            continue
        found = {str(float(a)): {"path": str(c.path), "measured_acc": c.measured_acc} for a, c in result.items()}
        manifest = {
            "found": found,
            "missed": [str(a) for a in plan.ladders[aug] if str(a) not in found],
            "best_acc": max((c.measured_acc for c in result.values()), default=None),
            "settings": asdict(cfg.teacher),
        }
        layout.ladder_manifest(aug).parent.mkdir(parents=True, exist_ok=True)
        layout.ladder_manifest(aug).write_text(json.dumps(manifest, indent=1))
        ladders[aug] = manifest
        log(f"teacher ladder {aug}: reached {', '.join(f'{c.measured_acc:.1%}' for c in result.values()) or 'none'}"
            + (f"; missed {', '.join(manifest['missed'])}" if manifest["missed"] else ""))
    return errors


def _build_caches(cfg: SweepConfig, plan: SweepPlan, layout: _Layout, data_dir: Path, workers: int,
                  stages: Stages, ladders: dict[str, dict[str, Any] | None], todo: list[RunSpec],
                  log: Callable[[str], None]) -> dict[tuple[str, float], str]:
    """Build the missing caches that pending C runs need; return errors by teacher."""
    needed = {s.teacher_key for s in todo if s.strategy == "C"}
    jobs = []
    for aug, acc in plan.caches:
        rung = (ladders.get(aug) or {}).get("found", {}).get(str(acc))
        if (aug, acc) not in needed or rung is None or layout.cache_file(aug, acc).is_file():
            continue
        layout.cache_file(aug, acc).parent.mkdir(parents=True, exist_ok=True)
        req = CacheRequest(data_dir=data_dir, teacher=Path(rung["path"]), out_file=layout.cache_file(aug, acc),
                           temperature=cfg.temperature, device=cfg.device)
        jobs.append(((aug, acc), stages.build_cache, req))
    errors = {}
    for key, ok, result in _map_jobs(jobs, workers, cfg.device):
        if not ok:
            errors[key] = f"cache for teacher {key[0]} {_pct(key[1])}% failed: {_first_line(result)}"
        log(errors.get(key) or f"cache for teacher {key[0]} {_pct(key[1])}% built")
    return errors


# -- dry run ---------------------------------------------------------------------------


def describe_plan(cfg: SweepConfig, out: Path) -> str:
    """The plan in words for ``--dry-run``: what exists, what would be trained. Writes nothing."""
    out = Path(out)
    layout = _Layout(out)
    plan = plan_sweep(cfg)
    lines = [f"sweep {cfg.name} → {out}"]
    if cfg.data_dir is not None:
        lines.append(f"data: {cfg.data_dir} (converted)")
    else:
        lines.append(f"data: convert {cfg.dataset} from {cfg.data_source} into {out / 'data'}")
    for aug, accs in plan.ladders.items():
        state = "settled" if _ladder_done(_load_ladder(layout, aug), accs, cfg.teacher) else "to train"
        lines.append(f"teacher ladder {aug}: {', '.join(_pct(a) + '%' for a in accs)} ({state})")
    for aug, acc in plan.caches:
        state = "exists" if layout.cache_file(aug, acc).is_file() else "to build"
        lines.append(f"cache {layout.cache_file(aug, acc).name} ({state})")
    states: dict[str, int] = {}
    steps_left = 0
    run_lines = []
    for spec in plan.runs:
        final, metrics = read_run_dir(layout.run_dir(spec))
        if finished(final):
            state = "done"
        elif (layout.run_dir(spec) / "checkpoints" / "last.pt").is_file():
            state = "resume"
            steps_left += spec.steps - (metrics[-1]["step"] if metrics else 0)
        else:
            state = "new"
            steps_left += spec.steps
        states[state] = states.get(state, 0) + 1
        run_lines.append(f"  {state:6s} {spec.run_id}")
    summary = ", ".join(f"{v} {k}" for k, v in states.items())
    lines.append(f"runs: {len(plan.runs)} ({summary}); {steps_left} student steps to train")
    for grid in cfg.grids:
        n = len(expand_grid(grid, cfg.budgets_from_one_run))
        lines.append(f"  grid {grid.name}: {n} runs; budgets {', '.join(map(str, grid.steps))}")
    return "\n".join(lines + run_lines)

