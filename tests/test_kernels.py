"""Kernels against their references: the batched resized crop against a per-sample loop and
Kornia, the fused StdAug kernel against fasttarget.augment's torch ops.

Tolerance: 2e-5 absolute on images in [0, 1]. The kernel maps a source coordinate
``x0 + j * (x1 - x0) / (out - 1)`` to grid_sample's ``[-1, 1]`` and grid_sample maps it back;
each float32 step rounds by ~1.2e-7 relative, i.e. ~4e-6 pixel at coordinates near 31, so the
sampled position is off by up to ~1e-5 pixel and a bilinear value by that times the neighbour
difference (<= 1). ``F.interpolate`` (the reference and Kornia) rounds its own way. 2e-5 covers
that for images up to 32 px and is orders below what a wrong convention gives (half-pixel vs
corner alignment shifts samples by up to half a pixel: differences of ~0.1 on noise images).
The fused StdAug kernel computes positions in float64 and the jitter in float32 scalars, so
against the torch ops it differs by the same grid rounding plus a few float32 ulps.
"""

from __future__ import annotations

import pytest
import torch
from kornia.geometry.transform import crop_by_indices

from fasttarget.augment import Grayscale, HorizontalFlip, adjust_color
from fasttarget.kernels.resized_crop import resized_crop, resized_crop_reference, sample_positions
from fasttarget.kernels.stdaug import color_gray_flip_crop

ATOL = 2e-5


def random_boxes(n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Integer inclusive boxes, including one-pixel-wide and full-image ones."""
    x0 = torch.randint(0, width, (n,), generator=generator)
    y0 = torch.randint(0, height, (n,), generator=generator)
    x1 = x0 + (torch.rand(n, generator=generator) * (width - x0)).long()
    y1 = y0 + (torch.rand(n, generator=generator) * (height - y0)).long()
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    boxes[0] = torch.tensor([0, 0, width - 1, height - 1])
    boxes[1] = torch.tensor([3, 2, 3, height - 1])  # one pixel wide
    return boxes


def kornia_boxes(boxes: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(1)
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return torch.stack([torch.stack(c, 1) for c in corners], 1)


@pytest.mark.parametrize(("in_hw", "out_hw"), [((32, 32), (32, 32)), ((16, 20), (24, 12)), ((9, 7), (1, 5))])
def test_resized_crop_matches_reference_and_kornia(in_hw, out_hw):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, *in_hw, generator=g)
    boxes = random_boxes(64, *in_hw, g)
    ours = resized_crop(images, boxes, out_hw)
    ref = resized_crop_reference(images, boxes, out_hw)
    assert ours.shape == (64, 3, *out_hw)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    theirs = crop_by_indices(images, kornia_boxes(boxes), out_hw, interpolation="bilinear", align_corners=True)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_full_box_at_same_size_is_identity_to_rounding():
    images = torch.rand(8, 3, 16, 20, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[0.0, 0.0, 19.0, 15.0]]).expand(8, 4)
    torch.testing.assert_close(resized_crop(images, boxes, (16, 20)), images, atol=ATOL, rtol=0)


def test_sample_positions_span_the_box():
    g = torch.Generator().manual_seed(2)
    start = torch.randint(0, 20, (50,), generator=g).float()
    end = start + torch.randint(0, 12, (50,), generator=g).float()
    pos = sample_positions(start, end, 17, 32)
    pixels = (pos + 1) * (31 / 2)
    torch.testing.assert_close(pixels[:, 0], start)
    torch.testing.assert_close(pixels[:, -1], end)
    assert (pixels.diff(dim=1) >= -1e-5).all()


def test_channels_last_input():
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    boxes = torch.tensor([[1.0, 2.0, 9.0, 14.0]]).expand(4, 4)
    cl = images.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(resized_crop(cl, boxes, (16, 16)), resized_crop(images, boxes, (16, 16)), atol=0, rtol=0)


def torch_ops(images, factors, gray, flip, boxes, size):
    """The reference for the fused kernel: fasttarget.augment's torch ops, one after another."""
    x = adjust_color(images, factors)
    x = Grayscale(p=1.0).apply(x, {"apply": gray})
    x = HorizontalFlip(p=1.0).apply(x, {"apply": flip})
    return resized_crop(x, boxes, size).clamp(0, 1)


@pytest.mark.parametrize(("in_hw", "out_hw"), [((32, 32), (32, 32)), ((16, 20), (12, 24))])
def test_fused_stdaug_kernel_matches_torch_ops(in_hw, out_hw):
    g = torch.Generator().manual_seed(5)
    n = 64
    images = torch.rand(n, 3, *in_hw, generator=g)
    images[:, :, 0, :2] = torch.tensor([0.0, 1.0])  # extremes
    factors = 0.6 + 0.8 * torch.rand(n, 3, generator=g)
    factors[:4] = 1.0
    gray = torch.rand(n, generator=g) < 0.3
    flip = torch.rand(n, generator=g) < 0.5
    boxes = random_boxes(n, *in_hw, g)
    ours = color_gray_flip_crop(images, factors, gray, flip, boxes, out_hw)
    ref = torch_ops(images, factors, gray, flip, boxes, out_hw)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    assert ours.min() >= 0 and ours.max() <= 1


def test_fused_kernel_neutral_parameters_are_exact_identity():
    images = torch.rand(8, 3, 16, 20, generator=torch.Generator().manual_seed(6))
    off = torch.zeros(8, dtype=torch.bool)
    whole = torch.tensor([[0.0, 0.0, 19.0, 15.0]]).expand(8, 4)
    assert torch.equal(color_gray_flip_crop(images, torch.ones(8, 3), off, off, whole, (16, 20)), images)
    flipped = color_gray_flip_crop(images, torch.ones(8, 3), off, ~off, whole, (16, 20))
    assert torch.equal(flipped, images.flip(-1))


def test_fused_kernel_rejects_float64():
    with pytest.raises(ValueError, match="float32"):
        off = torch.zeros(1, dtype=torch.bool)
        images = torch.rand(1, 3, 4, 4, dtype=torch.float64)
        color_gray_flip_crop(images, torch.ones(1, 3), off, off, torch.tensor([[0.0, 0, 3, 3]]), (4, 4))


@pytest.mark.gpu
def test_resized_crop_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.Generator().manual_seed(4)
    images = torch.rand(64, 3, 32, 32, generator=g)
    boxes = random_boxes(64, 32, 32, g)
    out = resized_crop(images.cuda(), boxes.cuda(), (32, 32))
    torch.testing.assert_close(out.cpu(), resized_crop_reference(images, boxes, (32, 32)), atol=ATOL, rtol=0)
