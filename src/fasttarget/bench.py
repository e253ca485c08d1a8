"""Benchmark suites shared by ``benchmarks/`` and ``fasttarget bench``.

Every number fasttarget publishes is a :class:`Comparison`: a fasttarget callable and
the callable a user would write instead (their *baseline*), timed in the same process,
alternately, on the same data. :func:`measure` turns one into a :class:`Row`: medians
of several repetitions after warm-up (CUDA events on CUDA), with min and max, and the
ratio oriented so that higher is better for fasttarget. Every value is a throughput
(img/s, batches/s, rows/s), so the ratio is always ``value / baseline_value``.

Baselines come in two kinds, side by side: what users typically run (a per-sample
``DataLoader`` with workers, Kornia's default chain, h5py fancy indexing) and the strongest
fair one a competent engineer would write for the same job (a bare gather over the same
resident tensor, a batched ``DataLoader``, Kornia with its resampling crop, the cache read
into memory once). Every row names its baseline, and :data:`GOALS` states the goal of each
comparison that has one.

Suites (``COMPARISONS[suite](ctx)`` yields them, :func:`run_suite` measures them):

- ``convert``: CIFAR-10 source → beton with :func:`fasttarget.convert.convert` vs FFCV's
  ``DatasetWriter`` called directly on the same arrays.
- ``loader``: uint8 batches/s of the resident and ffcv backends vs a per-sample
  ``DataLoader`` (2 workers), a ``DataLoader`` with a ``BatchSampler`` and a bare
  ``np.take``/``index_select`` gather; random order, batch 128 and 512.
- ``augment``: img/s of each named augmentation at batch 256 vs Kornia's sequential
  chain (default and resampling crop) and vs torchvision transforms v2 applied per sample.
- ``targets``: cache gather rows/s (memmap vs h5py fancy indexing and vs the cache read into
  memory; cold, vs h5py on a file dropped from the page cache) and cache build img/s (vs the
  bare teacher forward it wraps).
- ``step``: a full training step (loader + augment + targets + student fwd/bwd/opt) vs
  the same student step on pre-staged tensors (the loader overhead) for Strategies A, B
  and C, and C's step against A's. On CUDA also the full-width student's img/s with
  compile + bf16 + channels_last at batch 512 against the eager fp32 step.

Example:
    >>> import time
    >>> from fasttarget.bench import Comparison, measure
    >>> row = measure(Comparison("sleep less", "call/s", 1, lambda: time.sleep(0.001),
    ...                          "sleep more", lambda: time.sleep(0.004)), repeats=3, warmup=0)
    >>> row.ratio > 1
    True
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import itertools
import mmap
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from fasttarget.errors import UserError
from fasttarget.threads import kept_threads

SUITES = ("convert", "loader", "augment", "targets", "step")
DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Row:
    """One measured line of a benchmark table (the JSON schema of ``fasttarget bench --json``).

    Args:
        name: what was measured, e.g. ``"loader resident b128"``.
        value: median throughput of the fasttarget code, in ``unit``.
        unit: ``img/s``, ``batches/s``, ``rows/s``...
        baseline: what it is compared with, e.g. ``"bare gather"``.
        baseline_value: median throughput of the baseline, in ``unit``.
        ratio: how many times faster fasttarget is: the median over repetitions of
            ``ours / theirs`` measured back to back (above 1 means fasttarget is faster).
            On a quiet machine it is close to ``value / baseline_value``; on a machine whose
            speed drifts it is the steadier number, because each pair shares the same moment.
        repeats: timed repetitions behind each median.
        min, max: the fasttarget throughput's range over the repetitions.
    """

    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    ratio: float
    repeats: int
    min: float
    max: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Goal:
    """A target an issue set for one measurement: a lowest ratio or a lowest value.

    Args:
        text: the goal as the issue words it.
        min_ratio: lowest acceptable ``Row.ratio``.
        min_value: lowest acceptable ``Row.value``.
        cuda_only: the goal is about CUDA runs (a CPU run reports the number without a verdict).
    """

    text: str
    min_ratio: float | None = None
    min_value: float | None = None
    cuda_only: bool = False

    def met(self, row: Row) -> bool:
        return (self.min_ratio is None or row.ratio >= self.min_ratio) and (
            self.min_value is None or row.value >= self.min_value)


# Baselines named in more than one place (suites, goals, tests).
STAGED = "student step on pre-staged tensors"
PER_SAMPLE_LOADER = "DataLoader per sample, 2 workers"
BATCHED_LOADER = "DataLoader BatchSampler"
BARE_GATHER = "bare gather"
KORNIA = "kornia chain"
KORNIA_RESAMPLE = "kornia chain, resample crop"
H5PY_FANCY = "h5py fancy indexing"
H5PY_IN_MEMORY = "h5py read once, in memory"

# The goals of the issues, keyed by (Row.name, Row.baseline). Each comparison against the
# strongest fair baseline has one; the typical baselines keep the goals they were given.
GOALS: dict[tuple[str, str], Goal] = {
    ("convert cifar10 → beton", "ffcv DatasetWriter on arrays"): Goal("≤ 2× the writer's time", min_ratio=0.5),
    **{(f"loader resident b{b}", PER_SAMPLE_LOADER): Goal("≥ 10× DataLoader", min_ratio=10) for b in (128, 512)},
    # Same work in the same process plus a sampler and a fetcher: the loader must not lose to it.
    **{(f"loader resident b{b}", BATCHED_LOADER): Goal("≥ 1× batched DataLoader", min_ratio=1) for b in (128, 512)},
    # The resident loader is that gather plus bookkeeping (plan, RawBatch): at most 10 % may go to it.
    **{(f"loader resident b{b}", BARE_GATHER): Goal("≥ 0.9× bare gather", min_ratio=0.9) for b in (128, 512)},
    ("augment stdaug b256", KORNIA): Goal("≥ 2× Kornia chain", min_ratio=2),
    ("augment stdaug b256", KORNIA_RESAMPLE): Goal("≥ 2× Kornia chain", min_ratio=2),
    ("cache gather b128", H5PY_FANCY): Goal("≥ 10× h5py", min_ratio=10),
    # A memory map whose pages are cached is an in-memory array: within 10 % of indexing one.
    ("cache gather b128", H5PY_IN_MEMORY): Goal("≥ 0.9× in-memory gather", min_ratio=0.9),
    # When every read goes to the disk, the memory map must not be slower than h5py's reads.
    ("cache gather b128 cold", H5PY_FANCY): Goal("≥ 1× h5py (cold)", min_ratio=1),
    ("step A b128", STAGED): Goal("loader overhead ≤ 5 %", min_ratio=0.95),
    ("step C b128", STAGED): Goal("loader overhead ≤ 5 %", min_ratio=0.95),
    ("step C b128", "step A b128"): Goal("C step ≤ 1.02× A", min_ratio=1 / 1.02),
    ("step B b128", "step A b128"): Goal("B step ≤ 1.15× A (side stream)", min_ratio=1 / 1.15, cuda_only=True),
    ("student w1 b512 compile+bf16", "eager float32"): Goal("≥ 60k img/s on H200", min_value=60_000, cuda_only=True),
}


@dataclass(frozen=True)
class Comparison:
    """A fasttarget callable and its baseline, each doing a known amount of work per call.

    Args:
        name: the Row's name.
        unit: throughput unit, ``<work>/s``.
        work: units of work one call of ``run`` does (images, batches, rows).
        run: the fasttarget code; its return value is ignored.
        baseline: the Row's baseline name.
        baseline_run: the code a user would write instead, doing the same work per call.
        prepare: called, untimed, before every call of either side (warm-up included), e.g.
            to drop a file from the page cache so that every timed call reads it cold.
    """

    name: str
    unit: str
    work: float
    run: Callable[[], object]
    baseline: str
    baseline_run: Callable[[], object]
    prepare: Callable[[], object] | None = None


def elapsed(fn: Callable[[], object], device: str | torch.device = "cpu") -> float:
    """Seconds one call of ``fn`` takes; on CUDA timed with events around the queued work."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(comp: Comparison, repeats: int = 5, warmup: int = 1, device: str | torch.device = "cpu") -> Row:
    """Time ``comp.run`` and ``comp.baseline_run`` in pairs and summarize them as a :class:`Row`.

    Each repetition times both sides back to back, in alternating order (ours first, then
    theirs first), so drift of a shared machine and any first-or-second position effect fall
    on both sides equally; the ratio is the median of the per-pair ratios. Warm-up calls (JIT,
    compile, caches) are not timed.

    Example:
        >>> import time
        >>> comp = Comparison("fast", "call/s", 1, lambda: None, "slow", lambda: time.sleep(0.001))
        >>> measure(comp, repeats=3, warmup=0).ratio > 1
        True
    """
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")

    def rate(fn: Callable[[], object]) -> float:
        if comp.prepare is not None:
            comp.prepare()
        return comp.work / elapsed(fn, device)

    for _ in range(warmup):
        rate(comp.run)
        rate(comp.baseline_run)
    ours, theirs = [], []
    for i in range(repeats):
        if i % 2 == 0:
            ours.append(rate(comp.run))
            theirs.append(rate(comp.baseline_run))
        else:
            theirs.append(rate(comp.baseline_run))
            ours.append(rate(comp.run))
    value, base = statistics.median(ours), statistics.median(theirs)
    return Row(
        name=comp.name, value=value, unit=comp.unit, baseline=comp.baseline, baseline_value=base,
        ratio=statistics.median(o / t for o, t in zip(ours, theirs)), repeats=repeats, min=min(ours), max=max(ours),
    )


def fastest(candidates: dict[str, Callable[[], object]], device: str | torch.device = "cpu",
            calls: int = 3) -> tuple[str, dict[str, float]]:
    """Which of several ways to write one baseline is fastest here: the best of ``calls`` timed
    calls of each, after one untimed call.

    A strongest-fair baseline is the faster of the obvious ways to write it (``np.take`` or
    ``torch.index_select``), and which one wins depends on the machine, so it is raced rather
    than assumed.

    Returns:
        The winner's name and the seconds per call of every candidate.

    Example:
        >>> import time
        >>> fastest({"slow": lambda: time.sleep(0.004), "fast": lambda: None}, calls=1)[0]
        'fast'
    """
    seconds = {}
    for name, fn in candidates.items():
        fn()
        seconds[name] = min(elapsed(fn, device) for _ in range(calls))
    return min(seconds, key=seconds.__getitem__), seconds


def race_note(what: str, winner: str, seconds: dict[str, float]) -> str:
    """A table note naming the kernel a raced baseline uses and what the others took."""
    others = ", ".join(f"{name} {seconds[name] * 1e3:.3g} ms" for name in seconds if name != winner)
    return f"{what} is {winner} ({seconds[winner] * 1e3:.3g} ms per call; {others or 'no other candidate here'})"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU model, cores, torch, GPU (``None`` without CUDA)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:  # not Linux: keep platform's answer
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": usable,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": gpu,
        "platform": platform.platform(),
    }


def missed_goals(rows: list[Row], on_cuda: bool) -> list[str]:
    """One line for each row that misses its goal in :data:`GOALS` (CUDA goals count on CUDA runs only).

    Example:
        >>> row = Row("augment stdaug b256", 150, "img/s", KORNIA, 100, 1.5, 5, 140, 160)
        >>> missed_goals([row], on_cuda=False)
        ['augment stdaug b256 vs kornia chain: ratio 1.50, 150 img/s (n=5): goal ≥ 2× Kornia chain']
    """
    missed = []
    for row in rows:
        goal = GOALS.get((row.name, row.baseline))
        if goal is not None and (on_cuda or not goal.cuda_only) and not goal.met(row):
            missed.append(f"{row.name} vs {row.baseline}: ratio {row.ratio:.2f}, {_num(row.value)} {row.unit} "
                          f"(n={row.repeats}): goal {goal.text}")
    return missed


def format_table(rows: list[Row], machine: dict[str, Any] | None = None) -> str:
    """Render rows as one aligned text table, goals marked, the machine underneath."""
    header = ("measurement", "value", "baseline", "ratio", "min–max", "goal")
    on_cuda = bool(machine and machine.get("gpu"))
    lines = []
    for row in rows:
        goal = GOALS.get((row.name, row.baseline))
        verdict = ""
        if goal is not None:
            met = "(CUDA goal)" if goal.cuda_only and not on_cuda else ("met" if goal.met(row) else "MISSED")
            verdict = f"{goal.text}: {met}"
        lines.append((
            row.name,
            f"{_num(row.value)} {row.unit}",
            f"{row.baseline}: {_num(row.baseline_value)}",
            f"{row.ratio:.2f}×",
            f"{_num(row.min)}–{_num(row.max)} (n={row.repeats})",
            verdict,
        ))
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *lines]]
    out.insert(1, "  ".join("-" * w for w in widths))
    if machine:
        gpu = machine.get("gpu") or "none"
        out.append(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, GPU: {gpu}")
    return "\n".join(out)


def _num(x: float) -> str:
    """Three significant digits, no exponent below a billion (the table is read by eye)."""
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


@dataclass(frozen=True)
class BenchConfig:
    """What ``fasttarget bench`` measures, and on what.

    Args:
        suites: names from :data:`SUITES`, or ``("all",)``.
        data: a converted dataset directory (``train.beton``, ``meta.json``); ``None``
            converts ``source`` into a temporary directory first.
        source: the CIFAR-10 source (either official layout) the convert suite converts;
            ``None`` = the bundled sample (:data:`fasttarget.demo.SAMPLE_SOURCE`).
        device: ``"cpu"`` or ``"cuda"``.
        repeats: timed repetitions behind each median.
        warmup: untimed calls before timing (numba JIT, ``torch.compile``, page cache).
        batches: training steps per timed call in the step suite.
        width: ResNet-18 width of the step suite's student and of the teacher (B, C, cache).
    """

    suites: tuple[str, ...] = ("all",)
    data: Path | None = None
    source: Path | None = None
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 1
    batches: int = 8
    width: float = 0.125

    def __post_init__(self) -> None:
        unknown = [s for s in self.suites if s not in (*SUITES, "all")]
        if unknown or not self.suites:
            raise UserError(f"unknown benchmark suite {', '.join(unknown) or '(none)'}: choose from {', '.join(SUITES)} or all")
        if self.device not in DEVICES:
            raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda but torch sees no CUDA device: run with --device cpu")
        if self.repeats < 1 or self.warmup < 0 or self.batches < 1:
            raise UserError(f"--repeats and --batches must be at least 1 and --warmup at least 0, "
                            f"got {self.repeats}, {self.batches}, {self.warmup}")
        if not 0 < self.width <= 8:
            raise UserError(f"--width must be in (0, 8], got {self.width}")

    @property
    def selected(self) -> tuple[str, ...]:
        """The suites to run, in :data:`SUITES` order."""
        return SUITES if "all" in self.suites else tuple(s for s in SUITES if s in self.suites)


class BenchContext:
    """The data and artifacts the suites share, each made once, on first use.

    Args:
        cfg: the run's configuration.
        workdir: scratch directory for converted data, the teacher checkpoint and the cache.
        progress: called with a short line as each stage starts (the CLI prints it to stderr).
    """

    def __init__(self, cfg: BenchConfig, workdir: str | Path, progress: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.device = torch.device(cfg.device)
        self.notes: list[str] = []
        self.say = progress or (lambda msg: None)

    def measure(self, comp: Comparison) -> Row:
        """:func:`measure` with the run's repeats, warm-up and device."""
        self.say(f"  {comp.name} vs {comp.baseline}")
        return measure(comp, self.cfg.repeats, self.cfg.warmup, self.device)

    @cached_property
    def source(self) -> Path:
        """The CIFAR-10 source folder: ``cfg.source`` or the bundled sample."""
        from fasttarget.demo import SAMPLE_SOURCE

        source = self.cfg.source or SAMPLE_SOURCE
        if not Path(source).exists():
            raise UserError(f"CIFAR-10 source {source} does not exist: pass --source with the "
                            "cifar-10-batches-bin or cifar-10-batches-py folder")
        return Path(source)

    @cached_property
    def data(self) -> Path:
        """The converted dataset directory the loader, targets and step suites read."""
        from fasttarget.dataset import DatasetMeta

        if self.cfg.data is not None:
            DatasetMeta.load(self.cfg.data)  # a clear error now rather than inside a suite
            return Path(self.cfg.data)
        from fasttarget.convert import ConvertConfig, convert

        self.say(f"converting {self.source} for the benchmarks")
        out = self.workdir / "data"
        convert(ConvertConfig("cifar10", self.source, out, force=True, progress=False))
        return out

    @cached_property
    def meta(self):
        """The dataset's :class:`~fasttarget.dataset.DatasetMeta`.

        Without ffcv (some GPU machines) there is no beton to read: the meta is made from the
        source arrays instead, with the same mean/std statistics ``convert`` computes.
        """
        from fasttarget.dataset import DatasetMeta, SplitInfo

        if has_module("ffcv"):
            return DatasetMeta.load(self.data)
        from fasttarget.convert import channel_histogram, mean_std
        from fasttarget.sources import open_source

        self.notes.append(f"ffcv is not installed: data read from {self.source} into memory, ffcv paths skipped")
        source = open_source("cifar10", self.source)
        images = source.train.images
        mean, std = mean_std(channel_histogram(images))
        counts = {name: np.bincount(source.split(name).labels, minlength=len(source.classes)) for name in ("train", "test")}
        return DatasetMeta(
            dataset=source.dataset, classes=source.classes, image_shape=tuple(images.shape[1:]),
            splits={name: SplitInfo(f"{name}.beton", int(c.sum()), tuple(int(x) for x in c)) for name, c in counts.items()},
            mean=mean, std=std, fingerprint="unconverted:" + str(self.source),
        )

    @cached_property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        """The train split in memory: ``(images uint8 [N,H,W,3], labels int64 [N])``."""
        if not has_module("ffcv"):
            from fasttarget.sources import open_source

            split = open_source("cifar10", self.source).train
            return split.images, split.labels.astype(np.int64)
        from fasttarget.dataset import read_split

        return read_split(self.data, "train")

    def float_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``size`` train images as float ``[B,3,H,W]`` in ``[0,1]`` on the device, and their labels."""
        images, labels = self.train
        if len(images) < size:
            raise UserError(f"the training split has {len(images)} images, the benchmark needs {size}: "
                            "use a larger dataset")
        x = torch.from_numpy(images[:size]).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        return x.contiguous(), torch.from_numpy(labels[:size]).to(self.device)

    @cached_property
    def teacher(self) -> Path:
        """A randomly initialised ResNet-18 teacher of the configured width (speed does not depend on its weights)."""
        from fasttarget.models import CheckpointInfo, ModelConfig, build_classifier, save_classifier

        model = ModelConfig(width=self.cfg.width, num_classes=self.meta.num_classes, image_size=self.meta.image_shape[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = build_classifier(model)
        info = CheckpointInfo(model, 0.1, self.meta.fingerprint, tuple(self.meta.mean), tuple(self.meta.std),
                              extra={"note": "random init, for benchmarks"})
        return save_classifier(self.workdir / "teacher.pt", net, info)

    @cached_property
    def cache(self) -> Path:
        """The Strategy C logits cache of :attr:`teacher` over the train split."""
        from fasttarget.cache import build_cache

        self.say("building the target cache")
        return build_cache(self.cache_config(self.workdir / "targets.h5")).path

    def resident_loader(self, batch_size: int, augment: str, targets: Callable | None = None):
        """The resident loader over the in-memory train split, shuffled, on the run's device."""
        from fasttarget.loader import LoaderConfig, ResidentLoader

        images, labels = self.train
        cfg = LoaderConfig(batch_size=batch_size, augment=augment, backend="resident", device=self.cfg.device)
        return ResidentLoader.from_arrays(images, labels, cfg, mean=self.meta.mean, std=self.meta.std, targets=targets)

    def strategies(self) -> tuple[str, ...]:
        """The strategies the step suite can run here (C's cache is built from the beton, with ffcv)."""
        from fasttarget.targets import STRATEGIES

        if has_module("ffcv"):
            return STRATEGIES
        self.notes.append("strategy C skipped: its cache is built from the beton, which needs ffcv")
        return tuple(s for s in STRATEGIES if s != "C")

    def targets(self, strategy: str):
        """The target provider of ``strategy`` with the benchmark teacher (compiled on CUDA, as in training)."""
        from fasttarget.targets import TargetConfig, build_targets

        cfg = TargetConfig(
            strategy, teacher=None if strategy == "A" else self.teacher,
            cache=self.cache if strategy == "C" else None, compile=self.device.type == "cuda",
        )
        return build_targets(cfg, self.meta, self.device)

    def cache_config(self, out: Path):
        """How the benchmarks build a cache of :attr:`teacher` into ``out``."""
        from fasttarget.cache import CacheBuildConfig

        return CacheBuildConfig(self.data, self.teacher, out, device=self.cfg.device, progress=False)


def run_benchmarks(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> tuple[list[Row], list[str]]:
    """Run the selected suites in a temporary working directory.

    Returns:
        The rows of every suite, in suite order, and notes on what was skipped and why.
    """
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fasttarget-bench-") as tmp:
        ctx = BenchContext(cfg, tmp, progress)
        for suite in cfg.selected:
            ctx.say(f"suite {suite}")
            rows += run_suite(suite, ctx)
    return rows, ctx.notes


def has_module(name: str) -> bool:
    """Whether ``name`` can be imported here (ffcv and kornia are absent on some GPU machines)."""
    return importlib.util.find_spec(name) is not None


# --- convert ----------------------------------------------------------------------------------


def convert_comparisons(ctx: BenchContext) -> Iterator[Comparison]:
    """CIFAR-10 source → ``train.beton`` + ``test.beton`` + ``meta.json``, img/s.

    Baseline: FFCV's ``DatasetWriter`` on the same arrays already in memory, both splits,
    same fields and worker count (what a user writing the beton by hand would do).
    """
    if not has_module("ffcv"):
        ctx.notes.append("convert suite skipped: ffcv is not installed")
        return
    from fasttarget.convert import ConvertConfig, convert, usable_cores
    from fasttarget.sources import open_source

    source = open_source("cifar10", ctx.source)
    total = len(source.train) + len(source.test)
    out = ctx.workdir / "convert"
    ours = ConvertConfig("cifar10", ctx.source, out / "fasttarget", force=True, progress=False)
    splits = {name: (source.split(name).images, source.split(name).labels) for name in ("train", "test")}

    def ffcv_writer() -> None:
        with kept_threads():  # importing ffcv sets torch's threads to 1 (fasttarget.threads)
            import ffcv.writer
            from ffcv.fields import IntField, RGBImageField
        from tqdm import tqdm

        (out / "ffcv").mkdir(parents=True, exist_ok=True)
        # DatasetWriter draws a tqdm bar it offers no switch for; silence it for the table's sake.
        shown, ffcv.writer.tqdm = ffcv.writer.tqdm, functools.partial(tqdm, disable=True)
        try:
            for name, (images, labels) in splits.items():
                fields = {"image": RGBImageField(write_mode="raw"), "label": IntField(), "index": IntField()}
                writer = ffcv.writer.DatasetWriter(str(out / "ffcv" / f"{name}.beton"), fields, num_workers=usable_cores())
                writer.from_indexed_dataset(_IndexedArrays(images, labels))
        finally:
            ffcv.writer.tqdm = shown

    yield Comparison("convert cifar10 → beton", "img/s", total, lambda: convert(ours),
                     "ffcv DatasetWriter on arrays", ffcv_writer)


class _IndexedArrays:
    """``(image, label, index)`` rows over in-memory arrays: the indexed dataset FFCV's writer takes."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        return self.images[i], int(self.labels[i]), i


# --- augment ----------------------------------------------------------------------------------

AUGMENT_BATCH = 256


def augment_comparisons(ctx: BenchContext) -> Iterator[Comparison]:
    """img/s of every named augmentation at batch 256 on the run's device.

    Baselines: Kornia's sequential chain of the same components with the same probabilities
    and magnitudes (the batch as one call; mixes get the labels) with its default crop
    (``cropping_mode="slice"``, what users run) and, for augmentations with a crop, with
    ``cropping_mode="resample"`` (one batched affine warp, the way fasttarget crops); and
    torchvision transforms v2 applied image by image as a per-sample ``Dataset`` would (not
    for mixes, which torchvision only has as whole-batch ops).
    """
    from fasttarget.augment import AUGMENT_NAMES, build_augment

    images, labels = ctx.float_batch(AUGMENT_BATCH)
    kornia = has_module("kornia")
    if not kornia:
        ctx.notes.append("augment: Kornia baselines skipped, kornia is not installed")
    for name in AUGMENT_NAMES:
        if name == "noaug":
            continue
        aug = build_augment(name)
        generator = torch.Generator().manual_seed(0)
        ours = _bind(aug, images, generator)
        title = f"augment {name} b{AUGMENT_BATCH}"
        if kornia:
            modes = {KORNIA: "slice", **({KORNIA_RESAMPLE: "resample"} if any(op.name == "crop" for op in aug.ops) else {})}
            for baseline, mode in modes.items():
                chain = kornia_chain(aug, images.shape[-2:], cropping_mode=mode)
                yield Comparison(title, "img/s", len(images), ours, baseline, lambda chain=chain: chain(images, labels))
        if not aug.mixes:
            per_sample = torchvision_chain(aug, images.shape[-2:])
            yield Comparison(title, "img/s", len(images), ours, "torchvision v2 per sample",
                             lambda per_sample=per_sample: torch.stack([per_sample(im) for im in images]))


def _bind(aug, images: torch.Tensor, generator: torch.Generator) -> Callable[[], object]:
    return lambda: aug(images, generator)


def kornia_chain(aug, size: tuple[int, int], cropping_mode: str = "slice") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Kornia's augmentation modules for the components of ``aug``, applied in sequence.

    Same probabilities and magnitudes as ``aug`` (``aug.config``); mixes take the labels.
    ``cropping_mode`` is ``RandomResizedCrop``'s: ``"slice"`` (Kornia's default) or ``"resample"``.
    """
    import kornia.augmentation as K

    cfg = aug.config
    make = {
        "color": lambda op: K.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, 0.0, p=op.p),
        "gray": lambda op: K.RandomGrayscale(p=op.p),
        "flip": lambda op: K.RandomHorizontalFlip(p=op.p),
        "crop": lambda op: K.RandomResizedCrop(tuple(size), scale=cfg.crop_scale, ratio=cfg.crop_ratio, p=op.p,
                                             cropping_mode=cropping_mode),
        "mixup": lambda op: K.RandomMixUpV2(p=op.p),
        "cutmix": lambda op: K.RandomCutMixV2(p=op.p, use_correct_lambda=True),
    }
    modules = [(op.mixes, make[op.name](op)) for op in aug.ops]

    def chain(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        for mixes, module in modules:
            images = module(images, labels)[0] if mixes else module(images)
        return images

    return chain


def torchvision_chain(aug, size: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """torchvision transforms v2 for the (non-mixing) components of ``aug``, for one image ``[3,H,W]``."""
    from torchvision.transforms import v2

    cfg = aug.config
    make = {
        "color": lambda op: v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation)], p=op.p),
        "gray": lambda op: v2.RandomGrayscale(p=op.p),
        "flip": lambda op: v2.RandomHorizontalFlip(p=op.p),
        "crop": lambda op: v2.RandomResizedCrop(tuple(size), scale=cfg.crop_scale, ratio=cfg.crop_ratio),
    }
    return v2.Compose([make[op.name](op) for op in aug.ops])


# --- targets ----------------------------------------------------------------------------------

GATHER_BATCH = 128
GATHER_CALLS = 64
# The cold gather's synthetic cache: ImageNet's 1,000 classes, 2^16 rows (128 MB of float16),
# so that 64 random batches of 128 rows touch mostly distinct pages.
COLD_SHAPE = (1 << 16, 1000)


def targets_comparisons(ctx: BenchContext) -> Iterator[Comparison]:
    """Strategy C's cache: gather rows/s (warm and cold) and build img/s.

    - gather, 64 random batches of 128 indices per call: ``TargetCache.gather`` (memory map,
      pinned buffer on CUDA) vs :data:`H5PY_FANCY`, what users of an HDF5 file typically write
      (sorted unique indices, then expanded), and vs :data:`H5PY_IN_MEMORY`, the obvious choice
      for a cache that fits memory: the whole dataset read once (not timed) and indexed with the
      faster of ``np.take`` and ``torch.index_select`` (:func:`fastest`).
    - cold gather: the same on a synthetic cache of :data:`COLD_SHAPE` whose pages are dropped
      from the page cache before every timed call (:func:`drop_page_cache`), as for a cache
      larger than the page cache; vs h5py fancy indexing, reopened cold too. Reading the whole
      file is no baseline here: a cache that does not fit memory cannot be held in it.
    - build: :func:`fasttarget.cache.build_cache` over the train split (teacher forward, HDF5
      writes, checksum), vs the bare teacher forward over the same images in memory.

    The real cache is built from the beton, so without ffcv only the cold gather runs.
    """
    if has_module("ffcv"):
        yield from _warm_gather_comparisons(ctx)
    else:
        ctx.notes.append("targets: warm gather and build skipped, the cache is built from the beton, which needs ffcv")
    cold = cold_gather_comparison(ctx)
    if cold is not None:
        yield cold
    if has_module("ffcv"):
        yield _build_comparison(ctx)


def _gather_batches(num_samples: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, num_samples, GATHER_BATCH) for _ in range(GATHER_CALLS)]


def _h5py_gather(dataset, batches: list[np.ndarray], device: torch.device) -> None:
    for idx in batches:
        # h5py wants increasing indices without repeats: read the sorted unique ones, then expand.
        unique, inverse = np.unique(idx, return_inverse=True)
        torch.from_numpy(dataset[unique][inverse]).to(device)


def _warm_gather_comparisons(ctx: BenchContext) -> Iterator[Comparison]:
    import h5py

    from fasttarget.cache import LOGITS, TargetCache

    cache = TargetCache.open(ctx.cache)
    batches = _gather_batches(cache.num_samples)
    dataset = h5py.File(ctx.cache, "r")[LOGITS]
    whole = dataset[...]
    table = torch.from_numpy(whole)

    def memmap_gather() -> None:
        for idx in batches:
            cache.gather(idx, ctx.device)

    in_memory = {
        "np.take": lambda: [torch.from_numpy(np.take(whole, idx, axis=0)).to(ctx.device) for idx in batches],
        "torch.index_select": lambda: [table.index_select(0, torch.from_numpy(idx)).to(ctx.device) for idx in batches],
    }
    winner, seconds = fastest(in_memory, ctx.device)
    ctx.notes.append(race_note(f"{H5PY_IN_MEMORY} gather", winner, seconds))
    name = f"cache gather b{GATHER_BATCH}"
    work = GATHER_BATCH * GATHER_CALLS
    yield Comparison(name, "rows/s", work, memmap_gather, H5PY_FANCY, lambda: _h5py_gather(dataset, batches, ctx.device))
    yield Comparison(name, "rows/s", work, memmap_gather, H5PY_IN_MEMORY, in_memory[winner])


def cold_gather_comparison(ctx: BenchContext) -> Comparison | None:
    """Memory-map gather vs h5py fancy indexing on a synthetic cache read cold every call.

    Returns ``None`` (with a note) where the work directory's pages cannot be dropped.
    """
    import h5py

    from fasttarget.cache import LOGITS, TargetCache

    path = ctx.workdir / "cold-cache.h5"
    why_not = page_cache_unsupported(ctx.workdir)
    if why_not:
        ctx.notes.append(f"cold cache gather skipped: {why_not}")
        return None
    cache = TargetCache.open(write_synthetic_cache(path, COLD_SHAPE))
    batches = _gather_batches(COLD_SHAPE[0])
    h5py_open = [h5py.File(path, "r")[LOGITS]]

    def drop_both() -> None:
        # h5py is reopened so that no HDF5 buffer holds rows read by an earlier call.
        h5py_open[0].file.close()
        drop_page_cache(path, cache.logits)
        h5py_open[0] = h5py.File(path, "r")[LOGITS]

    def memmap_gather() -> None:
        for idx in batches:
            cache.gather(idx, ctx.device)

    return Comparison(f"cache gather b{GATHER_BATCH} cold", "rows/s", GATHER_BATCH * GATHER_CALLS, memmap_gather,
                      H5PY_FANCY, lambda: _h5py_gather(h5py_open[0], batches, ctx.device), prepare=drop_both)


def _build_comparison(ctx: BenchContext) -> Comparison:
    from fasttarget.cache import build_cache
    from fasttarget.targets import load_teacher

    images, _ = ctx.train
    teacher, _ = load_teacher(ctx.teacher, ctx.meta, ctx.device)
    build_cfg = ctx.cache_config(ctx.workdir / "targets-bench.h5")
    mean = torch.tensor(ctx.meta.mean, device=ctx.device).view(1, 3, 1, 1)
    std = torch.tensor(ctx.meta.std, device=ctx.device).view(1, 3, 1, 1)

    def teacher_forward() -> None:
        for lo in range(0, len(images), build_cfg.batch_size):
            x = torch.from_numpy(images[lo : lo + build_cfg.batch_size]).to(ctx.device)
            teacher((x.permute(0, 3, 1, 2).float().div_(255) - mean) / std).cpu()

    return Comparison("cache build", "img/s", len(images), lambda: build_cache(build_cfg),
                      "teacher forward only", teacher_forward)


def write_synthetic_cache(path: Path, shape: tuple[int, int]) -> Path:
    """A cache file :meth:`~fasttarget.cache.TargetCache.open` accepts, of random float16
    logits with their checksum, flushed to disk.

    Only the layout matters for read speed, so one random block is written repeatedly. The
    file is fsynced: the kernel drops clean pages only.
    """
    import h5py

    from fasttarget.cache import CACHE_FORMAT, FORMAT_VERSION, LOGITS

    rows, classes = shape
    block = np.random.default_rng(0).standard_normal((min(rows, 8192), classes), np.float32).astype(np.float16)
    digest = hashlib.sha256()  # of the row-major logits bytes, as the cache records it
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset(LOGITS, shape, np.float16)
        for lo in range(0, rows, len(block)):
            part = block[: rows - lo]
            dataset[lo : lo + len(part)] = part
            digest.update(part.data)
        f.attrs.update({"format": CACHE_FORMAT, "format_version": FORMAT_VERSION, "logits_sha256": digest.hexdigest()})
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    return path


def drop_page_cache(path: Path, mapped: np.memmap | None = None) -> None:
    """Drop ``path``'s pages from the page cache, so that the next reads go to the disk.

    ``posix_fadvise(DONTNEED)`` skips pages that a live mapping holds, so ``mapped`` (a
    ``numpy.memmap`` of the file) first gives its pages up (``madvise(DONTNEED)``; a private
    mapping that was never written refaults them from the file).
    """
    if mapped is not None:
        mapped._mmap.madvise(mmap.MADV_DONTNEED)  # numpy keeps the mapping as ``_mmap``
    with open(path, "rb") as fh:
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def page_cache_unsupported(directory: Path) -> str | None:
    """Why files in ``directory`` cannot be read cold here, or ``None`` when they can."""
    if not hasattr(os, "posix_fadvise"):
        return f"{platform.system()} has no posix_fadvise to drop a file from the page cache"
    try:
        with open("/proc/mounts") as fh:
            mounts = [line.split()[1:3] for line in fh]
    except OSError:  # no /proc: assume a disk-backed file system
        return None
    resolved = str(Path(directory).resolve())
    fs = max(((m, t) for m, t in mounts if resolved == m or resolved.startswith(m.rstrip("/") + "/")),
             key=lambda mount: len(mount[0]), default=(None, None))[1]
    if fs in ("tmpfs", "ramfs"):
        return f"{directory} is on {fs}, whose files live in the page cache: use a disk-backed work directory"
    return None


# --- loader -----------------------------------------------------------------------------------

LOADER_BATCH_SIZES = (128, 512)


def loader_comparisons(ctx: BenchContext) -> Iterator[Comparison]:
    """uint8 batches/s over whole epochs in random order, batch 128 and 512, on the run's device.

    fasttarget: the resident backend and (with ffcv) the ffcv backend, through
    ``uint8_batches`` (the loader before augmentation). Each against three baselines:

    - :data:`PER_SAMPLE_LOADER`: what training scripts typically run, a
      ``torch.utils.data.DataLoader`` over a per-sample ``Dataset`` (2 persistent workers,
      shuffled, default collate, pinned and copied to the device on CUDA);
    - :data:`BATCHED_LOADER`: the strongest ``DataLoader`` over the same arrays,
      ``batch_size=None`` with a ``BatchSampler`` so that ``__getitem__`` gathers a whole batch
      with ``np.take`` (no per-sample collate), in the main process: with workers every batch
      also crosses a process boundary, which on CIFAR-sized batches costs several times the gather;
    - :data:`BARE_GATHER`: no loader at all, the same resident uint8 tensor, the same
      permutation (:func:`~fasttarget.loader.epoch_rows`, the same seed), batch by batch the
      faster here of ``np.take`` and ``torch.index_select`` (:func:`fastest`; on CUDA
      ``index_select`` on the device): what a resident loader cannot beat, only approach.

    Each timed call is one epoch, so start-up per epoch counts and no loader is timed on
    batches it prefetched while another was being timed.
    """
    from fasttarget.loader import LoaderConfig, build_loader

    images, labels = ctx.train
    backends = ["resident"] + (["ffcv"] if has_module("ffcv") else [])
    for batch_size in LOADER_BATCH_SIZES:
        per_epoch = len(images) // batch_size
        if per_epoch == 0:
            ctx.notes.append(f"loader b{batch_size} skipped: only {len(images)} training images")
            continue
        gathers = {name: _epochs(epochs) for name, epochs in bare_gathers(images, labels, batch_size, ctx.device).items()}
        winner, seconds = fastest(gathers, ctx.device)
        ctx.notes.append(race_note(f"{BARE_GATHER} b{batch_size}", winner, seconds))
        baselines = {
            PER_SAMPLE_LOADER: _epochs(per_sample_dataloader(images, labels, batch_size, ctx.device)),
            BATCHED_LOADER: _epochs(batched_dataloader(images, labels, batch_size, ctx.device)),
            BARE_GATHER: gathers[winner],
        }
        for backend in backends:
            if backend == "resident":
                loader = ctx.resident_loader(batch_size, "noaug")
            else:
                loader = build_loader(LoaderConfig(data_dir=ctx.data, batch_size=batch_size, backend="ffcv",
                                                   device=ctx.cfg.device, num_workers=2))
            ours = _epochs(loader.uint8_batches)
            for baseline, theirs in baselines.items():
                yield Comparison(f"loader {backend} b{batch_size}", "batches/s", per_epoch, ours, baseline, theirs)


def _epochs(epoch_batches: Callable[[int], Any]) -> Callable[[], None]:
    """A callable that consumes the next whole epoch of ``epoch_batches(epoch)`` each time it is called."""
    counter = iter(range(1 << 62))

    def one_epoch() -> None:
        for _ in epoch_batches(next(counter)):
            pass

    return one_epoch


class _PerSampleDataset(torch.utils.data.Dataset):
    """What a typical training script writes: one ``(image, label)`` per ``__getitem__``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[i]), int(self.labels[i])


class _BatchDataset(_PerSampleDataset):
    """A whole batch per ``__getitem__``: the rows a ``BatchSampler`` drew, gathered in one ``np.take``."""

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        rows = np.asarray(rows)
        return torch.from_numpy(np.take(self.images, rows, axis=0)), torch.from_numpy(np.take(self.labels, rows))


def per_sample_dataloader(images: np.ndarray, labels: np.ndarray, batch_size: int,
                          device: torch.device) -> Callable[[int], Iterator[Any]]:
    """Epoch → ``(images, labels)`` batches of the typical ``DataLoader``: per-sample ``Dataset``,
    default collate, 2 persistent workers, shuffled."""
    return _to_device(torch.utils.data.DataLoader(
        _PerSampleDataset(images, labels), batch_size=batch_size, shuffle=True, num_workers=2,
        persistent_workers=True, drop_last=True, pin_memory=device.type == "cuda",
    ), device)


def batched_dataloader(images: np.ndarray, labels: np.ndarray, batch_size: int,
                       device: torch.device) -> Callable[[int], Iterator[Any]]:
    """Epoch → ``(images, labels)`` batches of the strongest ``DataLoader`` over in-memory arrays:
    ``batch_size=None`` and a shuffled ``BatchSampler``, one ``np.take`` per batch, no workers."""
    dataset = _BatchDataset(images, labels)
    sampler = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(dataset), batch_size, drop_last=True)
    return _to_device(torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=sampler, num_workers=0, pin_memory=device.type == "cuda",
    ), device)


def _to_device(loader: torch.utils.data.DataLoader, device: torch.device) -> Callable[[int], Iterator[Any]]:
    """One epoch of ``loader`` per call, each batch copied to ``device`` without blocking (as a training loop does)."""

    def epoch(_: int):
        for x, y in loader:
            yield (x.to(device, non_blocking=True), y.to(device, non_blocking=True)) if device.type == "cuda" else (x, y)

    return epoch


def bare_gathers(images: np.ndarray, labels: np.ndarray, batch_size: int,
                 device: torch.device) -> dict[str, Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]]:
    """The bare-gather candidates: epoch ``e`` → the ``(images, labels)`` batches of one gather kernel.

    Every candidate holds the split as one resident tensor on ``device`` and walks the plan the
    resident loader walks with its default seed (:func:`~fasttarget.loader.epoch_rows`), so
    its batches are the loader's, byte for byte: contiguous uint8 ``[B,H,W,3]`` on ``device``.
    ``np.take`` needs host memory, so on CUDA ``torch.index_select`` is the only candidate.
    """
    from fasttarget.loader import LoaderConfig, epoch_rows

    x, y = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)
    pool, seed = np.arange(len(labels)), LoaderConfig().seed

    def rows(epoch: int) -> np.ndarray:
        return epoch_rows(pool, seed=seed, epoch=epoch, shuffle=True, batch_size=batch_size, drop_last=True)

    def index_select(epoch: int):
        plan = torch.from_numpy(rows(epoch)).to(device)
        for lo in range(0, len(plan), batch_size):
            index = plan[lo : lo + batch_size]
            yield x.index_select(0, index), y.index_select(0, index)

    def take(epoch: int):
        xs, ys, plan = x.numpy(), y.numpy(), rows(epoch)
        for lo in range(0, len(plan), batch_size):
            index = plan[lo : lo + batch_size]
            yield torch.from_numpy(np.take(xs, index, axis=0)), torch.from_numpy(np.take(ys, index))

    return {"torch.index_select": index_select, **({"np.take": take} if device.type == "cpu" else {})}


# --- step -------------------------------------------------------------------------------------

STEP_BATCH = 128
STEP_AUGMENT = "stdaug"
STUDENT_BATCH = 512


class StudentStep:
    """One optimizer step of the paper's student on a batch: forward, separation loss, backward, AdamW.

    Built from the pieces :func:`fasttarget.train.train` uses (``prepare_model``,
    ``build_optimizer``, ``autocast``, ``loss_terms``), with the paper's defaults.

    Args:
        width: ResNet-18 width multiplier.
        num_classes: K.
        device: where it trains.
        compile: ``torch.compile`` the student (``None``: on CUDA only, as ``fasttarget train``).
        bf16: bf16 autocast on CUDA (as ``fasttarget train``); ``False`` steps in float32.
    """

    def __init__(self, width: float, num_classes: int, device: torch.device, compile: bool | None = None,
                 bf16: bool = True, temperature: float = 2.0):
        from fasttarget.losses import build_student
        from fasttarget.models import ModelConfig
        from fasttarget.train import autocast, build_optimizer, prepare_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = build_student(ModelConfig(width=width, num_classes=num_classes), "separation")
        self.net, self.forward = prepare_model(net, device, compile)
        self.optimizer = build_optimizer(self.net, 1e-3, 0.01)
        self.autocast = (lambda: autocast(device)) if bf16 else contextlib.nullcontext
        self.num_classes, self.temperature = num_classes, temperature

    def __call__(self, batch) -> torch.Tensor:
        from fasttarget.losses import hard_targets, loss_terms

        with self.autocast():
            logits_g, logits_h = self.forward(batch.images)
        hard = hard_targets(batch.labels, self.num_classes, batch.record)
        terms = loss_terms(logits_g, logits_h, batch.targets, hard, self.temperature)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.optimizer.step()
        return terms["loss"]


def step_comparisons(ctx: BenchContext) -> Iterator[Comparison]:
    """Training-step img/s of Strategies A, B and C at batch 128 with StdAug.

    For each strategy, the full step (resident loader + StdAug + the strategy's targets +
    student forward/backward/AdamW) against the same student step on batches produced
    beforehand (pre-staged tensors): ``1 - ratio`` is the loader's share of the step time.
    Then C's and B's full step against A's (C reads cached targets, B runs the teacher,
    which on CUDA overlaps the student on a side stream). On CUDA, also the full-width
    student at batch 512 with compile + bf16 + channels_last against the eager float32 step.
    """
    n = ctx.cfg.batches
    ctx.notes.append(f"step suite: ResNet-18 width {ctx.cfg.width} student and teacher, {STEP_AUGMENT}, "
                     f"batch {STEP_BATCH}, {n} steps per timed call")
    full, staged_by = {}, {}
    for strategy in ctx.strategies():
        loader = ctx.resident_loader(STEP_BATCH, STEP_AUGMENT, ctx.targets(strategy))
        student = StudentStep(ctx.cfg.width, ctx.meta.num_classes, ctx.device)
        stream = _forever(loader)
        staged = staged_by[strategy] = [next(stream) for _ in range(n)]
        full[strategy] = _steps(student, stream, n)
        yield Comparison(f"step {strategy} b{STEP_BATCH}", "img/s", n * STEP_BATCH, full[strategy],
                         STAGED, _steps(student, itertools.cycle(staged), n))
    if "C" in full:
        ctx.notes.append(_target_cost_note(ctx, staged_by["C"]))
    for strategy in ("C", "B"):
        if strategy in full:
            yield Comparison(f"step {strategy} b{STEP_BATCH}", "img/s", n * STEP_BATCH, full[strategy],
                             f"step A b{STEP_BATCH}", full["A"])
    if ctx.device.type == "cuda":
        # The student alone at full width: what a GPU's step time is made of once data is free.
        loader = ctx.resident_loader(STUDENT_BATCH, STEP_AUGMENT, ctx.targets("A"))
        staged = list(itertools.islice(_forever(loader), n))
        fast = StudentStep(1.0, ctx.meta.num_classes, ctx.device, compile=True, bf16=True)
        eager = StudentStep(1.0, ctx.meta.num_classes, ctx.device, compile=False, bf16=False)
        yield Comparison(f"student w1 b{STUDENT_BATCH} compile+bf16", "img/s", n * STUDENT_BATCH,
                         _steps(fast, itertools.cycle(staged), n), "eager float32",
                         _steps(eager, itertools.cycle(staged), n))


def _target_cost_note(ctx: BenchContext, batches: list[Any], calls: int = 200) -> str:
    """A note with what C's targets cost per batch over A's one-hot, timed on the providers alone.

    The full-step rows carry the whole machine's noise; this isolates the one thing C adds to
    a step (gather cached logits, softmax, mix), so its share of a step can be read directly.
    """
    providers = {s: ctx.targets(s) for s in ("A", "C")}
    cost = {}
    for strategy, provider in providers.items():
        for batch in batches:  # warm-up: page cache of the memory map, allocator
            provider(batch)
        cost[strategy] = min(
            elapsed(lambda: [provider(batches[i % len(batches)]) for i in range(calls)], ctx.device) / calls
            for _ in range(3)
        )
    return (f"targets alone, batch {STEP_BATCH}: C {cost['C'] * 1e6:.0f} µs/batch, A (one-hot) "
            f"{cost['A'] * 1e6:.0f} µs/batch: C adds {(cost['C'] - cost['A']) * 1e6:.0f} µs to each step")


def _forever(loader: Any) -> Iterator[Any]:
    """The batches of ``loader`` across epochs, without end (each pass over a loader is its next epoch)."""
    while True:
        yield from loader


def _steps(student: StudentStep, batches: Iterator[Any], count: int) -> Callable[[], None]:
    """A callable doing ``count`` student steps on the next batches of ``batches``."""

    def run() -> None:
        for _ in range(count):
            student(next(batches))

    return run


COMPARISONS: dict[str, Callable[[BenchContext], Iterator[Comparison]]] = {
    "convert": convert_comparisons,
    "loader": loader_comparisons,
    "augment": augment_comparisons,
    "targets": targets_comparisons,
    "step": step_comparisons,
}


def run_suite(suite: str, ctx: BenchContext) -> list[Row]:
    """Build and measure a suite's comparisons one at a time (each loader lives only while measured)."""
    return [ctx.measure(comp) for comp in COMPARISONS[suite](ctx)]
