"""The work inside each unit: requests, the real stage functions, and the jobs workers run.

A unit's *request* is a small frozen dataclass (picklable, so any backend can ship it);
its *stage* is the function that does the work (``Stages`` holds the real ones, tests
swap in fakes); its *job* is what a worker calls — the stage, plus writing the files by
which the driver later knows the unit finished (``rungs.json`` for a ladder). Everything a
unit produces lands on disk under the sweep root, so nothing that finished is lost when
the driver dies.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from fasttarget.subsets import SubsetConfig
from fasttarget.sweep.config import TeacherSettings
from fasttarget.sweep.plan import RunSpec

RUNGS_FILE = "rungs.json"


@dataclass(frozen=True)
class DataRequest:
    """Convert the raw dataset ``source`` once into ``out_dir``."""

    dataset: str
    source: Path
    out_dir: Path


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
    stream: bool = False


@dataclass(frozen=True)
class FleetRequest:
    """Student runs to train as one fleet: their own requests (sharing everything but strategy,
    teacher and cache) and the fleet's directory (``fleet.json`` and its lock)."""

    members: tuple[RunRequest, ...]
    fleet_dir: Path


@dataclass(frozen=True)
class ScoreRequest:
    """Score one teacher for the diagnostics of its runs (:func:`fasttarget.diagnostics.score_teacher`):
    on the test subset and on the entropy samples of the training ``subsets`` of its B runs."""

    teacher: Path
    data_dir: Path
    subsets: tuple[SubsetConfig, ...]
    out_file: Path
    device: str


@dataclass(frozen=True)
class DiagnosticsRequest:
    """Measure one finished run (:func:`fasttarget.diagnostics.diagnose_run`)."""

    run_dir: Path
    data_dir: Path
    strategy: str
    temperature: float
    subset: SubsetConfig
    device: str
    teacher_scores: Path | None = None
    teacher: str | None = None
    cache: Path | None = None


def fleet_config(req: FleetRequest):
    """The :class:`fasttarget.fleet.FleetConfig` of a fleet: member ``run_id`` writes its own
    ``run_dir``, whose ``config.json`` is exactly the one its solo run would write."""
    from fasttarget.fleet import FleetConfig, Member

    base = dataclasses.replace(train_config(req.members[0]), out=req.fleet_dir, strategy="A", teacher=None,
                               cache=None, resume=any(m.resume for m in req.members))
    members = tuple(Member(m.spec.run_id, m.spec.strategy, m.teacher, m.cache, dir=m.run_dir) for m in req.members)
    return FleetConfig(base=base, members=members)


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
        temperature=req.temperature, batch_size=req.batch_size, stream=req.stream, device=req.device,
        compile=req.compile, resume=req.resume, progress=False,
    )


def _real_prepare_data(req: DataRequest) -> None:
    from fasttarget.convert import ConvertConfig, convert

    # Only run while meta.json (written last) is missing: whatever is there is a killed conversion.
    convert(ConvertConfig(dataset=req.dataset, source=req.source, out=req.out_dir, force=True, progress=False))


def _real_train_ladder(req: LadderRequest) -> dict[float, TeacherCheckpoint]:
    """Run :func:`fasttarget.teacher.train_ladder`; map each requested accuracy to its rung."""
    from fasttarget.teacher import LadderConfig, train_ladder

    s = req.settings
    trained = tuple(a for a in req.accuracies if a > s.random_below)
    random_init = [a for a in req.accuracies if a <= s.random_below]
    result = train_ladder(LadderConfig(
        data=req.data_dir, out=req.out_dir, accuracies=trained, aug=req.aug, arch=s.arch, width=s.width,
        max_steps=s.max_steps, eval_every=s.eval_every, tolerance=s.tolerance, seed=s.seed,
        random_init=bool(random_init), batch_size=req.batch_size, device=req.device, force=True,
        progress=False,
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


def _real_train_fleet(req: FleetRequest) -> None:
    from fasttarget.fleet import train_fleet

    train_fleet(fleet_config(req))


def _real_score_teacher(req: ScoreRequest) -> None:
    from fasttarget.diagnostics import score_teacher

    score_teacher(req.teacher, req.data_dir, req.subsets, req.out_file, req.device)


def _real_diagnose_run(req: DiagnosticsRequest) -> None:
    from fasttarget.diagnostics import diagnose_run

    diagnose_run(req.run_dir, req.data_dir, req.strategy, req.temperature, req.subset,
                 teacher_scores=req.teacher_scores, teacher=req.teacher, cache=req.cache, device=req.device)


@dataclass(frozen=True)
class Stages:
    """The kinds of work a sweep does; tests swap in fakes, the defaults do the real work.

    Each must be a module-level function for process, Ray and SLURM workers (they are pickled).

    Args:
        prepare_data: ``DataRequest -> None``, writes ``out_dir`` (``meta.json`` last).
        train_ladder: ``LadderRequest -> {accuracy: TeacherCheckpoint}`` (missing = not reached).
        build_cache: ``CacheRequest -> None``, writes ``out_file`` atomically.
        train_student: ``RunRequest -> None``, writes the run directory.
        train_fleet: ``FleetRequest -> None``, writes every member's run directory.
        score_teacher: ``ScoreRequest -> None``, writes ``out_file`` atomically.
        diagnose_run: ``DiagnosticsRequest -> None``, writes ``run_dir/diagnostics.json`` atomically.
    """

    prepare_data: Callable[[DataRequest], None] = _real_prepare_data
    train_ladder: Callable[[LadderRequest], dict[float, TeacherCheckpoint]] = _real_train_ladder
    build_cache: Callable[[CacheRequest], None] = _real_build_cache
    train_student: Callable[[RunRequest], None] = _real_train_student
    train_fleet: Callable[[FleetRequest], None] = _real_train_fleet
    score_teacher: Callable[[ScoreRequest], None] = _real_score_teacher
    diagnose_run: Callable[[DiagnosticsRequest], None] = _real_diagnose_run


def ladder_job(train_ladder: Callable[[LadderRequest], dict[float, TeacherCheckpoint]]) -> Callable[[LadderRequest], None]:
    """The worker's side of a ladder unit: train it, then write ``rungs.json`` next to its files."""
    return functools.partial(_run_ladder, train_ladder)


def _run_ladder(train_ladder: Callable[[LadderRequest], dict[float, TeacherCheckpoint]], req: LadderRequest) -> None:
    result = train_ladder(req)
    found = {str(float(a)): {"path": Path(c.path).relative_to(req.out_dir).as_posix(), "measured_acc": c.measured_acc}
             for a, c in result.items()}
    manifest = {
        "found": found,
        "missed": [str(a) for a in req.accuracies if str(a) not in found],
        "best_acc": max((c.measured_acc for c in result.values()), default=None),
        "settings": asdict(req.settings),
    }
    req.out_dir.mkdir(parents=True, exist_ok=True)
    partial = req.out_dir / (RUNGS_FILE + ".partial")
    partial.write_text(json.dumps(manifest, indent=1))
    partial.replace(req.out_dir / RUNGS_FILE)  # whole or absent: the driver trusts what it finds


def load_rungs(ladder_dir: Path) -> dict[str, Any] | None:
    """A ladder's ``rungs.json`` with each rung's ``path`` resolved, or ``None`` when absent."""
    path = Path(ladder_dir) / RUNGS_FILE
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    for rung in manifest["found"].values():
        # Stored relative to the ladder directory (absolute in sweeps written before that).
        rung["path"] = str(Path(ladder_dir) / rung["path"])
    return manifest


def ladder_settled(manifest: dict[str, Any] | None, accs: tuple[float, ...], settings: TeacherSettings) -> bool:
    """A ladder is settled when every accuracy was reached (its file still there), or missed
    under the same settings."""
    if manifest is None:
        return False
    found = {float(a) for a, rung in manifest["found"].items() if Path(rung["path"]).is_file()}
    missed = {float(a) for a in manifest["missed"]}
    same = manifest.get("settings") == json.loads(json.dumps(asdict(settings)))
    return all(a in found or (a in missed and same) for a in accs)
