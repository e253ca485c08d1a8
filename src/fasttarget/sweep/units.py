"""The units a sweep is made of — dataset conversion, teacher ladder, cache build, student run, diagnostics.

A :class:`Unit` knows its key, the units it depends on, the resources it declares, whether
its work is already on disk, how to build its request for the next attempt, which job a
worker runs, and what to record when it ends. The driver (:mod:`fasttarget.sweep.run`)
treats every kind alike. Student runs are :class:`RunUnit` s, or, grouped by
:func:`~fasttarget.sweep.plan.group_fleets`, :class:`FleetUnit` s that train several of them in
one process on one loader pass (:mod:`fasttarget.fleet`); either way each run writes
``runs/<run_id>/`` and has its own row in the index. With ``[report] diagnostics`` (the
default) each finished run is then measured (:class:`DiagnosticsUnit`, from its teacher's
scores, computed once per teacher by a :class:`ScoreUnit`) and its row gains the target
entropy and the agreement with its teacher (:mod:`fasttarget.diagnostics`).
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from fasttarget.diagnostics import read_diagnostics
from fasttarget.results import ResultsIndex, RunRow, UnitRow, eval_rows, final_accuracies, finished, read_run_dir
from fasttarget.subsets import SubsetConfig
from fasttarget.sweep.config import Resources, SweepConfig
from fasttarget.sweep.plan import (
    RunSpec,
    SweepLayout,
    SweepPlan,
    class_counts,
    fleet_id,
    group_fleets,
    pct,
    run_batch_size,
)
from fasttarget.sweep.stages import (
    CacheRequest,
    DataRequest,
    DiagnosticsRequest,
    FleetRequest,
    LadderRequest,
    RunRequest,
    ScoreRequest,
    Stages,
    ladder_job,
    ladder_settled,
    load_rungs,
)


class Blocked(Exception):
    """A unit cannot run at all (its teacher was never reached): recorded failed, not retried."""


@dataclass
class SweepContext:
    """What units read and write while a sweep runs; the index is written by the driver only."""

    cfg: SweepConfig
    plan: SweepPlan
    layout: SweepLayout
    stages: Stages
    index: ResultsIndex | None = None
    _counts: list[int] | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.cfg.data_dir or self.layout.data

    def class_counts(self) -> list[int] | None:
        """Images per class of the training split, once the dataset exists."""
        if self._counts is None:
            self._counts = class_counts(self.data_dir)
        return self._counts

    def rungs(self, aug: str) -> dict[str, Any] | None:
        return load_rungs(self.layout.ladder_dir(aug))

    def rung(self, aug: str, acc: float) -> dict[str, Any]:
        """The ladder's rung for a teacher accuracy, or :class:`Blocked` saying it was not reached."""
        manifest = self.rungs(aug)
        found = (manifest or {}).get("found", {}).get(str(acc))
        if found is None:
            best = (manifest or {}).get("best_acc")
            reached = f" (best reached {best:.1%})" if best is not None else ""
            raise Blocked(f"teacher {aug} {pct(acc)}% was not reached by the ladder{reached}")
        return found


class Unit(ABC):
    """One unit of work of a sweep."""

    kind: ClassVar[str]
    # Runs with whatever of its dependencies finished (see UnitGraph): a fleet, whose members
    # need different teachers and caches.
    partial: ClassVar[bool] = False

    @property
    @abstractmethod
    def key(self) -> str:
        """Unique within a sweep: ``<kind>:<name>``."""

    @property
    @abstractmethod
    def label(self) -> str:
        """How progress lines name it."""

    def deps(self, ctx: SweepContext) -> tuple[str, ...]:
        """Keys of the units that must finish first."""
        return ()

    @property
    def runs(self) -> tuple[RunUnit, ...]:
        """The student runs it trains (none for data, ladders, caches and diagnostics)."""
        return ()

    @property
    def wanted(self) -> bool:
        """Whether a sweep runs it for its own sake (runs, diagnostics), not only for what depends on it."""
        return bool(self.runs)

    def resources(self, ctx: SweepContext) -> Resources:
        return ctx.cfg.unit_resources(self.kind)

    @abstractmethod
    def done(self, ctx: SweepContext) -> bool:
        """Whether its work is complete on disk (then it is not run again)."""

    @abstractmethod
    def request(self, ctx: SweepContext) -> Any:
        """The request of the next attempt (may raise :class:`Blocked`)."""

    @abstractmethod
    def job(self, stages: Stages) -> Callable[[Any], Any]:
        """The function a worker calls with the request."""

    def record(self, ctx: SweepContext, status: str, attempts: int, error: str | None = None,
               wall_s: float | None = None) -> str:
        """Write its state to the index; return the detail of its progress line."""
        ctx.index.upsert_unit(UnitRow(key=self.key, kind=self.kind, status=status, attempts=attempts,
                                      error=error, wall_s=wall_s))
        return f"  {first_line(error)}" if error else ""


def first_line(error: str | None) -> str:
    return error.splitlines()[0] if error else ""


def ladder_key(aug: str) -> str:
    return f"ladder:{aug}"


def cache_key(aug: str, acc: float) -> str:
    return f"cache:{aug}-t{pct(acc)}"


class DataUnit(Unit):
    """Convert the raw dataset once into ``OUT/data``."""

    kind = "data"
    key = "data:convert"

    @property
    def label(self) -> str:
        return "dataset conversion"

    def done(self, ctx: SweepContext) -> bool:
        return (ctx.data_dir / "meta.json").is_file()

    def request(self, ctx: SweepContext) -> DataRequest:
        return DataRequest(dataset=ctx.cfg.dataset, source=ctx.cfg.data_source, out_dir=ctx.layout.data)

    def job(self, stages: Stages) -> Callable[[DataRequest], None]:
        return stages.prepare_data


@dataclass(frozen=True)
class LadderUnit(Unit):
    """Train one teacher ladder (per teacher augmentation) up to every accuracy the grids ask for."""

    aug: str
    accuracies: tuple[float, ...]
    kind: ClassVar[str] = "ladder"

    @property
    def key(self) -> str:
        return ladder_key(self.aug)

    @property
    def label(self) -> str:
        return f"teacher ladder {self.aug} ({', '.join(pct(a) + '%' for a in self.accuracies)})"

    def deps(self, ctx: SweepContext) -> tuple[str, ...]:
        return (DataUnit.key,) if ctx.cfg.data_dir is None else ()

    def done(self, ctx: SweepContext) -> bool:
        return ladder_settled(ctx.rungs(self.aug), self.accuracies, ctx.cfg.teacher)

    def request(self, ctx: SweepContext) -> LadderRequest:
        return LadderRequest(data_dir=ctx.data_dir, out_dir=ctx.layout.ladder_dir(self.aug), aug=self.aug,
                             accuracies=self.accuracies, settings=ctx.cfg.teacher, device=ctx.cfg.device,
                             batch_size=ctx.cfg.batch_size)

    def job(self, stages: Stages) -> Callable[[LadderRequest], None]:
        return ladder_job(stages.train_ladder)

    def record(self, ctx: SweepContext, status: str, attempts: int, error: str | None = None,
               wall_s: float | None = None) -> str:
        detail = super().record(ctx, status, attempts, error, wall_s)
        manifest = ctx.rungs(self.aug) if status == "done" else None
        if manifest is None:
            return detail
        reached = ", ".join(f"{r['measured_acc']:.1%}" for r in manifest["found"].values()) or "none"
        return f"  reached {reached}" + (f"; missed {', '.join(manifest['missed'])}" if manifest["missed"] else "")


@dataclass(frozen=True)
class CacheUnit(Unit):
    """Cache one teacher's logits for the Strategy C runs that read it."""

    aug: str
    acc: float
    kind: ClassVar[str] = "cache"

    @property
    def key(self) -> str:
        return cache_key(self.aug, self.acc)

    @property
    def label(self) -> str:
        return f"cache of teacher {self.aug} {pct(self.acc)}%"

    def deps(self, ctx: SweepContext) -> tuple[str, ...]:
        return (ladder_key(self.aug),)

    def done(self, ctx: SweepContext) -> bool:
        return ctx.layout.cache_file(self.aug, self.acc).is_file()

    def request(self, ctx: SweepContext) -> CacheRequest:
        out_file = ctx.layout.cache_file(self.aug, self.acc)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        return CacheRequest(data_dir=ctx.data_dir, teacher=Path(ctx.rung(self.aug, self.acc)["path"]),
                            out_file=out_file, temperature=ctx.cfg.temperature, device=ctx.cfg.device)

    def job(self, stages: Stages) -> Callable[[CacheRequest], None]:
        return stages.build_cache


@dataclass(frozen=True)
class RunUnit(Unit):
    """One student run; its row in the index's ``runs`` table follows its run directory."""

    spec: RunSpec
    kind: ClassVar[str] = "run"

    @property
    def key(self) -> str:
        return f"run:{self.spec.run_id}"

    @property
    def label(self) -> str:
        return self.spec.run_id

    @property
    def runs(self) -> tuple[RunUnit, ...]:
        return (self,)

    def blocked(self, ctx: SweepContext) -> str | None:
        """Why it cannot run (its settled ladder missed its teacher), else ``None``."""
        if self.spec.teacher_key is None or ctx.rungs(self.spec.teacher_aug) is None:
            return None
        try:
            ctx.rung(*self.spec.teacher_key)
        except Blocked as blocked:
            return str(blocked)
        return None

    def unavailable(self, ctx: SweepContext) -> str | None:
        """Once its dependencies have settled: why it cannot train now (no teacher, no cache), or ``None``."""
        blocked = self.blocked(ctx)
        if blocked is None and self.spec.strategy == "C" and not ctx.layout.cache_file(*self.spec.teacher_key).is_file():
            blocked = f"the cache of teacher {self.spec.teacher_aug} {pct(self.spec.teacher_acc)}% was not built"
        return blocked

    def resumed_at(self, ctx: SweepContext) -> int:
        """The step of its checkpoint (0 without one): what a fleet's members must agree on."""
        path = ctx.layout.run_dir(self.spec) / "checkpoints" / "last.pt"
        if not path.is_file():
            return 0
        import torch

        try:
            return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
        except Exception:  # unreadable: grouped apart from the rest; its own resume then says why
            return -1

    def deps(self, ctx: SweepContext) -> tuple[str, ...]:
        deps = [DataUnit.key] if ctx.cfg.data_dir is None else []
        if self.spec.teacher_key is not None:
            deps.append(ladder_key(self.spec.teacher_aug))
            if self.spec.strategy == "C":
                deps.append(cache_key(*self.spec.teacher_key))
        return tuple(deps)

    def done(self, ctx: SweepContext) -> bool:
        return finished(read_run_dir(ctx.layout.run_dir(self.spec))[0])

    def request(self, ctx: SweepContext) -> RunRequest:
        spec, run_dir = self.spec, ctx.layout.run_dir(self.spec)
        teacher = cache = None
        if spec.teacher_key is not None:
            teacher = Path(ctx.rung(*spec.teacher_key)["path"])
            if spec.strategy == "C":
                cache = ctx.layout.cache_file(*spec.teacher_key)
        resume = (run_dir / "checkpoints" / "last.pt").is_file()
        if run_dir.exists() and not resume:
            # Killed before its first checkpoint: nothing to resume, start clean.
            shutil.rmtree(run_dir)
        batch, stream = run_batch_size(ctx.cfg.batch_size, spec, ctx.class_counts(), ctx.cfg.stream_small_subsets)
        return RunRequest(spec=spec, run_dir=run_dir, data_dir=ctx.data_dir, arch=ctx.cfg.arch,
                          width=ctx.cfg.width, batch_size=batch, stream=stream,
                          temperature=ctx.cfg.temperature, device=ctx.cfg.device, compile=ctx.cfg.compile,
                          resume=resume, teacher=teacher, cache=cache)

    def job(self, stages: Stages) -> Callable[[RunRequest], None]:
        return stages.train_student

    def measured(self, ctx: SweepContext) -> float | None:
        """The accuracy its teacher really measured (``None`` for A or before the ladder)."""
        if self.spec.teacher_key is None:
            return None
        rung = ((ctx.rungs(self.spec.teacher_aug) or {}).get("found") or {}).get(str(self.spec.teacher_acc))
        return None if rung is None else rung["measured_acc"]

    def record(self, ctx: SweepContext, status: str, attempts: int, error: str | None = None,
               wall_s: float | None = None) -> str:
        super().record(ctx, status, attempts, error, wall_s)
        run_dir = ctx.layout.run_dir(self.spec)
        if error is not None and "\n" in error:  # a traceback: keep it next to the run
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(error)
        status = sync_run(ctx, self, error=first_line(error) if error else None, running=status == "running")
        acc = ctx.index.runs(run_id=self.spec.run_id)[0].final_acc
        return f"  acc {acc:.2%}" if status == "done" and acc is not None else (f"  {first_line(error)}" if error else "")


@dataclass(frozen=True)
class FleetUnit(Unit):
    """Student runs trained together as one fleet (:func:`fasttarget.fleet.train_fleet`).

    Each member writes ``runs/<run_id>/`` as it would alone and has its own index row; the
    fleet's directory ``fleets/<id>/`` holds only its ``fleet.json`` and lock. It runs once
    every member's teacher and cache exist; a member whose teacher the ladder missed is
    recorded failed and the others train without it.
    """

    members: tuple[RunUnit, ...]
    kind: ClassVar[str] = "fleet"
    partial: ClassVar[bool] = True

    @property
    def fleet_id(self) -> str:
        return fleet_id([m.spec for m in self.members])

    @property
    def key(self) -> str:
        return f"fleet:{self.fleet_id}"

    @property
    def label(self) -> str:
        return f"fleet {self.fleet_id} of {len(self.members)} ({', '.join(m.label for m in self.members)})"

    @property
    def runs(self) -> tuple[RunUnit, ...]:
        return self.members

    def deps(self, ctx: SweepContext) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for m in self.members for d in m.deps(ctx)))

    def resources(self, ctx: SweepContext) -> Resources:
        return ctx.cfg.unit_resources("fleet")

    def done(self, ctx: SweepContext) -> bool:
        return all(m.done(ctx) or m.blocked(ctx) is not None for m in self.members)

    def request(self, ctx: SweepContext) -> FleetRequest:
        """The members that can train (called once every dependency has settled)."""
        left = [m for m in self.members if not m.done(ctx)]
        requests = [m.request(ctx) for m in left if m.unavailable(ctx) is None]
        if not requests:
            raise Blocked(left[0].unavailable(ctx))
        return FleetRequest(members=tuple(requests), fleet_dir=ctx.layout.fleet_dir(self.fleet_id))

    def job(self, stages: Stages) -> Callable[[FleetRequest], None]:
        return stages.train_fleet

    def record(self, ctx: SweepContext, status: str, attempts: int, error: str | None = None,
               wall_s: float | None = None) -> str:
        super().record(ctx, status, attempts, error, wall_s)
        if error is not None and "\n" in error:  # a traceback: keep it next to the fleet
            fleet_dir = ctx.layout.fleet_dir(self.fleet_id)
            fleet_dir.mkdir(parents=True, exist_ok=True)
            (fleet_dir / "error.txt").write_text(error)
        accs = []
        for m in self.members:
            blocked = None if m.done(ctx) else m.unavailable(ctx)
            reason = blocked or (first_line(error) if error else None)
            if sync_run(ctx, m, error=reason, running=status == "running" and blocked is None) == "done":
                accs.append(ctx.index.runs(run_id=m.spec.run_id)[0].final_acc)
        if status == "done" and accs:
            return "  acc " + " ".join(f"{a:.2%}" if a is not None else "-" for a in accs)
        return f"  {first_line(error)}" if error else ""


def scores_key(aug: str, acc: float) -> str:
    return f"diagnostics:teacher-{aug}-t{pct(acc)}"


def run_subset(spec: RunSpec) -> SubsetConfig:
    """The training subset of a run (its seed is also the subset's, see :func:`~fasttarget.sweep.stages.train_config`)."""
    return SubsetConfig(ipc=spec.ipc, fraction=spec.fraction, seed=spec.seed)


def teacher_name(key: tuple[str, float]) -> str:
    """``("noaug", 0.6) -> "noaug-t60"``: a teacher as the index names it."""
    return f"{key[0]}-t{pct(key[1])}"


@dataclass(frozen=True)
class ScoreUnit(Unit):
    """Score one teacher once for the diagnostics of every run that compares with it."""

    aug: str
    acc: float
    subsets: tuple[SubsetConfig, ...]
    kind: ClassVar[str] = "diagnostics"

    @property
    def key(self) -> str:
        return scores_key(self.aug, self.acc)

    @property
    def label(self) -> str:
        return f"scores of teacher {self.aug} {pct(self.acc)}%"

    def deps(self, ctx: SweepContext) -> tuple[str, ...]:
        return (ladder_key(self.aug),)

    def done(self, ctx: SweepContext) -> bool:
        return ctx.layout.teacher_scores(self.aug, self.acc).is_file()

    def request(self, ctx: SweepContext) -> ScoreRequest:
        return ScoreRequest(teacher=Path(ctx.rung(self.aug, self.acc)["path"]), data_dir=ctx.data_dir,
                            subsets=self.subsets, out_file=ctx.layout.teacher_scores(self.aug, self.acc),
                            device=ctx.cfg.device)

    def job(self, stages: Stages) -> Callable[[ScoreRequest], None]:
        return stages.score_teacher


@dataclass(frozen=True)
class DiagnosticsUnit(Unit):
    """Measure one finished run: its target entropy and its agreement with ``teacher``.

    It runs after ``after`` (the run's own unit, or the fleet that trains it) and the teacher's
    :class:`ScoreUnit`; partial, so a Strategy A run whose comparison teacher was never reached
    is still measured (without an agreement).
    """

    run: RunUnit
    after: str
    teacher: tuple[str, float] | None
    kind: ClassVar[str] = "diagnostics"
    partial: ClassVar[bool] = True

    @property
    def key(self) -> str:
        return f"diagnostics:{self.run.spec.run_id}"

    @property
    def label(self) -> str:
        return f"diagnostics of {self.run.spec.run_id}"

    @property
    def wanted(self) -> bool:
        return True

    def deps(self, ctx: SweepContext) -> tuple[str, ...]:
        return (self.after,) + (() if self.teacher is None else (scores_key(*self.teacher),))

    def done(self, ctx: SweepContext) -> bool:
        return read_diagnostics(ctx.layout.run_dir(self.run.spec)) is not None

    def request(self, ctx: SweepContext) -> DiagnosticsRequest:
        spec = self.run.spec
        if not self.run.done(ctx):
            raise Blocked(f"run {spec.run_id} did not finish")
        scores = None if self.teacher is None else ctx.layout.teacher_scores(*self.teacher)
        if scores is not None and not scores.is_file():
            if spec.strategy == "B":
                raise Blocked(f"teacher {teacher_name(self.teacher)} was not scored")
            scores = None  # A and C: no agreement, the entropy is still measured
        return DiagnosticsRequest(
            run_dir=ctx.layout.run_dir(spec), data_dir=ctx.data_dir, strategy=spec.strategy,
            temperature=ctx.cfg.temperature, subset=run_subset(spec), device=ctx.cfg.device, teacher_scores=scores,
            teacher=None if scores is None else teacher_name(self.teacher),
            cache=ctx.layout.cache_file(*spec.teacher_key) if spec.strategy == "C" else None)

    def job(self, stages: Stages) -> Callable[[DiagnosticsRequest], None]:
        return stages.diagnose_run

    def record(self, ctx: SweepContext, status: str, attempts: int, error: str | None = None,
               wall_s: float | None = None) -> str:
        detail = super().record(ctx, status, attempts, error, wall_s)
        if status != "done":
            return detail
        sync_run(ctx, self.run)
        row = ctx.index.runs(run_id=self.run.spec.run_id)[0]
        agreement = "" if row.agreement is None else f", agreement {row.agreement:.1%} with {row.agreement_teacher}"
        return f"  entropy {row.target_entropy:.3f}{agreement}"


def comparison_teacher(spec: RunSpec, plan: SweepPlan) -> tuple[str, float] | None:
    """The teacher a run's agreement is measured with: its own (B, C), or for A the strongest
    teacher (highest preset accuracy, then augmentation name) of the soft-target runs paired with
    it — same student augmentation, subset, steps, evaluation interval and seed — else ``None``.

    Example:
        >>> runs = (RunSpec("A", "stdaug", 10, 5, 0), RunSpec("B", "stdaug", 10, 5, 0, 0.3, "noaug"),
        ...         RunSpec("B", "stdaug", 10, 5, 0, 0.6, "noaug"), RunSpec("B", "stdaug", 10, 5, 1, 0.9, "noaug"))
        >>> comparison_teacher(runs[0], SweepPlan(runs, {}, (), (10,)))
        ('noaug', 0.6)
    """
    if spec.teacher_key is not None:
        return spec.teacher_key
    pair = (spec.student_aug, spec.ipc, spec.fraction, spec.steps, spec.eval_every, spec.seed)
    teachers = [s.teacher_key for s in plan.runs if s.teacher_key is not None
                and (s.student_aug, s.ipc, s.fraction, s.steps, s.eval_every, s.seed) == pair]
    return max(teachers, key=lambda t: (t[1], t[0]), default=None)


def diagnostics_units(ctx: SweepContext, trained_by: dict[str, str]) -> list[Unit]:
    """One :class:`ScoreUnit` per teacher compared with, one :class:`DiagnosticsUnit` per run.

    Args:
        trained_by: each run id mapped to the key of the unit that trains it (a run or a fleet).
    """
    teachers: dict[tuple[str, float], dict[SubsetConfig, None]] = {}
    runs = []
    for spec in ctx.plan.runs:
        teacher = comparison_teacher(spec, ctx.plan)
        if teacher is not None:
            subsets = teachers.setdefault(teacher, {})
            if spec.strategy == "B":  # B's entropy is the teacher's on the run's own images
                subsets.setdefault(run_subset(spec), None)
        runs.append(DiagnosticsUnit(RunUnit(spec), trained_by[spec.run_id], teacher))
    return [ScoreUnit(aug, acc, tuple(subsets)) for (aug, acc), subsets in sorted(teachers.items())] + runs


def sync_run(ctx: SweepContext, unit: RunUnit, error: str | None = None, running: bool = False) -> str:
    """Update the index row of a run from its run directory; return its status.

    A finished run directory wins over everything; otherwise ``error`` makes it failed,
    ``running`` marks it submitted, and a run with neither keeps an earlier failure (and its
    error) or is planned.
    """
    spec = unit.spec
    run_dir = ctx.layout.run_dir(spec)
    final, metrics = read_run_dir(run_dir)
    ctx.index.replace_evals(spec.run_id, eval_rows(spec.run_id, metrics))
    diagnostics = read_diagnostics(run_dir) or {}
    common = dict(run_id=spec.run_id, **asdict(spec), run_dir=ctx.layout.relative(run_dir),
                  teacher_acc_measured=unit.measured(ctx),
                  **{k: diagnostics.get(k) for k in ("target_entropy", "agreement", "agreement_teacher")})
    if finished(final):
        acc_h, acc_g = final_accuracies(final)
        row = RunRow(status="done", final_step=final.get("step"), final_acc=acc_h, final_acc_g=acc_g,
                     wall_s=final.get("wall_s"), **common)
    elif error is not None or running:
        row = RunRow(status="failed" if error is not None else "running", error=error, **common)
    else:
        previous = ctx.index.runs(run_id=spec.run_id)
        keep = previous[0] if previous and previous[0].status == "failed" else None
        row = RunRow(status="failed" if keep else "planned", error=keep.error if keep else None, **common)
    ctx.index.upsert_run(row)
    return row.status


def build_units(ctx: SweepContext, max_fleet: int = 1) -> list[Unit]:
    """Every unit of the plan, in the order the driver prefers them when several are ready:
    conversion, ladders, caches (they unblock others), runs in grid order, then diagnostics
    (with ``[report] diagnostics``; they never delay a run).

    With ``max_fleet`` > 1 the runs still to train are grouped into fleets
    (:func:`~fasttarget.sweep.plan.group_fleets`); finished runs stay single units (never
    trained again) and a fleet of one is a solo run.
    """
    units = _training_units(ctx, max_fleet)
    if not ctx.cfg.diagnostics:
        return units
    trained_by = {r.spec.run_id: u.key for u in units for r in u.runs}
    return units + diagnostics_units(ctx, trained_by)


def _training_units(ctx: SweepContext, max_fleet: int) -> list[Unit]:
    units: list[Unit] = [DataUnit()] if ctx.cfg.data_dir is None else []
    units += [LadderUnit(aug, accs) for aug, accs in ctx.plan.ladders.items()]
    units += [CacheUnit(aug, acc) for aug, acc in ctx.plan.caches]
    runs = {spec: RunUnit(spec) for spec in ctx.plan.runs}
    if max_fleet == 1:
        return units + list(runs.values())
    todo = [spec for spec, unit in runs.items() if not unit.done(ctx)]
    grouped = group_fleets(todo, max_fleet, lambda s: run_batch_size(ctx.cfg.batch_size, s, ctx.class_counts(),
                                                         ctx.cfg.stream_small_subsets),
                           lambda s: runs[s].resumed_at(ctx))
    fleets = {fleet[0]: fleet for fleet in grouped}
    for spec, unit in runs.items():
        if spec in fleets:
            members = fleets[spec]
            units.append(unit if len(members) == 1 else FleetUnit(tuple(runs[m] for m in members)))
        elif unit.done(ctx):
            units.append(unit)
    return units
