"""The end-to-end demo behind ``fasttarget demo``: named steps run in order over one state.

Steps: ``convert`` the data (the CIFAR-10 sample shipped in ``data/cifar10-sample`` by
default, or the full data given as ``source``) into ``out/data``; ``inspect`` it; train a
narrow ``teacher`` ladder (``out/teachers``); build the Strategy C ``cache`` of its best
teacher; ``train`` students A, B and C for a few hundred steps (``out/runs``); print a
``table``. Each step reads what earlier steps left in :class:`DemoState`, and reuses its
own output from an earlier demo unless ``force``. ``until`` stops after a named step.

Example:
    >>> import tempfile, pathlib
    >>> cfg = DemoConfig(out=pathlib.Path(tempfile.mkdtemp()), progress=False, until="inspect")
    >>> state = run_demo(cfg, echo=lambda s: None)
    >>> state.meta.count("train"), state.meta.count("test")
    (5000, 1000)
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fasttarget.convert import ConvertConfig, convert, fingerprint, pixel_settings
from fasttarget.dataset import META_FILE, DatasetMeta, check_dataset, describe
from fasttarget.errors import UserError
from fasttarget.sources import open_source

# The sample ships with the repository (``scripts/make_sample.py`` made it).
SAMPLE_SOURCE = Path(__file__).resolve().parents[2] / "data" / "cifar10-sample" / "cifar-10-batches-bin"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs on.

    Args:
        out: folder for everything the demo writes (the dataset lands in ``out/data``).
        source: CIFAR-10 folder to use instead of the bundled sample (e.g. the full data).
        force: redo every step even when its output is already there.
        progress: show progress bars.
        until: stop after this step (a name in :data:`STEPS`); ``None`` runs them all.
        width: ResNet-18 width of the teachers and students (0.125 = 8 base channels).
        teacher_accuracies: the ladder's targets (the sample's 5,000 images cap what a
            narrow network reaches quickly).
        teacher_max_steps: give up on the remaining targets after this many steps.
        steps: every student's step budget.
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
    """

    out: Path = Path("runs/demo")
    source: Path | None = None
    force: bool = False
    progress: bool = True
    until: str | None = None
    width: float = 0.125
    teacher_accuracies: tuple[float, ...] = (0.25, 0.35)
    teacher_max_steps: int = 800
    steps: int = 200
    device: str | None = None

    @property
    def data_source(self) -> Path:
        return self.source if self.source is not None else SAMPLE_SOURCE


@dataclass
class DemoState:
    """What the steps have produced so far."""

    data_dir: Path | None = None
    meta: DatasetMeta | None = None
    results: dict[str, object] = field(default_factory=dict)


Echo = Callable[[str], None]
DemoStep = Callable[[DemoConfig, DemoState, Echo], None]


def convert_step(cfg: DemoConfig, state: DemoState, echo: Echo) -> None:
    """Convert the demo's CIFAR-10 into ``out/data``, unless the same source is already converted there."""
    data_dir = cfg.out / "data"
    source = cfg.data_source
    if not source.is_dir():
        raise UserError(f"demo data not found at {source}: pass --source with a CIFAR-10 folder")
    if (data_dir / META_FILE).is_file() and not cfg.force:
        old = DatasetMeta.load(data_dir)
        found = open_source("cifar10", source)
        settings = pixel_settings(old.encoding, old.jpeg_quality, old.max_side, old.mean, old.std,
                                  old.compress_probability)
        if old.fingerprint == fingerprint({"train": found.train, "test": found.test}, settings):
            echo(f"convert: {data_dir} already holds {source}, reusing it (--force redoes it)")
            state.data_dir, state.meta = data_dir, old
            return
    echo(f"convert: {source} -> {data_dir}")
    state.meta = convert(ConvertConfig("cifar10", source, data_dir, force=True, progress=cfg.progress))
    state.data_dir = data_dir


def inspect_step(cfg: DemoConfig, state: DemoState, echo: Echo) -> None:
    """Check the converted betons against ``meta.json`` and print the summary."""
    state.meta = check_dataset(state.data_dir)
    echo(describe(state.meta))
    echo(f"inspect: {state.data_dir} OK")


def teacher_step(cfg: DemoConfig, state: DemoState, echo: Echo) -> None:
    """Train a narrow teacher ladder on the data (one-hot CE, first checkpoint at each target)."""
    from fasttarget.teacher import LADDER_FILE, LadderConfig, train_ladder

    out = cfg.out / "teachers"
    if (out / LADDER_FILE).is_file() and not cfg.force:
        echo(f"teacher: reusing the ladder in {out} (--force retrains it)")
        ladder = json.loads((out / LADDER_FILE).read_text())
        rungs = [(r["target"], out / r["path"], r["accuracy"], r["step"]) for r in ladder["rungs"]]
    else:
        targets = ", ".join(f"{a * 100:g}%" for a in cfg.teacher_accuracies)
        echo(f"teacher: ladder {targets} at width {cfg.width} -> {out}")
        result = train_ladder(LadderConfig(
            data=state.data_dir, out=out, accuracies=cfg.teacher_accuracies, aug="flip", width=cfg.width,
            max_steps=cfg.teacher_max_steps, eval_every=20, device=cfg.device, force=True, progress=cfg.progress,
        ))
        rungs = [(r.target, r.path, r.accuracy, r.step) for r in result.rungs]
    if not rungs:
        raise UserError(f"the teacher ladder reached none of {list(cfg.teacher_accuracies)} within "
                        f"{cfg.teacher_max_steps} steps: lower the targets or raise the step limit")
    for target, path, accuracy, step in rungs:
        echo(f"teacher: {path.name}  target {target * 100:g}%  measured {accuracy:.2%} at step {step}")
    target, path, accuracy, _ = rungs[-1]
    state.results["teacher"] = {"path": path, "accuracy": accuracy}


def cache_step(cfg: DemoConfig, state: DemoState, echo: Echo) -> None:
    """Run the best teacher once over the training images: Strategy C's logits cache."""
    from fasttarget.cache import CacheBuildConfig, build_cache

    teacher = state.results["teacher"]["path"]
    out = cfg.out / "teachers" / f"{teacher.stem}.h5"
    if out.is_file() and not cfg.force:
        echo(f"cache: reusing {out}")
    else:
        report = build_cache(CacheBuildConfig(data=state.data_dir, teacher=teacher, out=out, device=cfg.device,
                                              progress=cfg.progress))
        echo(f"cache: {out}  {report.rows} rows, {report.images_per_second:,.0f} img/s")
    state.results["cache"] = out


def train_step(cfg: DemoConfig, state: DemoState, echo: Echo) -> None:
    """Train students A, B and C to the same step budget (finished runs are reused)."""
    from fasttarget.train import TrainConfig, train

    teacher, cache = state.results["teacher"]["path"], state.results["cache"]
    inputs = {"A": {}, "B": {"teacher": teacher}, "C": {"teacher": teacher, "cache": cache}}
    for strategy, extra in inputs.items():
        run = cfg.out / "runs" / strategy
        if cfg.force and run.exists():
            shutil.rmtree(run)
        echo(f"train: strategy {strategy}, {cfg.steps} steps -> {run}")
        state.results[strategy] = train(TrainConfig(
            data=state.data_dir, out=run, strategy=strategy, aug="stdaug", steps=cfg.steps,
            eval_every=max(1, cfg.steps // 2), width=cfg.width, device=cfg.device, resume=True,
            progress=cfg.progress, **extra,
        ))


def table_step(cfg: DemoConfig, state: DemoState, echo: Echo) -> None:
    """Print the students' test accuracies side by side."""
    teacher = state.results["teacher"]
    echo(f"\nstudents after {cfg.steps} steps (ResNet-18 width {cfg.width}, stdaug); "
         f"teacher {teacher['path'].name} at {teacher['accuracy']:.2%}")
    echo("| strategy | targets | test top-1 (h) | g head | wall s |")
    echo("|---|---|---|---|---|")
    what = {"A": "one-hot", "B": "teacher on every view", "C": "cached teacher on the original"}
    for strategy, targets in what.items():
        final = state.results[strategy]
        echo(f"| {strategy} | {targets} | {final['test_acc_h']:.2%} | {final['test_acc_g']:.2%} | "
             f"{final['wall_s']:.0f} |")


STEPS: list[tuple[str, DemoStep]] = [
    ("convert", convert_step), ("inspect", inspect_step), ("teacher", teacher_step), ("cache", cache_step),
    ("train", train_step), ("table", table_step),
]


def run_demo(cfg: DemoConfig, echo: Echo = print) -> DemoState:
    """Run the steps of :data:`STEPS` in order (up to ``cfg.until``); returns the final state."""
    names = [name for name, _ in STEPS]
    if cfg.until is not None and cfg.until not in names:
        raise UserError(f"unknown demo step {cfg.until!r}: choose one of {', '.join(names)}")
    state = DemoState()
    for name, step in STEPS:
        step(cfg, state, echo)
        if name == cfg.until:
            break
    return state
