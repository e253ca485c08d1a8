"""The paper's augmentations, batched, with replayable per-sample parameters.

Names follow Appendix A of the paper:

- ``noaug``: identity (the loader normalizes; NoAug is "only normalization").
- ``color``: ColorJitter of brightness, contrast and saturation, applied with p=0.8.
- ``flip``: horizontal flip with p=0.5.
- ``crop``: RandomResizedCrop, area scale (0.08, 1), aspect ratio (3/4, 4/3), back to the input size.
- ``stdaug``: StdAug = ColorJitter (p=0.8), RandomGrayscale (p=0.2), HorizontalFlip (p=0.5),
  RandomResizedCrop, in the paper's order.
- ``mixup``: MixUp with λ ~ Beta(0.8, 0.8) per pair.
- ``cutmix``: CutMix with λ ~ Beta(1, 1); the recorded λ is the kept-area ratio after clipping the box.
- compositions joined with ``+`` such as ``stdaug+mixup``; components run in the canonical order
  color → grayscale → flip → crop → mix, whatever order they are written in.

Magnitudes the paper does not state: the jitter factors are drawn uniformly from
``[1 - 0.4, 1 + 0.4]`` for brightness, contrast and saturation (the SimCLR / torchvision
convention); there is no hue jitter (the paper lists only the three). The jitter steps run
in the fixed order brightness → contrast → saturation with torchvision's formulas and a
clamp to ``[0, 1]`` after each (Kornia's ``ColorJitter(order=(0, 1, 2))``); torchvision and
Kornia shuffle the order per call by default, a fixed order keeps the record to three factors
per sample and lets the CPU kernel fuse the steps. ``color`` is the paper's "ColorJitter (or
Color in short)" alone; grayscale belongs to ``stdaug`` only. Probabilities are per sample
(Kornia's ``RandomResizedCrop`` decides its ``p`` per batch; at the paper's p=1 they agree).

Every augmentation is three things kept apart (as in Kornia): an op's ``sample`` draws all of its
random numbers from the given ``torch.Generator`` into a dict of per-sample tensors, its ``apply``
is pure, and :class:`Augment` joins them and keeps the parameters in an :class:`AugRecord`, so a
batch can be replayed exactly, targets can be mixed like the images, and a run resumes bit-for-bit.

Speed: nothing loops over samples in Python. The crop is one ``grid_sample`` over the batch
(:mod:`fasttarget.kernels.resized_crop`, Kornia's corner-aligned convention); on float32 CPU
batches color, grayscale, flip and crop run as one fused numba kernel
(:mod:`fasttarget.kernels.stdaug`) that agrees with the torch ops to 2e-5.

Example:
    >>> import torch
    >>> aug = build_augment("stdaug+mixup")
    >>> images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    >>> out, record = aug(images, torch.Generator().manual_seed(1))
    >>> out.shape, aug.mixes
    (torch.Size([4, 3, 8, 8]), True)
    >>> torch.equal(aug.apply(images, record), out)
    True
    >>> record.mix(torch.eye(4)).sum(1)
    tensor([1., 1., 1., 1.])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from fasttarget.errors import UserError
from fasttarget.kernels.resized_crop import resized_crop

# ITU-R 601 luma weights, as in kornia.color.rgb_to_grayscale and torchvision.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


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


@dataclass
class AugRecord:
    """Every random number one batch's augmentation drew, enough to replay it exactly.

    Attributes:
        params: per-sample parameters keyed ``"<component>.<name>"`` (first dimension B),
            e.g. ``"flip.apply"`` (bool), ``"color.factors"`` (float ``[B,3]``: brightness,
            contrast, saturation), ``"crop.boxes"`` (float ``[B,4]``: inclusive pixel
            corners x0, y0, x1, y1), ``"cutmix.boxes"`` (int64 ``[B,4]``: x0, y0, x1, y1,
            end exclusive).
        mix_perm: int64 ``[B]``, sample ``i`` is mixed with sample ``mix_perm[i]``; ``None`` without a mix.
        mix_lam: float ``[B]``, weight of sample ``i`` itself (CutMix: its kept-area ratio); ``None`` without a mix.
    """

    params: dict[str, Tensor] = field(default_factory=dict)
    mix_perm: Tensor | None = None
    mix_lam: Tensor | None = None

    def mix(self, t: Tensor) -> Tensor:
        """Mixes per-sample targets the way the images were mixed.

        Args:
            t: float ``[B, ...]`` such as one-hot labels or soft targets ``[B, K]``.

        Returns:
            ``lam * t + (1 - lam) * t[perm]`` (``lam`` broadcast over the trailing dims),
            or ``t`` itself when the batch was not mixed.

        Example:
            >>> r = AugRecord(mix_perm=torch.tensor([1, 0]), mix_lam=torch.tensor([0.75, 0.5]))
            >>> r.mix(torch.eye(2))
            tensor([[0.7500, 0.2500],
                    [0.5000, 0.5000]])
        """
        if self.mix_perm is None or self.mix_lam is None:
            return t
        lam = self.mix_lam.to(device=t.device, dtype=t.dtype).view(-1, *([1] * (t.dim() - 1)))
        return lam * t + (1 - lam) * t[self.mix_perm.to(t.device)]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AugRecord:
        """Returns a copy with every tensor on ``device``."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return AugRecord(
            params={k: v.to(device, non_blocking=non_blocking) for k, v in self.params.items()},
            mix_perm=move(self.mix_perm),
            mix_lam=move(self.mix_lam),
        )


def _rand(n: int, generator: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(n, *shape, generator=generator, device=generator.device)


def _bernoulli(n: int, p: float, generator: torch.Generator) -> Tensor:
    # Drawn even when p is 0 or 1 so that the generator's stream does not depend on p.
    return _rand(n, generator) < p


def sample_gamma(alpha: float, n: int, generator: torch.Generator) -> Tensor:
    """Draws ``n`` Gamma(alpha, 1) variates from ``generator`` only (float64).

    ``torch.distributions`` cannot take a generator, so this is Marsaglia & Tsang's rejection
    method (with the ``U**(1/alpha)`` boost for alpha < 1), vectorized: candidates are drawn in
    blocks until ``n`` are accepted, so the result depends only on the generator's state.

    Example:
        >>> g = sample_gamma(0.8, 10000, torch.Generator().manual_seed(0))
        >>> round(g.mean().item(), 1)
        0.8
    """
    boosted = alpha < 1
    a = alpha + 1.0 if boosted else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    kw = {"generator": generator, "device": generator.device, "dtype": torch.float64}
    accepted: list[Tensor] = []
    missing = n
    while missing > 0:
        m = 2 * missing + 16  # acceptance is > 95 %, so one block almost always suffices
        x = torch.randn(m, **kw)
        u = torch.rand(m, **kw)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        block = (d * v)[ok][:missing]
        accepted.append(block)
        missing -= block.numel()
    out = torch.cat(accepted)
    if boosted:
        out = out * torch.rand(n, **kw) ** (1.0 / alpha)
    return out


def sample_beta(alpha: float, beta: float, n: int, generator: torch.Generator) -> Tensor:
    """Draws ``n`` Beta(alpha, beta) variates (float32) from ``generator`` only.

    Example:
        >>> lam = sample_beta(1.0, 1.0, 5, torch.Generator().manual_seed(0))
        >>> bool(((lam >= 0) & (lam <= 1)).all())
        True
    """
    x = sample_gamma(alpha, n, generator)
    y = sample_gamma(beta, n, generator)
    return (x / (x + y)).float()


def _per_sample(mask: Tensor) -> Tensor:
    return mask.view(-1, 1, 1, 1)


def _gray(images: Tensor) -> Tensor:
    # One [1,3] x [B,3,H*W] product instead of three scaled channel sums.
    weights = torch.tensor(_GRAY_WEIGHTS, dtype=images.dtype, device=images.device)
    b, _, h, w = images.shape
    return torch.matmul(weights, images.reshape(b, 3, h * w)).view(b, 1, h, w)


def adjust_color(images: Tensor, factors: Tensor) -> Tensor:
    """Brightness, contrast, saturation per sample, torchvision's formulas, clamped after each step.

    Args:
        images: float ``[B,3,H,W]`` in ``[0,1]``.
        factors: float ``[B,3]`` (brightness, contrast, saturation); 1 leaves a sample unchanged.

    Example:
        >>> x = torch.full((1, 3, 2, 2), 0.5)
        >>> adjust_color(x, torch.tensor([[2.0, 1.0, 1.0]])).unique()
        tensor([1.])
    """
    f = factors.to(images.dtype).view(-1, 3, 1, 1)
    b, c, s = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    x = (images * b).clamp_(0, 1)
    mean = _gray(x).mean((-2, -1), keepdim=True)
    # lerp is one fused pass and returns `end` exactly at weight 1, so neutral factors are exact.
    x = torch.lerp(mean, x, c).clamp_(0, 1)
    return torch.lerp(_gray(x), x, s).clamp_(0, 1)


class _Op(Protocol):
    """One component: ``sample`` draws per-sample parameters, ``apply`` is pure."""

    name: str
    mixes: bool

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> dict[str, Tensor]: ...

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor: ...


@dataclass(frozen=True)
class ColorJitter:
    """Brightness/contrast/saturation jitter with probability ``p`` per sample."""

    p: float
    magnitudes: tuple[float, float, float]
    name: str = "color"
    mixes: bool = False

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> dict[str, Tensor]:
        apply = _bernoulli(n, self.p, generator)
        m = torch.tensor(self.magnitudes, device=generator.device)
        lo = (1 - m).clamp_min(0)
        factors = lo + _rand(n, generator, 3) * (1 + m - lo)
        # Unapplied samples get neutral factors, which leave the pixels bit-for-bit unchanged.
        factors = torch.where(apply[:, None], factors, torch.ones_like(factors))
        return {"apply": apply, "factors": factors}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        return adjust_color(images, params["factors"])


@dataclass(frozen=True)
class Grayscale:
    """RGB → 3-channel luma with probability ``p`` per sample."""

    p: float
    name: str = "gray"
    mixes: bool = False

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> dict[str, Tensor]:
        return {"apply": _bernoulli(n, self.p, generator)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        return torch.where(_per_sample(params["apply"]), _gray(images).expand_as(images), images)


@dataclass(frozen=True)
class HorizontalFlip:
    """Left-right flip with probability ``p`` per sample."""

    p: float
    name: str = "flip"
    mixes: bool = False

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> dict[str, Tensor]:
        return {"apply": _bernoulli(n, self.p, generator)}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        return torch.where(_per_sample(params["apply"]), images.flip(-1), images)


@dataclass(frozen=True)
class ResizedCrop:
    """RandomResizedCrop back to the input size, Kornia's sampling and corner-aligned bilinear resize.

    Box sampling is Kornia's ``ResizedCropGenerator`` (torchvision's ``get_params``): ten
    candidates per sample of area ``U(scale) * H * W`` and ratio ``exp(U(log ratio))``, sides
    rounded to whole pixels, the first that fits is taken, placed uniformly over the valid
    integer offsets; when none fits, the whole image (or the ratio-clamped full side), centered.
    :meth:`plan` draws the same boxes from each sample's own size for crops cut at decode time,
    :meth:`plan_batches` those of a whole epoch's batches in one pass.
    """

    p: float
    scale: tuple[float, float]
    ratio: tuple[float, float]
    name: str = "crop"
    mixes: bool = False

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> dict[str, Tensor]:
        apply_u, *uniforms = self._uniforms(n, generator)
        apply = apply_u < self.p
        x0, y0, w, h = self._place(uniforms, height, width)
        boxes = torch.stack([x0, y0, x0 + w - 1, y0 + h - 1], 1)
        full = torch.tensor([0.0, 0.0, width - 1.0, height - 1.0], device=boxes.device)
        return {"apply": apply, "boxes": torch.where(apply[:, None], boxes, full)}

    def plan(self, sizes: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Draws the crops of images of different sizes, to be cut when they are decoded.

        The same rule as :meth:`sample`, each sample drawn from its own size; a sample the
        crop is not applied to (``p < 1``) gets the center crop of :func:`center_crop_boxes`.

        Args:
            sizes: int ``[B, 2]`` stored (height, width) of each image.
            generator: the batch's generator (CPU).

        Returns:
            ``{"apply": bool [B], "boxes": int32 [B, 4]}``, boxes as ``(x0, y0, w, h)`` in stored pixels.

        Example:
            >>> crop = ResizedCrop(1.0, (0.08, 1.0), (3 / 4, 4 / 3))
            >>> boxes = crop.plan(torch.tensor([[375, 500], [64, 48]]), torch.Generator().manual_seed(0))["boxes"]
            >>> bool((boxes[:, 0] + boxes[:, 2] <= torch.tensor([500, 48])).all())
            True
        """
        return self._plan(sizes, [self._uniforms(len(sizes), generator)])

    def plan_batches(self, sizes: Tensor, generators: Sequence[torch.Generator], batch_size: int) -> dict[str, Tensor]:
        """:meth:`plan` for consecutive batches at once, each drawn from its own generator.

        Batch ``k`` is rows ``k * batch_size`` up to the next (the last may be short) of
        ``sizes``; its boxes are exactly those ``plan(sizes_of_batch_k, generators[k])`` draws.
        Only the draws loop over batches (one generator each); the boxes of all of them are
        computed in one pass, so an epoch of ImageNet is planned in one call.

        Args:
            sizes: int ``[N, 2]`` stored (height, width), batch after batch.
            generators: one CPU generator per batch, ``ceil(N / batch_size)`` of them.
            batch_size: rows per batch.

        Returns:
            as :meth:`plan`, over all ``N`` rows.

        Raises:
            ValueError: not one generator per batch.

        Example:
            >>> crop = ResizedCrop(1.0, (0.08, 1.0), (3 / 4, 4 / 3))
            >>> sizes = torch.tensor([[375, 500], [64, 48], [200, 300]])
            >>> both = crop.plan_batches(sizes, [torch.Generator().manual_seed(k) for k in (0, 1)], 2)["boxes"]
            >>> torch.equal(both[2:], crop.plan(sizes[2:], torch.Generator().manual_seed(1))["boxes"])
            True
        """
        n = len(sizes)
        if len(generators) != -(-n // batch_size):
            raise ValueError(f"{len(generators)} generators for {n} rows in batches of {batch_size}: pass one per batch")
        counts = [min(batch_size, n - k * batch_size) for k in range(len(generators))]
        return self._plan(sizes, [self._uniforms(c, g) for c, g in zip(counts, generators)])

    def _plan(self, sizes: Tensor, drawn: list[tuple[Tensor, ...]]) -> dict[str, Tensor]:
        """The boxes of ``sizes`` from their uniforms, drawn batch by batch (:meth:`_uniforms`)."""
        if not drawn:
            return {"apply": torch.zeros(0, dtype=torch.bool), "boxes": torch.zeros(0, 4, dtype=torch.int32)}
        apply_u, *uniforms = (torch.cat(parts) for parts in zip(*drawn))
        apply = apply_u < self.p
        x0, y0, w, h = self._place(uniforms, sizes[:, 0].float(), sizes[:, 1].float())
        boxes = torch.stack([x0, y0, w, h], 1).to(torch.int32)
        return {"apply": apply, "boxes": torch.where(apply[:, None], boxes, center_crop_boxes(sizes))}

    @staticmethod
    def _uniforms(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Every random number of ``n`` crops, in the stream's order: apply ``[n]``, 10 areas and
        10 aspects ``[n, 10]`` each, x and y ``[n]``.

        All are drawn whatever is applied or fits, so the stream depends on ``n`` alone.
        """
        return (_rand(n, generator), _rand(n, generator, 10), _rand(n, generator, 10), _rand(n, generator),
                _rand(n, generator))

    def _place(self, uniforms: list[Tensor], height: int | Tensor, width: int | Tensor
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x0, y0, w, h)`` float ``[n]`` each from :meth:`_uniforms`' area, aspect, x and y draws,
        for one image size or a ``[n]`` tensor of sizes per sample."""
        area_u, aspect_u, x_u, y_u = uniforms
        per_sample = isinstance(height, Tensor)
        if per_sample:
            height, width = height[:, None], width[:, None]  # against the 10 candidates per sample
        area = (self.scale[0] + area_u * (self.scale[1] - self.scale[0])) * (height * width)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + aspect_u * (log_hi - log_lo))
        w = torch.sqrt(area * aspect).round()
        h = torch.sqrt(area / aspect).round()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = (fits.int().cumsum(1) == 1) & fits
        found = fits.any(1)
        pick = first.int().argmax(1, keepdim=True)
        if per_sample:
            height, width = height[:, 0], width[:, 0]
        fw, fh = self._fallback(height, width)
        if not per_sample:
            fw, fh = torch.full_like(area[:, 0], fw), torch.full_like(area[:, 0], fh)
        w = torch.where(found, w.gather(1, pick).squeeze(1), fw)
        h = torch.where(found, h.gather(1, pick).squeeze(1), fh)
        x0 = torch.where(found, (x_u * (width - w + 1)).floor(), ((width - w) / 2).floor())
        y0 = torch.where(found, (y_u * (height - h + 1)).floor(), ((height - h) / 2).floor())
        return x0, y0, w, h

    def _fallback(self, height: int | Tensor, width: int | Tensor) -> tuple[float | Tensor, float | Tensor]:
        """torchvision's whole-image crop, clamped to the ratio range, when no candidate fits."""
        if isinstance(height, Tensor):
            # float64 as Python's own arithmetic in the one-size branch below
            h64, w64 = height.double(), width.double()
            in_ratio = w64 / h64
            narrow, wide = in_ratio < self.ratio[0], in_ratio > self.ratio[1]
            fw = torch.where(wide, torch.round(h64 * self.ratio[1]), w64)
            fh = torch.where(narrow, torch.round(w64 / self.ratio[0]), h64)
            return fw.to(height.dtype), fh.to(height.dtype)
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            return float(width), float(round(width / self.ratio[0]))
        if in_ratio > self.ratio[1]:
            return float(round(height * self.ratio[1])), float(height)
        return float(width), float(height)

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        h, w = images.shape[-2:]
        boxes = params["boxes"]
        out = resized_crop(images, boxes, (h, w))
        # Normalized grid coordinates are rounded, so a whole-image box (unapplied samples, or
        # a crop that drew the whole image) is only nearly the identity: select the input there.
        whole = torch.tensor([0.0, 0.0, w - 1.0, h - 1.0], device=boxes.device)
        return torch.where(_per_sample((boxes != whole).any(1)), out.clamp_(0, 1), images)


#: The share of the shorter side a test view's center crop keeps (resize to 256, crop 224).
CENTER_CROP_RATIO = 224 / 256


def center_crop_boxes(sizes: Tensor, ratio: float = CENTER_CROP_RATIO) -> Tensor:
    """The test view of images of different sizes: a centered square of ``ratio`` times the shorter side.

    FFCV's ``CenterCropRGBImageDecoder`` rule (``get_center_crop``), so a resize of the box to the
    output size is torchvision's ``Resize(256)`` + ``CenterCrop(224)`` at ``ratio = 224/256``.

    Args:
        sizes: int ``[B, 2]`` stored (height, width).

    Returns:
        int32 ``[B, 4]`` boxes ``(x0, y0, w, h)``.

    Example:
        >>> center_crop_boxes(torch.tensor([[256, 512]])).tolist()
        [[144, 16, 224, 224]]
    """
    sizes = sizes.to(torch.int64)
    side = (ratio * sizes.min(1).values.double()).to(torch.int64)
    return torch.stack([(sizes[:, 1] - side) // 2, (sizes[:, 0] - side) // 2, side, side], 1).to(torch.int32)


def _pairing(n: int, generator: torch.Generator) -> Tensor:
    return torch.randperm(n, generator=generator, device=generator.device)


@dataclass(frozen=True)
class MixUp:
    """MixUp: sample ``i`` becomes ``λ_i x_i + (1 - λ_i) x_perm[i]``, λ ~ Beta(alpha, alpha) per pair."""

    p: float
    alpha: float
    name: str = "mixup"
    mixes: bool = True

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> dict[str, Tensor]:
        apply = _bernoulli(n, self.p, generator)
        perm = _pairing(n, generator)
        lam = sample_beta(self.alpha, self.alpha, n, generator).to(generator.device)
        return {"apply": apply, "perm": perm, "lam": torch.where(apply, lam, torch.ones_like(lam))}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        lam = params["lam"].to(images.dtype).view(-1, 1, 1, 1)
        # lam * x + (1 - lam) * x[perm] in one pass; exact x where lam is 1 (unapplied samples).
        return torch.lerp(images[params["perm"]], images, lam).clamp_(0, 1)


@dataclass(frozen=True)
class CutMix:
    """CutMix: a box of sample ``perm[i]`` is pasted into sample ``i``.

    The box follows Yun et al.: side ratio ``sqrt(1 - λ0)`` with λ0 ~ Beta(alpha, alpha), centre
    uniform over the pixels, clipped to the image; the recorded λ is the true kept-area ratio.
    """

    p: float
    alpha: float
    name: str = "cutmix"
    mixes: bool = True

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> dict[str, Tensor]:
        apply = _bernoulli(n, self.p, generator)
        perm = _pairing(n, generator)
        lam0 = sample_beta(self.alpha, self.alpha, n, generator).to(generator.device)
        cut = torch.sqrt(1 - lam0)
        half_w = (width * cut).floor().long() // 2
        half_h = (height * cut).floor().long() // 2
        cx = (_rand(n, generator) * width).floor().long()
        cy = (_rand(n, generator) * height).floor().long()
        boxes = torch.stack(
            [
                (cx - half_w).clamp(0, width),
                (cy - half_h).clamp(0, height),
                (cx + half_w).clamp(0, width),
                (cy + half_h).clamp(0, height),
            ],
            1,
        )
        boxes = torch.where(apply[:, None], boxes, torch.zeros_like(boxes))
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        lam = 1 - area.double() / (height * width)
        return {"apply": apply, "perm": perm, "lam": lam.float(), "boxes": boxes}

    def apply(self, images: Tensor, params: dict[str, Tensor]) -> Tensor:
        pasted = box_mask(params["boxes"], images.shape[-2], images.shape[-1])
        return torch.where(pasted, images[params["perm"]], images)


def box_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """Boolean ``[B,1,H,W]`` mask of integer boxes ``[B,4]`` (x0, y0, x1, y1; end exclusive).

    Example:
        >>> box_mask(torch.tensor([[1, 0, 3, 1]]), 2, 4).int()
        tensor([[[[0, 1, 1, 0],
                  [0, 0, 0, 0]]]], dtype=torch.int32)
    """
    xs = torch.arange(width, device=boxes.device)
    ys = torch.arange(height, device=boxes.device)
    b = boxes.view(-1, 4, 1, 1)
    inside_x = (xs >= b[:, 0]) & (xs < b[:, 2])  # [B,1,W]
    inside_y = (ys[:, None] >= b[:, 1]) & (ys[:, None] < b[:, 3])  # [B,H,1]
    return (inside_x & inside_y).unsqueeze(1)


# Components the fused CPU kernel implements; they come first in the canonical order.
_FUSABLE = ("color", "gray", "flip", "crop")
# Canonical order: the paper's StdAug order, mixing last.
_ORDER = (*_FUSABLE, "mixup", "cutmix")
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


def _build_op(component: str, cfg: AugmentConfig) -> _Op:
    def prob(default: float) -> float:
        return default if cfg.p is None else cfg.p

    if component == "color":
        return ColorJitter(prob(0.8), (cfg.brightness, cfg.contrast, cfg.saturation))
    if component == "gray":
        return Grayscale(prob(0.2))
    if component == "flip":
        return HorizontalFlip(prob(0.5))
    if component == "crop":
        return ResizedCrop(prob(1.0), cfg.crop_scale, cfg.crop_ratio)
    if component == "mixup":
        return MixUp(prob(1.0), cfg.mixup_alpha)
    return CutMix(prob(1.0), cfg.cutmix_alpha)


class Augment:
    """A composition of augmentation components with replayable parameters.

    Build it with :func:`build_augment`. ``sample`` draws every random number, ``apply`` is
    pure, ``__call__`` does both.

    Shape:
        images: float32 ``[B,3,H,W]`` in ``[0,1]`` (before normalization), any device;
        the output has the same shape, dtype and device and stays in ``[0,1]``.
    """

    def __init__(self, config: AugmentConfig, ops: tuple[_Op, ...]) -> None:
        self.config = config
        self.ops = ops
        self.mixes = any(op.mixes for op in ops)
        # How many leading ops the fused CPU kernel covers (the canonical order puts them first);
        # a lone flip is a single cheap torch op, faster than the kernel's full pass.
        fusable = [op.name for op in ops if op.name in _FUSABLE]
        self._fusable = len(fusable) if config.fuse_cpu and ("color" in fusable or "crop" in fusable) else 0

    @property
    def name(self) -> str:
        return self.config.name

    def __repr__(self) -> str:
        return f"Augment({self.config.name!r}, ops={[op.name for op in self.ops]})"

    def sample(
        self,
        batch_size: int,
        height: int,
        width: int,
        generator: torch.Generator,
        device: torch.device | str | None = None,
    ) -> AugRecord:
        """Draws the parameters of one batch.

        Random numbers are drawn on ``generator.device`` (a CPU generator gives the same record
        whatever ``device`` is) and the record is then moved to ``device`` (default: the
        generator's).
        """
        params: dict[str, Tensor] = {}
        for op in self.ops:
            for key, value in op.sample(batch_size, height, width, generator).items():
                params[f"{op.name}.{key}"] = value
        record = AugRecord(params=params)
        for op in self.ops:
            if op.mixes:
                record.mix_perm = params[f"{op.name}.perm"]
                record.mix_lam = params[f"{op.name}.lam"]
        return record if device is None else record.to(device)

    def apply(self, images: Tensor, record: AugRecord) -> Tensor:
        """Applies the recorded parameters to ``images``; pure, deterministic.

        Float32 CPU batches go through the fused numba kernel
        (:func:`fasttarget.kernels.stdaug.color_gray_flip_crop`) for the color, grayscale, flip
        and crop components, other batches through one torch op per component; the two
        agree to 2e-5 (``tests/test_kernels.py``) and each is deterministic on its own.
        """
        ops = self.ops
        if self._fusable and images.device.type == "cpu" and images.dtype == torch.float32:
            images = self._apply_fused(images, record)
            ops = ops[self._fusable :]
        for op in ops:
            prefix = f"{op.name}."
            params = {k[len(prefix) :]: v for k, v in record.params.items() if k.startswith(prefix)}
            images = op.apply(images, params)
        return images

    def _apply_fused(self, images: Tensor, record: AugRecord) -> Tensor:
        from fasttarget.kernels.stdaug import color_gray_flip_crop  # needs numba: CPU path only

        b, _, h, w = images.shape
        p = record.params
        off = torch.zeros(b, dtype=torch.bool)
        return color_gray_flip_crop(
            images,
            p.get("color.factors", torch.ones(b, 3)),
            p.get("gray.apply", off),
            p.get("flip.apply", off),
            p.get("crop.boxes", torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0]]).expand(b, 4)),
            (h, w),
        )

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, AugRecord]:
        """Samples parameters for ``images`` and applies them; returns ``(images, record)``."""
        b, _, h, w = images.shape
        record = self.sample(b, h, w, generator, images.device)
        return self.apply(images, record), record


def build_augment(name: str | AugmentConfig) -> Augment:
    """Builds an :class:`Augment` from a name such as ``"stdaug+mixup"`` or a config.

    Raises:
        UserError: unknown name, a component listed twice, or two mixes in one composition.

    Example:
        >>> build_augment("flip+color")
        Augment('flip+color', ops=['color', 'flip'])
    """
    cfg = name if isinstance(name, AugmentConfig) else AugmentConfig(name=name)
    components: list[str] = []
    for part in cfg.name.lower().split("+"):
        part = part.strip()
        if part not in _NAMES:
            raise UserError(
                f"unknown augmentation {part!r} in {cfg.name!r}: use one of {', '.join(AUGMENT_NAMES)} joined by '+'"
            )
        for component in _NAMES[part]:
            if component in components:
                raise UserError(f"augmentation {cfg.name!r} applies {component!r} twice: list it once")
            components.append(component)
    if "mixup" in components and "cutmix" in components:
        raise UserError(f"augmentation {cfg.name!r} has two mixes: use mixup or cutmix, not both")
    components.sort(key=_ORDER.index)
    return Augment(cfg, tuple(_build_op(c, cfg) for c in components))


__all__ = [
    "AUGMENT_NAMES",
    "AugRecord",
    "Augment",
    "AugmentConfig",
    "ColorJitter",
    "CutMix",
    "Grayscale",
    "HorizontalFlip",
    "MixUp",
    "ResizedCrop",
    "adjust_color",
    "box_mask",
    "build_augment",
    "center_crop_boxes",
    "sample_beta",
    "sample_gamma",
]
