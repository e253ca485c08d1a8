"""The ``augment`` suite: each named augmentation against Kornia's chains and torchvision v2 per sample."""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from fasttarget.bench.context import BenchContext, has_module
from fasttarget.bench.goals import KORNIA, KORNIA_RESAMPLE
from fasttarget.bench.timing import Comparison


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
            has_crop = any(op.name == "crop" for op in aug.ops)
            modes = {KORNIA: "slice", **({KORNIA_RESAMPLE: "resample"} if has_crop else {})}
            for baseline, mode in modes.items():
                chain = kornia_chain(aug, images.shape[-2:], cropping_mode=mode)
                yield Comparison(title, "img/s", len(images), ours, baseline, lambda chain=chain: chain(images, labels))
        if not aug.mixes:
            per_sample = torchvision_chain(aug, images.shape[-2:])
            yield Comparison(title, "img/s", len(images), ours, "torchvision v2 per sample",
                             lambda per_sample=per_sample: torch.stack([per_sample(im) for im in images]))


def _bind(aug, images: torch.Tensor, generator: torch.Generator) -> Callable[[], object]:
    return lambda: aug(images, generator)


def kornia_chain(aug, size: tuple[int, int],
                 cropping_mode: str = "slice") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
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
