"""Batched crop-and-resize: one box per sample, bilinear, Kornia's corner-aligned convention.

Kornia's ``RandomResizedCrop`` (default ``cropping_mode="slice"``, ``align_corners=True``) crops
each sample with a slice and resizes it with ``F.interpolate`` one sample at a time: hundreds of
small ops per batch. Here the whole batch is one ``F.grid_sample`` whose sampling grid is built
directly from the boxes (an axis-aligned box needs no ``affine_grid`` matrix product: the x
coordinate depends on the output column only, the y coordinate on the row only).

Convention (as Kornia's ``crop_by_indices`` with ``align_corners=True``): a box is the inclusive
pixel corners ``(x0, y0, x1, y1)``; output column ``j`` samples source column
``x0 + j * (x1 - x0) / (out_w - 1)`` (``x0`` when ``out_w == 1``), likewise for rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_positions(start: Tensor, end: Tensor, out_size: int, in_size: int) -> Tensor:
    """Source coordinates of ``out_size`` corner-aligned samples, normalized to ``[-1, 1]``.

    Args:
        start: float ``[B]``, first source coordinate (inclusive pixel index).
        end: float ``[B]``, last source coordinate (inclusive).
        out_size: number of output samples along the axis.
        in_size: number of source pixels along the axis.

    Returns:
        float ``[B, out_size]`` in ``grid_sample``'s ``align_corners=True`` convention.

    Example:
        >>> sample_positions(torch.tensor([1.0]), torch.tensor([3.0]), 3, 5)
        tensor([[-0.5000,  0.0000,  0.5000]])
    """
    start = start.float()
    step = (end.float() - start) / max(out_size - 1, 1)
    pos = start[:, None] + torch.arange(out_size, device=start.device, dtype=torch.float32) * step[:, None]
    return pos * (2.0 / max(in_size - 1, 1)) - 1.0


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
    b, _, h, w = images.shape
    boxes = boxes.to(images.device)
    xs = sample_positions(boxes[:, 0], boxes[:, 2], out_w, w).to(images.dtype)
    ys = sample_positions(boxes[:, 1], boxes[:, 3], out_h, h).to(images.dtype)
    grid = torch.stack([xs[:, None, :].expand(b, out_h, out_w), ys[:, :, None].expand(b, out_h, out_w)], -1)
    # "border": coordinates are inside the image, but normalizing can round a hair past its edge.
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


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
