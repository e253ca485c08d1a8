"""Batched crop-and-resize: one box per sample, bilinear, Kornia's corner-aligned convention.

Kornia's ``RandomResizedCrop`` (default ``cropping_mode="slice"``, ``align_corners=True``) crops
each sample with a slice and resizes it with ``F.interpolate`` one sample at a time, which is
launch-bound for small images. Bilinear resizing is separable, so for a whole batch it is two
batched matrix products: ``out[b, c] = Ry[b] @ img[b, c] @ Rx[b]^T`` where ``Ry[b]`` (``[out_h, H]``)
and ``Rx[b]`` (``[out_w, W]``) hold each output row's/column's two interpolation weights.

Convention (as Kornia's ``crop_by_indices`` with ``align_corners=True``): a box is the inclusive
pixel corners ``(x0, y0, x1, y1)``; output column ``j`` samples source column
``x0 + j * (x1 - x0) / (out_w - 1)`` (``x0`` when ``out_w == 1``), likewise for rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def interpolation_matrix(start: Tensor, end: Tensor, out_size: int, in_size: int) -> Tensor:
    """Corner-aligned linear interpolation weights ``[B, out_size, in_size]`` for one axis.

    Args:
        start: float ``[B]``, first source coordinate (inclusive pixel index).
        end: float ``[B]``, last source coordinate (inclusive).
        out_size: number of output samples along the axis.
        in_size: number of source pixels along the axis.

    Example:
        >>> interpolation_matrix(torch.tensor([0.0]), torch.tensor([1.0]), 3, 2)
        tensor([[[1.0000, 0.0000],
                 [0.5000, 0.5000],
                 [0.0000, 1.0000]]])
    """
    start = start.float()
    step = (end.float() - start) / max(out_size - 1, 1)
    j = torch.arange(out_size, device=start.device, dtype=torch.float32)
    pos = start[:, None] + j * step[:, None]  # [B, out]
    lo = pos.floor().clamp(0, in_size - 1)
    frac = pos - lo
    hi = (lo + 1).clamp(max=in_size - 1)
    src = torch.arange(in_size, device=start.device, dtype=torch.float32)
    return (1 - frac)[..., None] * (src == lo[..., None]) + frac[..., None] * (src == hi[..., None])


def resized_crop(images: Tensor, boxes: Tensor, size: Sequence[int]) -> Tensor:
    """Crops one box per sample and resizes it bilinearly to ``size``, for the whole batch at once.

    Args:
        images: float ``[B,C,H,W]``.
        boxes: float ``[B,4]``, inclusive pixel corners ``(x0, y0, x1, y1)`` inside the image.
        size: output ``(height, width)``.

    Returns:
        float ``[B,C,size[0],size[1]]`` on the images' device.

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> resized_crop(x, torch.tensor([[1.0, 1.0, 2.0, 2.0]]), (3, 3))
        tensor([[[[ 5.0000,  5.5000,  6.0000],
                  [ 7.0000,  7.5000,  8.0000],
                  [ 9.0000,  9.5000, 10.0000]]]])
    """
    out_h, out_w = int(size[0]), int(size[1])
    boxes = boxes.to(images.device)
    ry = interpolation_matrix(boxes[:, 1], boxes[:, 3], out_h, images.shape[-2]).to(images.dtype)
    rx = interpolation_matrix(boxes[:, 0], boxes[:, 2], out_w, images.shape[-1]).to(images.dtype)
    b, c, h, w = images.shape
    # Columns first as one [B, C*H, W] x [B, W, out_w] product, then rows per channel.
    cols = torch.bmm(images.reshape(b, c * h, w), rx.transpose(1, 2)).view(b, c, h, out_w)
    return torch.matmul(ry.unsqueeze(1), cols)


def resized_crop_reference(images: Tensor, boxes: Tensor, size: Sequence[int]) -> Tensor:
    """Per-sample reference for :func:`resized_crop`: slice the integer box, ``F.interpolate``.

    This is what Kornia's slice mode does for each sample; boxes must be whole pixels.

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> b = torch.tensor([[1.0, 1.0, 2.0, 2.0]])
        >>> torch.allclose(resized_crop_reference(x, b, (3, 3)), resized_crop(x, b, (3, 3)))
        True
    """
    out = []
    for image, (x0, y0, x1, y1) in zip(images, boxes.round().long().tolist()):
        crop = image[None, :, y0 : y1 + 1, x0 : x1 + 1]
        out.append(F.interpolate(crop, size=tuple(size), mode="bilinear", align_corners=True))
    return torch.cat(out)
