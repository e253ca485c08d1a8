"""The sweep configuration: grids, teacher ladder settings, the resources of each unit kind.

Read from TOML (``configs/*.toml``) once by :meth:`SweepConfig.from_toml` and validated there;
everything downstream takes the frozen dataclasses.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from fasttarget.choices import ARCHS, STRATEGIES
from fasttarget.config import ModelConfig, augment_components
from fasttarget.errors import UserError

DEVICES = ("cpu", "cuda")
# The kinds of unit a sweep is made of, in the order they are preferred when several are ready.
UNIT_KINDS = ("data", "ladder", "cache", "run", "fleet", "diagnostics")


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
        with _located(where):
            for aug in (*self.student_augs, *self.teacher_augs):
                augment_components(aug)


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

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise UserError(f"[teacher]: unknown arch {self.arch!r}: choose one of {', '.join(ARCHS)}")
        with _located("[teacher]"):
            ModelConfig(arch=self.arch, width=self.width)


@dataclass(frozen=True)
class Resources:
    """What one unit of work may use: CPU cores and GPUs (a fraction of one is fine on Ray).

    Every backend runs a unit with ``floor(num_cpus)`` torch and numba threads (at least one),
    so a unit never oversubscribes the cores it was given and its numbers do not depend on
    the backend that ran it.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.num_cpus <= 0 or self.num_gpus < 0:
            raise UserError(f"[resources]: num_cpus must be > 0 and num_gpus ≥ 0, got {self.num_cpus}, {self.num_gpus}")

    @property
    def threads(self) -> int:
        """The torch/numba thread count of a unit holding these resources."""
        return max(1, int(self.num_cpus))


def default_resources(kind: str, device: str) -> Resources:
    """One core per unit; one GPU per unit on CUDA sweeps, except data conversion (CPU work)."""
    return Resources(num_cpus=1.0, num_gpus=1.0 if device == "cuda" and kind != "data" else 0.0)


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep: data, models, teacher ladder settings, grids and unit resources.

    Build it from TOML with :meth:`from_toml` (keys as in ``configs/cpu-small.toml``).

    Args:
        name: the sweep's name.
        dataset: dataset name for ``convert`` (``cifar10``, ``cifar100``, ``tinyimagenet``…).
        data_source: raw dataset to convert once into ``OUT/data``; or
        data_dir: an already converted dataset directory.
        arch, width: the student model.
        device: ``cpu`` or ``cuda``.
        batch_size, temperature: student training settings.
        stream_small_subsets: subsets smaller than a few batches keep ``batch_size`` and
            stream across epochs (:func:`fasttarget.sweep.plan.run_batch_size`); ``false``
            caps the batch at the subset's size instead (how sweeps before it trained).
        compile: ``torch.compile`` the student (``None``: on CUDA only).
        teacher: :class:`TeacherSettings`.
        grids: the :class:`GridConfig` tables.
        budgets_from_one_run: read smaller step budgets from the longest run's evaluations.
        resources: :class:`Resources` by unit kind (``[resources.run]`` … in TOML); kinds
            not given get :func:`default_resources`.
        diagnostics: measure every finished run's target entropy and teacher agreement
            (:mod:`fasttarget.diagnostics`; ``[report] diagnostics``).
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
    stream_small_subsets: bool = True
    temperature: float = 2.0
    compile: bool | None = None
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    budgets_from_one_run: bool = True
    resources: dict[str, Resources] = field(default_factory=dict)
    diagnostics: bool = True

    def __post_init__(self) -> None:
        if (self.data_source is None) == (self.data_dir is None):
            raise UserError("[data]: give exactly one of `source` (raw data to convert) or `dir` (converted data)")
        if self.device not in DEVICES:
            raise UserError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not self.grids:
            raise UserError("a sweep needs at least one [[grid]] table")
        with _located("[model]"):
            ModelConfig(arch=self.arch, width=self.width)
        if self.batch_size < 1 or not self.temperature > 0:
            raise UserError(f"[student]: batch_size must be ≥ 1 and temperature > 0, got {self.batch_size} and "
                            f"{self.temperature}")
        unknown = sorted(set(self.resources) - set(UNIT_KINDS))
        if unknown:
            raise UserError(f"[resources]: unknown unit kind(s) {', '.join(unknown)}; known: {', '.join(UNIT_KINDS)}")
        if self.device == "cpu" and any(r.num_gpus for r in self.resources.values()):
            raise UserError("[resources]: num_gpus must be 0 when device = \"cpu\"")
        if self.budgets_from_one_run:
            for g in self.grids:
                off = [s for s in g.steps if s % g.eval_every]
                if off and len(g.steps) > 1:
                    raise UserError(
                        f"grid {g.name!r}: step budgets {off} are not multiples of eval_every={g.eval_every}; "
                        "change eval_every or set budgets_from_one_run = false"
                    )

    def check_paths(self) -> None:
        """Every path the sweep reads exists (``[data] source`` or ``dir``)."""
        if self.data_source is not None and not self.data_source.exists():
            raise UserError(f"[data] source {self.data_source} does not exist: fix the path (relative paths are "
                            "read from the config file's folder) or download the dataset there")
        if self.data_dir is not None and not (self.data_dir / "meta.json").is_file():
            raise UserError(f"[data] dir {self.data_dir} is not a converted dataset (no meta.json): run "
                            f"`fasttarget convert` into it, or give the raw data as [data] source")

    def unit_resources(self, kind: str) -> Resources:
        """The declared resources of a unit kind (``[resources.<kind>]``, else the default); a
        fleet without its own takes a run's (it is one process on one loader, like a run)."""
        if kind == "fleet" and kind not in self.resources:
            kind = "run"
        return self.resources.get(kind) or default_resources(kind, self.device)

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
        return cls.from_dict(data, base=path.parent)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> SweepConfig:
        """Build from the parsed TOML tables; unknown keys are refused (they are typos).

        Args:
            base: the folder relative ``[data]`` paths are read from (:meth:`from_toml`: the
                config file's); ``None`` keeps them relative to the working directory.
        """
        data = dict(data)
        keys = schema()
        _no_unknown("top level", data, keys["top level"])
        dat = dict(data.get("data", {}))
        _no_unknown("[data]", dat, keys["[data]"])
        model = dict(data.get("model", {}))
        _no_unknown("[model]", model, keys["[model]"])
        teacher = dict(data.get("teacher", {}))
        _no_unknown("[teacher]", teacher, keys["[teacher]"])
        student = dict(data.get("student", {}))
        _no_unknown("[student]", student, keys["[student]"])
        report = dict(data.get("report", {}))
        _no_unknown("[report]", report, keys["[report]"])
        resources = {}
        for kind, table in dict(data.get("resources", {})).items():
            if not isinstance(table, dict):
                raise UserError(f"[resources]: {kind} must be a table such as [resources.{kind}] num_cpus = 1")
            _no_unknown(f"[resources.{kind}]", table, keys["[resources.KIND]"])
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in table.values()):
                raise UserError(f"[resources.{kind}]: num_cpus and num_gpus are numbers, got {table}")
            resources[kind] = Resources(**{k: float(v) for k, v in table.items()})
        grid_defaults = {k: student[k] for k in ("eval_every", "seeds") if k in student}
        grid_keys = keys["[[grid]]"]
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
            data_source=_path(dat["source"], base) if "source" in dat else None,
            data_dir=_path(dat["dir"], base) if "dir" in dat else None,
            arch=model.get("arch", "resnet18"),
            width=float(model.get("width", 1.0)),
            device=data.get("device", "cpu"),
            batch_size=int(student.get("batch_size", 128)),
            stream_small_subsets=bool(student.get("stream_small_subsets", True)),
            temperature=float(student.get("temperature", 2.0)),
            compile=student.get("compile"),
            teacher=TeacherSettings(**teacher),
            budgets_from_one_run=bool(data.get("budgets_from_one_run", True)),
            resources=resources,
            diagnostics=bool(report.get("diagnostics", True)),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable copy (stored in the results index)."""
        return json.loads(json.dumps(asdict(self), default=str))


def schema() -> dict[str, set[str]]:
    """Every table of a sweep TOML and the keys it accepts (docs/sweeps.md documents each; a test checks)."""
    return {
        "top level": {"name", "description", "device", "budgets_from_one_run", "data", "model", "teacher",
                      "student", "grid", "resources", "report"},
        "[data]": {"dataset", "source", "dir"},
        "[model]": {"arch", "width"},
        "[teacher]": {f.name for f in fields(TeacherSettings)},
        "[student]": {"batch_size", "stream_small_subsets", "temperature", "compile", "eval_every", "seeds"},
        "[[grid]]": {f.name for f in fields(GridConfig)},
        "[resources.KIND]": {f.name for f in fields(Resources)},
        "[report]": {"diagnostics"},
    }


def _path(value: str, base: Path | None) -> Path:
    """``value`` read from ``base`` when relative (a config's paths do not depend on the shell's folder)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() or base is None else Path(os.path.normpath(Path(base).resolve() / path))


@contextlib.contextmanager
def _located(where: str) -> Iterator[None]:
    """Say where in the TOML file a value that a library config refuses was given."""
    try:
        yield
    except UserError as err:
        raise UserError(f"{where}: {err}") from None


def _no_unknown(where: str, table: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
