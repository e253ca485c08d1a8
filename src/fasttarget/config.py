"""Every configuration a user gives fasttarget, validated, in a module that imports no torch, ffcv or numba.

The frozen dataclasses the ``build_*`` functions and the training loops take live here,
next to the checks of their values, so that the command line builds (and so validates) a
command's config before it imports the library that acts on it: a bad flag value then
reaches the user as one line within a blink instead of after the seconds ``import torch``
takes. The modules that act on a config re-export it (``from fasttarget.train import
TrainConfig`` is the same class), so a config keeps its home in the documentation and in
callers' imports. Checks that need the data's contents, a checkpoint or a device stay with
the code that reads them.

One section per concern, in the order data flows: teacher and student names
(:mod:`fasttarget.zoo`), augmentation (:mod:`fasttarget.augment`), model
(:mod:`fasttarget.models`), subset (:mod:`fasttarget.subsets`), loader (:mod:`fasttarget.loader`),
targets (:mod:`fasttarget.targets`), student run (:mod:`fasttarget.train`), teacher ladder
(:mod:`fasttarget.teacher`), logits cache (:mod:`fasttarget.cache`) and fleet (:mod:`fasttarget.fleet`).

Example:
    >>> cfg = TrainConfig(data="data/cifar10", out="runs/a", strategy="C", teacher="t30.pt", width=0.25)
    >>> cfg.teacher, augment_components("mixup+stdaug")
    (PosixPath('t30.pt'), ('color', 'gray', 'flip', 'crop', 'mixup'))
    >>> TrainConfig(data="data/cifar10", out="runs/a", lr=-1)
    Traceback (most recent call last):
    ...
    fasttarget.errors.UserError: --lr must be a positive number, got -1
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fasttarget.choices import ARCHS, DTYPES, LOADER_BACKENDS, LOSSES, STRATEGIES
from fasttarget.errors import UserError

if TYPE_CHECKING:
    import torch

    from fasttarget.dataset import DatasetMeta

# ---------------------------------------------------------------- teachers and students (fasttarget.zoo)

SOURCES = ("torchvision", "timm")
STUDENT_FORMS = "torchvision:NAME, timm:NAME or module.path:factory"


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher built from the ecosystem: ``SOURCE:NAME[@SIZE]=FILE``.

    Args:
        source: ``"torchvision"`` or ``"timm"``.
        name: the architecture, as ``torchvision.models.get_model`` / ``timm.create_model`` name it.
        file: the state-dict file.
        size: input side the teacher scores at; ``None`` = the architecture's default.
    """

    source: str
    name: str
    file: Path
    size: int | None = None

    def __str__(self) -> str:
        size = "" if self.size is None else f"@{self.size}"
        return f"{self.source}:{self.name}{size}={self.file}"

    def absolute(self) -> TeacherSpec:
        return replace(self, file=self.file.absolute())


def parse_teacher(value: str | Path | TeacherSpec) -> Path | TeacherSpec:
    """A ``--teacher`` value: a :class:`TeacherSpec` for ``torchvision:``/``timm:`` ones, else a path.

    Raises:
        UserError: a ``torchvision:``/``timm:`` value without ``=FILE`` or with a bad ``@SIZE``.
    """
    if isinstance(value, TeacherSpec):
        return value
    text = str(value)
    source, colon, rest = text.partition(":")
    if not colon or source not in SOURCES:
        return Path(value)
    arch, equals, file = rest.partition("=")
    name, at, size = arch.partition("@")
    if not (equals and file and name):
        raise UserError(f"--teacher {text}: name the architecture and its state-dict file, as {source}:NAME=FILE")
    if at and not (size.isdigit() and int(size) >= 8):
        raise UserError(f"--teacher {text}: @SIZE is the teacher's input side in pixels (8 or more), got {size!r}")
    return TeacherSpec(source, name, Path(file), int(size) if at else None)


def is_student_spec(arch: str) -> bool:
    """Whether an architecture name is an ecosystem student (``SOURCE:NAME``) rather than a built-in."""
    return ":" in arch


def check_student_spec(arch: str, builtins: Sequence[str]) -> None:
    """Refuse an architecture that is neither built in nor of the forms in :data:`STUDENT_FORMS`."""
    source, _, name = arch.partition(":")
    if not (is_student_spec(arch) and source and name):
        raise UserError(f"unknown architecture {arch!r}: choose one of {', '.join(builtins)}, or {STUDENT_FORMS}")


# ---------------------------------------------------------------- augmentation (fasttarget.augment)

@dataclass(frozen=True)
class AugmentConfig:
    """What to augment and how strongly.

    Args:
        name: an augmentation name or a ``+`` composition (see the module docstring).
        p: if set, overrides the application probability of every component (the paper's
            are 0.8 color, 0.2 grayscale, 0.5 flip, 1 crop, 1 mix); ``0`` makes the augmentation
            the identity, ``1`` applies every component to every sample.
        brightness: jitter factors are drawn from ``[max(0, 1 - brightness), 1 + brightness]``.
        contrast: as ``brightness``, for contrast.
        saturation: as ``brightness``, for saturation.
        crop_scale: range of the crop's area as a fraction of the image's.
        crop_ratio: range of the crop's width / height.
        mixup_alpha: MixUp's λ ~ Beta(mixup_alpha, mixup_alpha).
        cutmix_alpha: CutMix's box area ~ 1 - Beta(cutmix_alpha, cutmix_alpha).
        fuse_cpu: run color/grayscale/flip/crop of float32 CPU batches as one fused numba
            kernel (several times faster); ``False`` uses the torch ops, as on GPU.
    """

    name: str = "stdaug"
    p: float | None = None
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    fuse_cpu: bool = True

    def __post_init__(self) -> None:
        if self.p is not None and not 0.0 <= self.p <= 1.0:
            raise UserError(f"augmentation probability p={self.p} is outside [0, 1]: pass a value in [0, 1]")
        for key in ("brightness", "contrast", "saturation"):
            if getattr(self, key) < 0:
                raise UserError(f"jitter {key}={getattr(self, key)} is negative: pass a value >= 0")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise UserError(f"crop_scale={self.crop_scale} is not a range inside (0, 1]: pass e.g. (0.08, 1.0)")
        lo, hi = self.crop_ratio
        if not 0 < lo <= hi:
            raise UserError(f"crop_ratio={self.crop_ratio} is not a positive range: pass e.g. (0.75, 1.333)")
        for key in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) <= 0:
                raise UserError(f"{key}={getattr(self, key)} must be > 0: pass e.g. 1.0")


# Canonical order: the paper's StdAug order (the components fasttarget.augment fuses on CPU first), mixing last.
_ORDER = ("color", "gray", "flip", "crop", "mixup", "cutmix")
_NAMES = {
    "noaug": (),
    "color": ("color",),
    "flip": ("flip",),
    "crop": ("crop",),
    "stdaug": ("color", "gray", "flip", "crop"),
    "mixup": ("mixup",),
    "cutmix": ("cutmix",),
}
#: Every single augmentation name ``build_augment`` accepts (compose them with ``+``).
AUGMENT_NAMES = tuple(_NAMES)


def check_aug(name: str) -> None:
    """Refuse an ``--aug`` value that :func:`augment_components` refuses, naming the flag."""
    try:
        augment_components(name)
    except UserError as err:
        raise UserError(f"--aug {name}: {err}") from None


def augment_components(name: str) -> tuple[str, ...]:
    """The components an augmentation name applies, in the canonical order.

    Raises:
        UserError: unknown name, a component listed twice, or two mixes in one composition.

    Example:
        >>> augment_components("mixup+flip"), augment_components("noaug")
        (('flip', 'mixup'), ())
    """
    components: list[str] = []
    for part in name.lower().split("+"):
        part = part.strip()
        if part not in _NAMES:
            raise UserError(
                f"unknown augmentation {part!r} in {name!r}: use one of {', '.join(AUGMENT_NAMES)} joined by '+'"
            )
        for component in _NAMES[part]:
            if component in components:
                raise UserError(f"augmentation {name!r} applies {component!r} twice: list it once")
            components.append(component)
    if "mixup" in components and "cutmix" in components:
        raise UserError(f"augmentation {name!r} has two mixes: use mixup or cutmix, not both")
    return tuple(sorted(components, key=_ORDER.index))


# ---------------------------------------------------------------- model (fasttarget.models)

@dataclass(frozen=True)
class ModelConfig:
    """Which network to build.

    Args:
        arch: one of :data:`ARCHS`.
        width: multiplier of the architecture's base width (1.0 = the paper's model).
        num_classes: size of the classifier heads.
        image_size: input side in pixels, the loader's output resolution (``--res``); it picks
            the ResNet stem (:func:`~fasttarget.models.imagenet_stem`) and the ViT patch size.
    """

    arch: str = "resnet18"
    width: float = 1.0
    num_classes: int = 10
    image_size: int = 32

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            check_student_spec(self.arch, ARCHS)
            if self.width != 1.0:
                raise UserError(f"--width scales the built-in architectures only: drop it for {self.arch}")
        if not 0 < self.width <= 8:
            raise UserError(f"--width must be in (0, 8], got {self.width}")
        if self.num_classes < 2:
            raise UserError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.image_size < 8:
            raise UserError(f"--res must be at least 8 pixels, got {self.image_size}")


# ---------------------------------------------------------------- subsets (fasttarget.subsets)

@dataclass(frozen=True)
class SubsetConfig:
    """Which rows of a split to use.

    Args:
        ipc: images per class (the paper's IPC); ``None`` for no cap.
        fraction: share of every class in ``(0, 1]``, rounded up per class; ``None`` for all.
        seed: fixes each class's order; subsets of one seed are nested.
    """

    ipc: int | None = None
    fraction: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ipc is not None and self.fraction is not None:
            raise UserError("--ipc and --fraction exclude each other: pass only one")
        if self.ipc is not None and self.ipc < 1:
            raise UserError(f"--ipc must be at least 1, got {self.ipc}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise UserError(f"--fraction must be in (0, 1], got {self.fraction}")

    @property
    def is_full(self) -> bool:
        """True when the config selects every row."""
        return self.ipc is None and (self.fraction is None or self.fraction == 1)

    def describe(self) -> str:
        """A short label such as ``"ipc10-seed0"``, ``"frac0.5-seed0"`` or ``"full"``."""
        if self.ipc is not None:
            return f"ipc{self.ipc}-seed{self.seed}"
        if self.fraction is not None and self.fraction != 1:
            return f"frac{self.fraction:g}-seed{self.seed}"
        return "full"


# ---------------------------------------------------------------- loader (fasttarget.loader)

BACKENDS = LOADER_BACKENDS
# Tiny-ImageNet's train split (100k x 64 x 64 x 3 = 1.2 GB) fits, ImageNet's does not.
DEFAULT_MEMORY_BUDGET = 4 * 2**30
#: The output side of variable-size data when ``LoaderConfig.res`` is not set.
DEFAULT_RES = 224


@dataclass(frozen=True)
class LoaderConfig:
    """How to load one split.

    Args:
        data_dir: a converted dataset directory (``fasttarget convert``); required by
            :func:`~fasttarget.loader.build_loader`, unused by :meth:`~fasttarget.loader.ResidentLoader.from_arrays`.
        split: ``"train"`` or ``"test"``.
        batch_size: samples per batch (per rank).
        shuffle: a new random order each epoch; ``False`` keeps index order.
        drop_last: drop the last incomplete batch (the paper trains with it).
        seed: seeds the order of every epoch and the augmentation of every batch.
        augment: augmentation name such as ``"stdaug+mixup"`` (see :mod:`fasttarget.augment`)
            or an :class:`~fasttarget.augment.AugmentConfig`.
        backend: ``"resident"``, ``"ffcv"``, or ``"auto"``: resident when the decoded split
            fits ``memory_budget_bytes``.
        device: where batches are delivered (``"cpu"``, ``"cuda"``, ``"cuda:1"`` …).
        subset: an IPC or fraction subset of the split (:class:`~fasttarget.subsets.SubsetConfig`).
        memory_budget_bytes: the largest decoded split ``"auto"`` keeps resident.
        num_workers: ffcv decoding threads.
        os_cache: ffcv reads through the OS page cache (shared by processes on one machine)
            instead of its own process cache.
        quasi_random: ffcv's page-local random order (``OrderOption.QUASI_RANDOM``), which
            reads far less from disk when the beton does not fit in memory (pair it with
            ``os_cache=False``). Implies the ffcv backend; one process only; still
            deterministic per ``(seed, epoch)``, but not the order the resident backend walks.
        rank, world_size: this process's shard; both ``None`` takes them from an initialized
            ``torch.distributed`` process group, else a single process.
        res: output side in pixels. Variable-size data is cut to ``res x res`` at decode time
            (default :data:`DEFAULT_RES`); fixed-size data is delivered at its own size, which
            ``res`` may only repeat.
        stream: cut batches from a stream of per-epoch permutations (:mod:`fasttarget.order`),
            across epoch boundaries, so a subset smaller than a batch still trains with the
            full batch (the paper's batch 128 at IPC 10); a pass is then about one epoch.
    """

    data_dir: str | Path | None = None
    split: str = "train"
    batch_size: int = 128
    shuffle: bool = True
    drop_last: bool = True
    seed: int = 0
    augment: str | AugmentConfig = "noaug"
    backend: str = "auto"
    device: str | torch.device = "cpu"
    subset: SubsetConfig | None = None
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    num_workers: int = 2
    os_cache: bool = True
    quasi_random: bool = False
    rank: int | None = None
    world_size: int | None = None
    res: int | None = None
    stream: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"batch_size={self.batch_size} must be >= 1: pass e.g. 128")
        if self.backend not in BACKENDS:
            raise UserError(f"unknown loader backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.seed < 0:
            raise UserError(f"seed={self.seed} must be >= 0")
        if self.num_workers < 1:
            raise UserError(f"num_workers={self.num_workers} must be >= 1")
        if (self.rank is None) != (self.world_size is None):
            raise UserError("rank and world_size go together: pass both, or neither to use torch.distributed")
        if self.world_size is not None and not 0 <= self.rank < self.world_size:  # type: ignore[operator]
            raise UserError(f"rank={self.rank} is not in [0, world_size={self.world_size})")
        if self.res is not None and not 8 <= self.res <= 4096:
            raise UserError(f"res={self.res} is not an image side: pass e.g. 224 (between 8 and 4096)")
        if self.quasi_random and (self.backend == "resident" or not self.shuffle):
            raise UserError("quasi_random is a shuffled ffcv order: use it with backend 'ffcv' or 'auto' and shuffle=True")
        if self.quasi_random and self.stream:
            raise UserError("stream and quasi_random are two sample orders: pick one")
        augment_components(self.augment.name if isinstance(self.augment, AugmentConfig) else self.augment)

    def shard(self) -> tuple[int, int]:
        """``(rank, world_size)``: the configured ones, else the initialized process group's."""
        if self.world_size is not None:
            return self.rank, self.world_size  # type: ignore[return-value]
        import torch.distributed as dist  # a loader asks, with torch imported already

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1


def resolve_res(meta: DatasetMeta, res: int | None) -> int:
    """The side of the images a loader over ``meta``'s data delivers (``LoaderConfig.res`` resolved).

    Variable-size data: ``res``, by default :data:`DEFAULT_RES`. Fixed-size data: its own side.

    Raises:
        UserError: ``res`` asks fixed-size data for another size.
    """
    if meta.image_shape is None:
        return res or DEFAULT_RES
    height, width = meta.image_shape[:2]
    if res is not None and (res, res) != (height, width):
        raise UserError(f"--res {res} asks for {res}x{res} images, but this dataset's are all {height}x{width} "
                        f"and are delivered at that size: drop --res (or reconvert the source without a fixed size)")
    return height


# ---------------------------------------------------------------- targets (fasttarget.targets)

def check_temperature(temperature: float) -> float:
    """``temperature`` as a float, refused unless positive (T of the soft targets)."""
    if not temperature > 0:
        raise UserError(f"--temperature must be positive, got {temperature}")
    return float(temperature)


@dataclass(frozen=True)
class TargetConfig:
    """Which targets to train on.

    Args:
        strategy: ``"A"`` one-hot, ``"B"`` online teacher, ``"C"`` cached teacher.
        temperature: T of the soft targets (B and C).
        teacher: teacher checkpoint or ``torchvision:``/``timm:`` spec (:mod:`fasttarget.zoo`);
            required for B. For C it is optional and, when given, the
            cache must have been built from exactly this file (checked by SHA-256).
        cache: the logits cache written by ``fasttarget cache build``; required for C.
        compile: ``torch.compile`` the teacher (B on CUDA only).
        cache_form: the :class:`~fasttarget.cache.CacheForm` the cache must hold (C); ``None``
            takes either form.
    """

    strategy: str = "A"
    temperature: float = 2.0
    teacher: Path | str | None = None
    cache: Path | None = None
    compile: bool = False
    cache_form: CacheForm | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(f"unknown strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        check_temperature(self.temperature)
        if self.strategy == "B" and self.teacher is None:
            raise UserError("strategy B needs a teacher: pass --teacher CKPT")
        if self.strategy == "C" and self.cache is None:
            raise UserError("strategy C needs a target cache: build one with `fasttarget cache build` and pass --cache FILE")


# ---------------------------------------------------------------- student run (fasttarget.train)

def check_hyperparameters(lr: float, weight_decay: float, **counts: int) -> None:
    """Refuse optimizer settings and counts that no run can train with.

    One check for every config that trains (:class:`TrainConfig`, the teacher ladder's).

    Args:
        lr: AdamW's learning rate: a finite number above 0.
        weight_decay: AdamW's decoupled weight decay: a finite number, 0 or more.
        counts: step and batch counts by their field name (``steps=1000``), each at least 1.

    Raises:
        UserError: the first bad value, named by its command-line flag.
    """
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr must be a positive number, got {lr}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise UserError(f"--weight-decay must be a number, 0 or more, got {weight_decay}")
    for name, value in counts.items():
        if value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def check_device(device: str | None) -> None:
    """Refuse a ``--device`` other than ``cpu``, ``cuda`` or ``None`` (CUDA when available)."""
    if device not in (None, "cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")


def training_subset(ipc: int | None, fraction: float | None, seed: int):
    """``--ipc``/``--fraction`` as a :class:`~fasttarget.subsets.SubsetConfig`; ``None`` for the whole split.

    Raises:
        UserError: both given, or a bad value.
    """
    subset = SubsetConfig(ipc=ipc, fraction=fraction, seed=seed)
    return None if subset.is_full else subset



@dataclass(frozen=True)
class TrainConfig:
    """One student training run (``fasttarget train``).

    Args:
        data: converted dataset directory.
        out: run directory.
        strategy: ``"A"`` one-hot, ``"B"`` online teacher, ``"C"`` cached teacher.
        teacher: teacher checkpoint, or ``torchvision:NAME[@SIZE]=FILE`` / ``timm:NAME[@SIZE]=FILE``
            (a state dict, :mod:`fasttarget.zoo`); required for B; for C it names the cache's teacher and,
            without ``cache``, the cache is built (or reused) next to it.
        cache: Strategy C's logits cache (``fasttarget cache build``).
        aug: augmentation name (``fasttarget.augment``), e.g. ``"stdaug+mixup"``.
        steps: optimizer steps to train. With ``resume`` it may be raised above the run's: the run
            then continues to the new count (the learning rate is constant, so this is the run trained
            to the new count from the start; see :func:`~fasttarget.train.open_run`).
        eval_every: steps between evaluations on the test split (the last step is always evaluated).
        checkpoint_every: steps between checkpoints, a multiple of ``eval_every`` (default: ``eval_every``).
        seed: seed of the initialization, data order and augmentation parameters.
        ipc, fraction, subset_seed: train on a class-stratified subset (images per class or a fraction).
        arch, width: the student (``width`` multiplies ResNet-18's base width 64); ``arch`` may also be
            ``torchvision:NAME``, ``timm:NAME`` or ``module.path:factory`` (``--student``, :mod:`fasttarget.zoo`).
        loss: ``"separation"`` (the paper's) or ``"coupled"`` (plain KD), see :mod:`fasttarget.losses`.
        temperature: T of the soft targets and of ``g``'s softmax.
        batch_size: global batch (split across ranks under DDP).
        res: image side the loader delivers and the student is built for (``LoaderConfig.res``):
            variable-size data is cropped to it at decode time (default 224); fixed-size data
            keeps its own size.
        stream: cut batches across epoch boundaries (:mod:`fasttarget.order`), so a subset
            smaller than a batch trains with the full batch; without it such a subset is an error.
        lr, weight_decay: AdamW's.
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
        compile: ``torch.compile`` the student; ``None`` = on CUDA only.
        resume: continue the run in ``out`` from its last checkpoint (a fresh start if it has none).
        force: start over: delete the run already in ``out`` (its :data:`~fasttarget.train.RUN_FILES`) first.
        progress: show a progress bar.
    """

    data: Path
    out: Path
    strategy: str = "A"
    teacher: Path | TeacherSpec | None = None
    cache: Path | None = None
    aug: str = "stdaug"
    steps: int = 1000
    eval_every: int = 100
    checkpoint_every: int | None = None
    seed: int = 0
    ipc: int | None = None
    fraction: float | None = None
    subset_seed: int = 0
    arch: str = "resnet18"
    width: float = 1.0
    loss: str = "separation"
    temperature: float = 2.0
    batch_size: int = 128
    stream: bool = False
    lr: float = 1e-3
    weight_decay: float = 0.01
    res: int | None = None
    device: str | None = None
    compile: bool | None = None
    resume: bool = False
    force: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("data", "out", "cache"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if self.teacher is not None:
            object.__setattr__(self, "teacher", parse_teacher(self.teacher))
        if self.checkpoint_every is None:
            object.__setattr__(self, "checkpoint_every", self.eval_every)
        if self.strategy not in STRATEGIES:
            raise UserError(f"--strategy {self.strategy}: unknown strategy, choose one of {', '.join(STRATEGIES)}")
        if self.strategy == "A" and (self.teacher or self.cache):
            raise UserError("strategy A trains on one-hot labels and uses no teacher: drop --teacher/--cache")
        if self.strategy == "B" and self.teacher is None:
            raise UserError("strategy B needs a teacher: pass --teacher CKPT (train one with `fasttarget teacher`)")
        if self.strategy == "B" and self.cache is not None:
            raise UserError("strategy B scores every view online and reads no cache: drop --cache (or use --strategy C)")
        if self.strategy == "C" and self.teacher is None and self.cache is None:
            raise UserError("strategy C needs --cache FILE or --teacher CKPT (the cache is then built next to it)")
        if self.loss not in LOSSES:
            raise UserError(f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        ModelConfig(arch=self.arch, width=self.width)  # validates
        check_aug(self.aug)
        check_hyperparameters(self.lr, self.weight_decay, steps=self.steps, eval_every=self.eval_every,
                              batch_size=self.batch_size)
        if self.seed < 0:
            raise UserError(f"--seed must be 0 or more, got {self.seed}")
        if self.checkpoint_every < 1 or self.checkpoint_every % self.eval_every:
            raise UserError(f"--checkpoint-every ({self.checkpoint_every}) must be a positive multiple of "
                            f"--eval-every ({self.eval_every}): resume restarts at an evaluation")
        training_subset(self.ipc, self.fraction, self.subset_seed)  # validates
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UserError(f"--temperature must be a positive number, got {self.temperature}")
        check_device(self.device)
        if self.resume and self.force:
            raise UserError("--resume continues the run in --out and --force deletes it: pass one of them")

    def to_json(self) -> dict[str, Any]:
        """The config as JSON-ready values (paths as strings)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: str(v) if isinstance(v, (Path, TeacherSpec)) else v for k, v in values.items()}


# ---------------------------------------------------------------- teacher ladder (fasttarget.teacher)

@dataclass(frozen=True)
class LadderConfig:
    """A teacher ladder (``fasttarget teacher``).

    Args:
        data: converted dataset directory.
        out: directory for the teachers and ``ladder.json``.
        accuracies: target test accuracies in ``(0, 1)``.
        aug: augmentation of the teacher's training views.
        arch, width: the teacher network (``width`` multiplies ResNet-18's base width 64).
        max_steps: give up on the remaining targets after this many steps.
        eval_every: the most steps between two evaluations (the learning curve's slope
            usually schedules them sooner; see :class:`~fasttarget.teacher.Ladder`).
        tolerance: how far above a target a saved teacher may land; evaluations are
            scheduled to cross each target by about half of it.
        seed: seed of the initialization, data order and augmentation.
        random_init: also save the untrained network as ``teacher-random.pt``.
        batch_size, lr, weight_decay: the optimizer's (AdamW).
        ipc, fraction, subset_seed: train the teachers on a class-stratified subset.
        device: ``"cpu"``, ``"cuda"`` or ``None`` (CUDA when available).
        compile: ``torch.compile``; ``None`` = on CUDA only.
        force: overwrite a ladder already in ``out``.
        progress: report progress (:class:`fasttarget.progress.Progress`).
        eval_subset: evaluate the schedule on about this many test images (seeded by ``seed``,
            stratified); ``None`` for the whole test split.
    """

    data: Path
    out: Path
    accuracies: tuple[float, ...] = (0.3, 0.5, 0.7)
    aug: str = "stdaug"
    arch: str = "resnet18"
    width: float = 1.0
    max_steps: int = 20_000
    eval_every: int = 100
    tolerance: float = 0.01
    seed: int = 0
    random_init: bool = False
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    ipc: int | None = None
    fraction: float | None = None
    subset_seed: int = 0
    device: str | None = None
    compile: bool | None = None
    force: bool = False
    progress: bool = True
    eval_subset: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "accuracies", tuple(sorted(float(a) for a in self.accuracies)))
        if not self.accuracies and not self.random_init:
            raise UserError("no teacher to train: pass --accuracies (e.g. 0.3 0.5 0.7) and/or --random-init")
        bad = [a for a in self.accuracies if not 0 < a < 1]
        if bad:
            raise UserError(f"--accuracies must be fractions in (0, 1), got {bad}: write 0.3 for 30 %")
        if len(set(self.accuracies)) != len(self.accuracies):
            raise UserError(f"--accuracies lists a target twice: {list(self.accuracies)}")
        if self.arch not in ARCHS:
            raise UserError(f"unknown architecture {self.arch!r}: choose one of {', '.join(ARCHS)}")
        ModelConfig(arch=self.arch, width=self.width)  # validates the width
        check_aug(self.aug)
        check_hyperparameters(self.lr, self.weight_decay, max_steps=self.max_steps, eval_every=self.eval_every,
                              batch_size=self.batch_size)
        if not 0 < self.tolerance < 1:
            raise UserError(f"--tolerance must be a fraction in (0, 1), got {self.tolerance}: write 0.01 for 1 %")
        training_subset(self.ipc, self.fraction, self.subset_seed)  # validates
        if self.eval_subset is not None and self.eval_subset < 1:
            raise UserError(f"--eval-subset must be at least 1 test image, got {self.eval_subset}")
        check_device(self.device)


# ---------------------------------------------------------------- logits cache (fasttarget.cache)

@dataclass(frozen=True)
class CacheForm:
    """Which form a cache holds: all logits, or the K largest with their classes.

    Args:
        top_k: K, or ``None`` for the full form.
        dtype: storage type of the logits, ``"float16"`` or ``"float32"``.

    Example:
        >>> CacheForm().label, CacheForm(top_k=3, dtype="float32").label
        ('full float16', 'top-3 float32')
    """

    top_k: int | None = None
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top-k must be at least 1, got {self.top_k} (omit it for the full logits)")

    @property
    def label(self) -> str:
        kept = "full" if self.top_k is None else f"top-{self.top_k}"
        return f"{kept} {self.dtype}"

    @property
    def attrs(self) -> dict[str, Any]:
        """How the form is recorded in a cache's attributes."""
        return {"form": "full" if self.top_k is None else "top-k", "top_k": self.top_k or 0, "dtype": self.dtype}


@dataclass(frozen=True)
class CacheBuildConfig:
    """What ``fasttarget cache build`` does.

    Args:
        data: converted dataset directory; its train split is scored.
        teacher: teacher checkpoint (:func:`fasttarget.models.save_classifier`).
        out: the HDF5 file to write.
        temperature: default T recorded in the file (readers may choose another).
        dtype: storage type of the logits, ``"float16"`` or ``"float32"``.
        top_k: keep only the K largest logits of each sample (and their classes); ``None``
            keeps all of them. Needs K < the class count.
        res: the resolution of the scored view (the loader's ``res``; ``None``: the loader's
            default, the images' own size for fixed-size data).
        batch_size: images per teacher forward.
        device: where the teacher runs; ``None`` = CUDA when available, else CPU.
        compile: ``torch.compile`` the teacher (CUDA only).
        progress: show a tqdm progress bar on stderr.
    """

    data: Path
    teacher: Path | TeacherSpec
    out: Path
    temperature: float = 2.0
    dtype: str = "float16"
    top_k: int | None = None
    res: int | None = None
    batch_size: int = 512
    device: str | None = None
    compile: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("data", "out"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(self, "teacher", parse_teacher(self.teacher))
        self.form  # noqa: B018 (validates dtype and top_k)
        if self.res is not None and self.res < 8:
            raise UserError(f"--res must be at least 8 pixels, got {self.res}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not self.temperature > 0:
            raise UserError(f"--temperature must be positive, got {self.temperature}")
        check_device(self.device)


    @property
    def form(self) -> CacheForm:
        return CacheForm(self.top_k, self.dtype)

    def check_data(self, meta: DatasetMeta) -> None:
        """Refuse values the dataset ``meta`` describes cannot take (``top_k``, ``res``).

        Raises:
            UserError: ``top_k`` not below the class count, or ``res`` another size than fixed-size data's.
        """
        if self.top_k is not None and self.top_k >= meta.num_classes:
            raise UserError(f"--top-k {self.top_k} keeps every one of the {meta.num_classes} classes: "
                            f"pass a K below {meta.num_classes}, or omit --top-k for the full logits")
        resolve_res(meta, self.res)


# ---------------------------------------------------------------- fleet (fasttarget.fleet)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Architectures whose layers all fuse (fasttarget.fused): checked before any file is opened.
_FUSABLE_ARCHS = ("resnet18", "resnet50")


@dataclass(frozen=True)
class Member:
    """One student of a fleet: its run directory's name and its targets.

    Args:
        name: the member's directory under the fleet's ``--out``.
        strategy: ``"A"``, ``"B"`` or ``"C"`` (see :class:`fasttarget.train.TrainConfig`).
        teacher: B's teacher, or the teacher C builds its cache from.
        cache: C's logits cache.
        dir: its run directory when it is not ``<fleet --out>/<name>`` (a sweep keeps every
            run under ``runs/<run_id>``, whether it trained alone or in a fleet).
    """

    name: str
    strategy: str
    teacher: Path | None = None
    cache: Path | None = None
    dir: Path | None = None


def parse_members(specs: Sequence[str], check_files: bool = True) -> tuple[Member, ...]:
    """``--member`` values → members with unique names.

    A spec is ``[NAME=]STRATEGY[=FILE]``: ``A``; ``B=TEACHER.pt``; ``C=CACHE.h5`` (a file ending in
    ``.h5`` is a cache, any other a teacher whose cache is built next to it, as ``--teacher`` does
    for a solo C run). Without a name one is made from the strategy and the file's stem (``A``,
    ``B-t30``, ``C-t30``), numbered ``-2``, ``-3`` … where that repeats a name.

    Args:
        check_files: refuse files that do not exist.

    Raises:
        UserError: a bad spec (unknown strategy, a file for A, none for B/C, a missing file, a
            name that is not a plain directory name), or one name given twice.
    """
    parsed = [_parse_member(spec, check_files) for spec in specs]
    given = [name for name, _ in parsed if name is not None]
    repeated = sorted({name for name in given if given.count(name) > 1})
    if repeated:
        raise UserError(f"--member name {repeated[0]!r} is given twice: give each member its own name")
    taken, members = set(given), []
    for name, member in parsed:
        if name is None:
            stem = member.strategy if member.strategy == "A" else f"{member.strategy}-{_file(member).stem}"
            name, number = stem, 1
            while name in taken:
                number += 1
                name = f"{stem}-{number}"
            taken.add(name)
        members.append(dataclasses.replace(member, name=name))
    return tuple(members)


def _file(member: Member) -> Path:
    return member.cache if member.cache is not None else member.teacher


def _parse_member(spec: str, check_files: bool) -> tuple[str | None, Member]:
    parts = spec.split("=")
    name = None
    if len(parts) == 3:
        name, *parts = parts
    elif len(parts) == 2 and parts[0].upper() not in STRATEGIES:
        name, *parts = parts
    elif len(parts) > 3:
        raise UserError(f"--member {spec!r} is not [NAME=]STRATEGY[=FILE]: e.g. A, B=teacher.pt or t30=C=t30.h5")
    strategy, path = parts[0].upper(), Path(parts[1]) if len(parts) == 2 else None
    if name is not None and not _NAME.fullmatch(name):
        raise UserError(f"--member {spec!r}: the name {name!r} is not a plain directory name: use letters, digits, "
                        "'.', '_' and '-'")
    if strategy not in STRATEGIES:
        raise UserError(f"--member {spec!r}: unknown strategy {parts[0]!r}: choose one of {', '.join(STRATEGIES)}")
    if strategy == "A" and path is not None:
        raise UserError(f"--member {spec!r}: strategy A trains on one-hot labels and takes no file: pass --member A")
    if strategy != "A" and path is None:
        what = "a teacher checkpoint" if strategy == "B" else "a cache (.h5) or a teacher checkpoint"
        raise UserError(f"--member {spec!r}: strategy {strategy} needs {what}: pass --member {strategy}=FILE")
    if check_files and path is not None and not path.is_file():
        raise UserError(f"--member {spec!r}: {path} does not exist: train a teacher with `fasttarget teacher` "
                        "or build a cache with `fasttarget cache build`")
    cache = path if strategy == "C" and path.suffix == ".h5" else None
    teacher = path if path is not None and cache is None else None
    return name, Member(name or "", strategy, teacher, cache)


@dataclass(frozen=True)
class FleetConfig:
    """A fleet: the settings its members share and the members.

    Args:
        base: the shared settings as a solo run's config: ``out`` is the fleet's directory,
            ``strategy`` ``"A"`` and no teacher or cache (the members have theirs).
        members: at least one, names unique (:func:`parse_members`).

    Raises:
        UserError: no members, repeated names, an architecture that does not fuse, or a
            member whose solo config is refused.
    """

    base: TrainConfig
    members: tuple[Member, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))
        if not self.members:
            raise UserError("a fleet needs at least one --member")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise UserError("--member names repeat: give each member its own name")
        if self.base.arch not in _FUSABLE_ARCHS:
            raise UserError(f"--arch {self.base.arch} does not fuse into a fleet: use --arch "
                            f"{' or '.join(_FUSABLE_ARCHS)}, or train its members as solo runs with --strategy")
        for member in self.members:
            self.member_config(member)  # validates

    def member_config(self, member: Member) -> TrainConfig:
        """The config of ``member``'s solo run: what its ``config.json`` holds."""
        out = member.dir if member.dir is not None else self.base.out / member.name
        return dataclasses.replace(self.base, out=out, strategy=member.strategy,
                                   teacher=member.teacher, cache=member.cache)
