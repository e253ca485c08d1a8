"""The units a sweep is made of — dataset conversion, teacher ladder, cache build, student run.

A :class:`Unit` knows its key, the units it depends on, the resources it declares, whether
its work is already on disk, how to build its request for the next attempt, which job a
worker runs, and what to record when it ends. The driver (:mod:`fasttarget.sweep.run`)
treats every kind alike, so a new kind (a fleet of students) is one more subclass here and
one more line in :func:`build_units`.
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from fasttarget.results import ResultsIndex, RunRow, UnitRow, eval_rows, final_accuracies, finished, read_run_dir
from fasttarget.sweep.config import Resources, SweepConfig
from fasttarget.sweep.plan import RunSpec, SweepLayout, SweepPlan, class_counts, pct, run_batch_size
from fasttarget.sweep.stages import (
    CacheRequest,
    DataRequest,
    LadderRequest,
    RunRequest,
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
    common = dict(run_id=spec.run_id, **asdict(spec), run_dir=ctx.layout.relative(run_dir),
                  teacher_acc_measured=unit.measured(ctx))
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


def build_units(ctx: SweepContext) -> list[Unit]:
    """Every unit of the plan, in the order the driver prefers them when several are ready:
    conversion, ladders, caches (they unblock others), then runs in grid order."""
    units: list[Unit] = [DataUnit()] if ctx.cfg.data_dir is None else []
    units += [LadderUnit(aug, accs) for aug, accs in ctx.plan.ladders.items()]
    units += [CacheUnit(aug, acc) for aug, acc in ctx.plan.caches]
    units += [RunUnit(spec) for spec in ctx.plan.runs]
    return units
