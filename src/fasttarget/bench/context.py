"""What ``fasttarget bench`` measures (:class:`BenchConfig`) and the data the suites share (:class:`BenchContext`)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fasttarget.bench.timing import Comparison, Row, measure
from fasttarget.choices import SUITES
from fasttarget.errors import UserError


DEVICES = ("cpu", "cuda")


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
        imagenet: an ImageNet train-folder layout (``train/<class>/*``) the imagenet suite
            repeats into its bench beton; ``None`` skips that suite with a note.
        scratch: directory for data kept between runs (the imagenet suite's beton, files and
            converted dataset); ``None`` = the run's temporary directory.
    """

    suites: tuple[str, ...] = ("all",)
    data: Path | None = None
    source: Path | None = None
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 1
    batches: int = 8
    width: float = 0.125
    imagenet: Path | None = None
    scratch: Path | None = None

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


def has_module(name: str) -> bool:
    """Whether ``name`` can be imported here (ffcv and kornia are absent on some GPU machines)."""
    return importlib.util.find_spec(name) is not None
