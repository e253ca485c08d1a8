"""Target providers: what each training view is mapped to (the paper's Strategies A, B, C).

A provider turns a loader :class:`~fasttarget.loader.Batch` into a ``[B, K]`` probability
tensor on the batch's device (rows sum to 1). The classifier head's hard labels are
``batch.labels`` (mixed through ``batch.record`` like the targets).

- **A** (:class:`OneHotTargets`): one-hot of the label; under MixUp/CutMix
  ``λ·onehot(yᵢ) + (1−λ)·onehot(y_perm(i))``.
- **B** (:class:`TeacherTargets`): ``softmax(teacher(view) / T)`` on exactly the augmented,
  possibly mixed, images the student receives — one soft target per view.
- **C** (:class:`CachedTargets`): ``softmax(teacher(original) / T)`` of the un-augmented sample,
  read from the logits cache by sample index (:mod:`fasttarget.cache`), then mixed with the
  batch's λ and permutation — every view of a sample shares one target. From a top-k cache the
  target is FKD's marginally smoothed top-k distribution (:func:`topk_probabilities`).

The teacher is wrapped once by :class:`TeacherModel` (eval mode, no grad, its own input
normalization, channels_last, and on CUDA bf16 autocast + optional ``torch.compile``), so
Strategy B and the cache builder run the very same forward.

Example:
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from fasttarget.targets import OneHotTargets
    >>> record = SimpleNamespace(mix=lambda t: t)  # an AugRecord without a mix
    >>> batch = SimpleNamespace(labels=torch.tensor([2, 0]), record=record)
    >>> OneHotTargets(3)(batch)
    tensor([[0., 0., 1.],
            [1., 0., 0.]])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from fasttarget.choices import STRATEGIES  # noqa: F401 (re-exported)
from fasttarget.config import TargetConfig, check_temperature
from fasttarget.errors import UserError
from fasttarget.models import load_classifier, memory_format

if TYPE_CHECKING:
    from fasttarget.cache import TargetCache
    from fasttarget.dataset import DatasetMeta
    from fasttarget.loader import Batch


@runtime_checkable
class TargetProvider(Protocol):
    """Maps a batch to its targets.

    Attributes:
        num_classes: K, the width of the returned rows.
    """

    num_classes: int

    def __call__(self, batch: Batch) -> torch.Tensor:
        """Return float32 ``[B, K]`` probabilities on ``batch.images.device``; rows sum to 1."""
        ...


class OneHotTargets:
    """Strategy A: the one-hot label, mixed with the batch's MixUp/CutMix λ and permutation.

    Args:
        num_classes: K.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, batch: Batch) -> torch.Tensor:
        onehot = F.one_hot(batch.labels, self.num_classes).to(torch.float32)
        return batch.record.mix(onehot)


class TeacherModel:
    """A frozen teacher ready to score student inputs: ``images → float32 logits [B, K]``.

    It takes images normalized with the *data's* mean/std (what the loader emits) and, when the
    teacher was trained with another normalization, maps them to the teacher's own with one
    affine op, ``x·(σ_d/σ_t) + (μ_d−μ_t)/σ_t`` (un-normalize, re-normalize). It runs
    channels_last (faster for convolutions on CPU too); on CUDA under bf16 autocast and, if asked,
    ``torch.compile``\\ d, on CPU in float32.

    uint8 images (``[B, 3, H, W]``, 0..255) are taken too and normalized with the teacher's mean/std.
    With ``input_size`` images of another side are resized to it (bilinear, antialiased) after the
    normalization, which commutes with it: an ecosystem teacher scores at its own resolution.

    Args:
        net: the teacher network (returns logits); put in eval mode and frozen here.
        data_mean, data_std: per-channel normalization of the incoming images (0..1 scale).
        teacher_mean, teacher_std: normalization the teacher was trained with; ``None`` = same as data.
        compile: ``torch.compile`` the forward (CUDA only; ignored on CPU where it does not pay off).
        input_size: the side the teacher expects; ``None`` scores images at the size they come.

    Shape:
        - Input: ``[B, 3, H, W]`` float (or uint8), on the teacher's device.
        - Output: ``[B, K]`` float32.

    Example:
        >>> import torch
        >>> from fasttarget.models import ModelConfig, build_classifier
        >>> net = build_classifier(ModelConfig(width=0.125, num_classes=10))
        >>> teacher = TeacherModel(net, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        >>> teacher(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        net: nn.Module,
        data_mean: Sequence[float],
        data_std: Sequence[float],
        teacher_mean: Sequence[float] | None = None,
        teacher_std: Sequence[float] | None = None,
        compile: bool = False,
        input_size: int | None = None,
    ):
        self.input_size = input_size
        self.device = next(net.parameters()).device
        config = getattr(net, "config", None)
        # channels_last, or contiguous where that crashes on CPU (fasttarget.models.memory_format)
        self._layout = memory_format(net, self.device,
                                     config.image_size if config is not None else input_size or 0)
        self.net = net.eval().requires_grad_(False).to(memory_format=self._layout)
        self.num_classes = _num_classes(net)
        self._cuda = self.device.type == "cuda"
        self._scale, self._shift = _renormalization(
            data_mean, data_std,
            data_mean if teacher_mean is None else teacher_mean,
            data_std if teacher_std is None else teacher_std,
            self.device,
        )
        # 0..255 pixels to the teacher's normalization: data "mean" 0 and "std" 1/255.
        self._from_uint8 = _renormalization((0.0,) * 3, (1 / 255,) * 3,
                                            data_mean if teacher_mean is None else teacher_mean,
                                            data_std if teacher_std is None else teacher_std, self.device)
        self._forward = torch.compile(self.net) if compile and self._cuda else self.net

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        scale, shift = self._from_uint8 if images.dtype == torch.uint8 else (self._scale, self._shift)
        if scale is not None:
            images = torch.addcmul(shift, images.float(), scale)
        if self.input_size is not None and images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        images = images.contiguous(memory_format=self._layout)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._cuda):
            return self._forward(images).float()


def load_teacher(
    path: str | Path, meta: DatasetMeta, device: str | torch.device, compile: bool = False
) -> tuple[TeacherModel, float]:
    """Load a teacher checkpoint for a dataset and wrap it.

    Args:
        path: a checkpoint written by :func:`fasttarget.models.save_classifier`, or an ecosystem
            teacher ``torchvision:NAME[@SIZE]=FILE`` / ``timm:NAME[@SIZE]=FILE`` (:mod:`fasttarget.zoo`).
        meta: the dataset the teacher will score (its class count and normalization).
        device: where the teacher runs.
        compile: see :class:`TeacherModel`.

    Returns:
        The wrapped teacher and the test accuracy recorded in its checkpoint (NaN for a state dict,
        which records none).

    Raises:
        UserError: the checkpoint is unreadable or has a different number of classes.
    """
    from fasttarget.zoo import TeacherSpec, load_spec_teacher, parse_teacher

    spec = parse_teacher(path)
    if isinstance(spec, TeacherSpec):
        net, pre = load_spec_teacher(spec, meta.num_classes, device)
        return TeacherModel(net, meta.mean, meta.std, pre.mean, pre.std, compile=compile,
                            input_size=pre.size), float("nan")
    net, info = load_classifier(path, device)
    if info.model.num_classes != meta.num_classes:
        raise UserError(
            f"teacher {path} predicts {info.model.num_classes} classes but the dataset has "
            f"{meta.num_classes}: use a teacher trained on this dataset"
        )
    teacher = TeacherModel(net, meta.mean, meta.std, info.mean, info.std, compile=compile)
    return teacher, info.test_accuracy


class TeacherTargets:
    """Strategy B: ``softmax(teacher(view) / T)`` on the exact (augmented, mixed) student input.

    Images are not mixed again here: a mixed view is itself the sample, so the teacher scores it
    as is.

    Args:
        teacher: a :class:`TeacherModel`; a bare ``nn.Module`` is wrapped assuming it expects the
            data's normalization (identity re-normalization).
        temperature: T (2.0 in the paper).
    """

    def __init__(self, teacher: TeacherModel | nn.Module, temperature: float = 2.0):
        if not isinstance(teacher, TeacherModel):
            teacher = TeacherModel(teacher, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.teacher = teacher
        self.temperature = check_temperature(temperature)
        self.num_classes = teacher.num_classes

    def __call__(self, batch: Batch) -> torch.Tensor:
        return torch.softmax(self.teacher(batch.images) / self.temperature, dim=1)


def topk_probabilities(
    values: torch.Tensor, classes: torch.Tensor, num_classes: int, temperature: float
) -> torch.Tensor:
    """A top-k cache's targets: FKD's marginal smoothing of the K kept logits.

    A top-k row (:func:`fasttarget.cache.stored_rows`) holds the K largest teacher logits
    ``z_1 … z_K`` of classes ``c_1 … c_K`` and the tail logit
    ``r = T0·(log Σ_{j∉top-K} exp(z_j/T0) − log(C−K))`` computed at the build temperature T0.
    At read temperature T, with ``m = max(z_1, r)`` (numerical stability only) and

        ``Z = Σ_i exp((z_i − m)/T) + (C−K)·exp((r − m)/T)``,

    the target is ``p[c_i] = exp((z_i − m)/T) / Z`` for the kept classes and
    ``p[j] = exp((r − m)/T) / Z`` for each of the C−K others; rows sum to 1. At T = T0 the kept
    probabilities are exactly the teacher's ``softmax(z/T0)`` of those classes and every other
    class gets ``(1 − Σ_i p[c_i]) / (C−K)``: the remaining mass spread evenly, as FKD does. At
    another T it is the softmax at T of the logits with every other class set to ``r``.

    Args:
        values: ``[B, K+1]`` the kept logits, then the tail logit (any float dtype).
        classes: ``[B, K]`` their class indices (any integer dtype).
        num_classes: C.
        temperature: T.

    Returns:
        float32 ``[B, C]`` probabilities.

    Example:
        >>> z = torch.tensor([[2.0, 0.0, 0.0, 0.0]])  # top-1 and its tail logit at T0 = 1
        >>> values = torch.tensor([[2.0, 0.0]])
        >>> torch.allclose(topk_probabilities(values, torch.tensor([[0]]), 4, 1.0), torch.softmax(z, 1))
        True
    """
    k = classes.shape[1]
    scaled = values.float() / temperature
    weights = (scaled - scaled.max(dim=1, keepdim=True).values).exp()
    total = weights[:, :k].sum(dim=1, keepdim=True) + (num_classes - k) * weights[:, k:]
    probs = (weights[:, k:] / total).expand(-1, num_classes).clone()
    return probs.scatter_(1, classes.long(), weights[:, :k] / total)


class CachedTargets:
    """Strategy C: the cached ``softmax(teacher(original) / T)`` of each sample, mixed like the views.

    Args:
        cache: an open :class:`~fasttarget.cache.TargetCache`.
        temperature: T, applied to the stored logits at read time.
    """

    def __init__(self, cache: TargetCache, temperature: float = 2.0):
        self.cache = cache
        self.temperature = check_temperature(temperature)
        self.num_classes = cache.num_classes

    def __call__(self, batch: Batch) -> torch.Tensor:
        device = batch.images.device
        logits = self.cache.gather(batch.indices, device)
        if self.cache.form.top_k is None:
            probs = torch.softmax(logits.float() / self.temperature, dim=1)
        else:
            classes = self.cache.gather_classes(batch.indices, device)
            probs = topk_probabilities(logits, classes, self.num_classes, self.temperature)
        return batch.record.mix(probs)


def build_targets(cfg: TargetConfig, meta: DatasetMeta, device: str | torch.device) -> TargetProvider:
    """Build the target provider of a strategy for a dataset.

    Args:
        cfg: the strategy and its inputs.
        meta: the training dataset (class count, normalization, fingerprint checked against a cache).
        device: where B's teacher runs.

    Raises:
        UserError: a missing or mismatched teacher or cache.
    """
    if cfg.strategy == "A":
        return OneHotTargets(meta.num_classes)
    if cfg.strategy == "B":
        teacher, _ = load_teacher(cfg.teacher, meta, device, compile=cfg.compile)
        return TeacherTargets(teacher, cfg.temperature)
    # Imported here: the cache builder runs TeacherModel, so fasttarget.cache imports this module.
    from fasttarget.cache import TargetCache, teacher_sha256

    cache = TargetCache.open(
        cfg.cache,
        expected_fingerprint=meta.fingerprint,
        num_classes=meta.num_classes,
        teacher_sha256=teacher_sha256(cfg.teacher) if cfg.teacher is not None else None,
        form=cfg.cache_form,
    )
    return CachedTargets(cache, cfg.temperature)


def _num_classes(net: nn.Module) -> int:
    config = getattr(net, "config", None)
    if config is not None:
        return config.num_classes
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features


def _renormalization(
    data_mean: Sequence[float], data_std: Sequence[float],
    teacher_mean: Sequence[float], teacher_std: Sequence[float],
    device: torch.device,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Scale and shift mapping data-normalized images to teacher-normalized ones (None if identity)."""
    dm, ds, tm, ts = (torch.tensor(v, dtype=torch.float64) for v in (data_mean, data_std, teacher_mean, teacher_std))
    scale, shift = ds / ts, (dm - tm) / ts
    if torch.allclose(scale, torch.ones_like(scale), atol=1e-6) and torch.allclose(shift, torch.zeros_like(shift), atol=1e-6):
        return None, None
    return tuple(v.to(device=device, dtype=torch.float32).view(1, -1, 1, 1) for v in (scale, shift))


def teacher_targets(teacher: str | Path, data_dir: str | Path, device: str | torch.device = "cpu",
                    temperature: float = 2.0, compile: bool = False) -> TeacherTargets:
    """Strategy B's provider in one call: a teacher (checkpoint or ``torchvision:``/``timm:`` spec) for a dataset.

    Example:
        >>> from fasttarget.loader import LoaderConfig, build_loader
        >>> provider = teacher_targets("teachers/t30.pt", "data/cifar10")  # doctest: +SKIP
        >>> loader = build_loader(LoaderConfig("data/cifar10", augment="stdaug+mixup"), targets=provider)  # doctest: +SKIP
    """
    from fasttarget.dataset import DatasetMeta

    return build_targets(TargetConfig("B", temperature, teacher=teacher, compile=compile),
                         DatasetMeta.load(data_dir), device)


def cached_targets(cache_path: str | Path, data_dir: str | Path, temperature: float = 2.0,
                   teacher: str | Path | None = None) -> CachedTargets:
    """Strategy C's provider in one call: the cache of ``fasttarget cache build``, checked against the
    dataset in ``data_dir`` (fingerprint, class count, checksum) and, when given, its ``teacher``.

    Example:
        >>> provider = cached_targets("targets.h5", "data/cifar10")  # doctest: +SKIP
    """
    from fasttarget.dataset import DatasetMeta

    return build_targets(TargetConfig("C", temperature, teacher=teacher, cache=cache_path),
                         DatasetMeta.load(data_dir), "cpu")
