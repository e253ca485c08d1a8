"""StdAug's pixel ops fused into one numba kernel for CPU batches.

On a CPU the torch ops of ``color → gray → flip → crop`` make about fifteen passes over the
batch (every clamp, lerp, ``where`` and the crop is one). This kernel makes two reads and one
write per sample, one sample per thread: (1) the mean luma after brightness, which contrast
needs; (2) jitter and grayscale into a small per-sample scratch image that stays in cache;
(3) the flipped, resized crop from that scratch into the output.

Semantics are those of the torch ops in :mod:`fasttarget.augment` (``adjust_color``,
RGB → luma with ITU-R 601 weights, horizontal flip,
:func:`fasttarget.kernels.resized_crop.resized_crop`):
torchvision's jitter formulas with a clamp to ``[0, 1]`` after each step and ``torch.lerp``'s
rounding, and Kornia's corner-aligned bilinear crop. Neutral parameters (factors 1, no gray,
no flip, the whole-image box at the input size) return the input bit for bit.

This module needs numba; :mod:`fasttarget.augment` imports it only for CPU batches, so
augmenting on a GPU machine without numba works.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import torch
from torch import Tensor

from fasttarget.threads import prefer_openmp

# Before this module's parallel kernel first runs: share torch's OpenMP runtime (see fasttarget.threads).
prefer_openmp()

_ZERO, _ONE, _HALF = np.float32(0.0), np.float32(1.0), np.float32(0.5)
# ITU-R 601 luma weights, as kornia.color.rgb_to_grayscale.
_WR, _WG, _WB = np.float32(0.299), np.float32(0.587), np.float32(0.114)


@numba.njit(inline="always")
def _clamp(v):
    return min(max(v, _ZERO), _ONE)


@numba.njit(inline="always")
def _lerp(start, end, weight):
    # torch.lerp's formula: exact at weight 0 and 1.
    if weight < _HALF:
        return start + weight * (end - start)
    return end - (end - start) * (_ONE - weight)


@numba.njit(parallel=True, cache=True)
def _run(images, factors, gray, flip, boxes, out):
    n, _, h, w = images.shape
    out_h, out_w = out.shape[2], out.shape[3]
    for i in numba.prange(n):
        bf, cf, sf = factors[i, 0], factors[i, 1], factors[i, 2]
        total = 0.0
        for y in range(h):
            for x in range(w):
                r = _clamp(images[i, 0, y, x] * bf)
                g = _clamp(images[i, 1, y, x] * bf)
                b = _clamp(images[i, 2, y, x] * bf)
                total += _WR * r + _WG * g + _WB * b
        mean = np.float32(total / (h * w))
        scratch = np.empty((3, h, w), dtype=np.float32)
        for y in range(h):
            for x in range(w):
                r = _clamp(_lerp(mean, _clamp(images[i, 0, y, x] * bf), cf))
                g = _clamp(_lerp(mean, _clamp(images[i, 1, y, x] * bf), cf))
                b = _clamp(_lerp(mean, _clamp(images[i, 2, y, x] * bf), cf))
                luma = _WR * r + _WG * g + _WB * b
                r = _clamp(_lerp(luma, r, sf))
                g = _clamp(_lerp(luma, g, sf))
                b = _clamp(_lerp(luma, b, sf))
                if gray[i]:
                    r = g = b = _WR * r + _WG * g + _WB * b
                scratch[0, y, x], scratch[1, y, x], scratch[2, y, x] = r, g, b
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        for oy in range(out_h):
            # j * (x1 - x0) / (out - 1), multiplied first: exact for whole-pixel steps.
            py = y0 + (oy * (y1 - y0)) / max(out_h - 1, 1)
            ylo = min(int(np.floor(py)), h - 1)
            fy = np.float32(py - ylo)
            yhi = min(ylo + 1, h - 1)
            for ox in range(out_w):
                px = x0 + (ox * (x1 - x0)) / max(out_w - 1, 1)
                if flip[i]:  # flip first, then crop: sample the mirrored column
                    px = (w - 1) - px
                xlo = min(int(np.floor(px)), w - 1)
                fx = np.float32(px - xlo)
                xhi = min(xlo + 1, w - 1)
                for c in range(3):
                    top = scratch[c, ylo, xlo] * (_ONE - fx) + scratch[c, ylo, xhi] * fx
                    bottom = scratch[c, yhi, xlo] * (_ONE - fx) + scratch[c, yhi, xhi] * fx
                    out[i, c, oy, ox] = _clamp(top * (_ONE - fy) + bottom * fy)


def color_gray_flip_crop(
    images: Tensor, factors: Tensor, gray: Tensor, flip: Tensor, boxes: Tensor, size: Sequence[int]
) -> Tensor:
    """Jitter, grayscale, flip and resized crop of a CPU batch in one fused pass per sample.

    Args:
        images: float32 ``[B,3,H,W]`` in ``[0,1]`` on the CPU.
        factors: ``[B,3]`` brightness, contrast, saturation factors (1 = unchanged).
        gray: bool ``[B]``, samples turned to 3-channel luma after the jitter.
        flip: bool ``[B]``, samples flipped left-right before the crop.
        boxes: ``[B,4]`` crop boxes, inclusive pixel corners ``(x0, y0, x1, y1)`` of the flipped image.
        size: output ``(height, width)``.

    Returns:
        float32 ``[B,3,size[0],size[1]]`` in ``[0,1]``.

    Example:
        >>> x = torch.rand(2, 3, 4, 4)
        >>> same = color_gray_flip_crop(x, torch.ones(2, 3), torch.zeros(2, dtype=torch.bool),
        ...                             torch.zeros(2, dtype=torch.bool), torch.tensor([[0.0, 0, 3, 3]] * 2), (4, 4))
        >>> torch.equal(same, x)
        True
    """
    if images.device.type != "cpu" or images.dtype != torch.float32 or images.shape[1] != 3:
        raise ValueError(
            "color_gray_flip_crop takes float32 [B,3,H,W] CPU images, "
            f"got {images.dtype} {tuple(images.shape)} on {images.device}"
        )
    # A channels_last batch (as the loader hands over) is copied to NCHW first: the kernel's
    # contiguous specialization is faster than indexing the strided layout, copy included.
    images = images.contiguous()
    out = torch.empty(images.shape[0], 3, int(size[0]), int(size[1]), dtype=torch.float32)
    _run(
        images.detach().numpy(),
        factors.detach().to("cpu", torch.float32).contiguous().numpy(),
        gray.detach().to("cpu", torch.bool).contiguous().numpy(),
        flip.detach().to("cpu", torch.bool).contiguous().numpy(),
        boxes.detach().to("cpu", torch.float64).contiguous().numpy(),
        out.numpy(),
    )
    return out
