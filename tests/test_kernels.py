"""The batched resized-crop kernel against its per-sample reference and against Kornia.

Tolerance: 2e-5 absolute on images in [0, 1]. The kernel maps a source coordinate
``x0 + j * (x1 - x0) / (out - 1)`` to grid_sample's ``[-1, 1]`` and grid_sample maps it back;
each float32 step rounds by ~1.2e-7 relative, i.e. ~4e-6 pixel at coordinates near 31, so the
sampled position is off by up to ~1e-5 pixel and a bilinear value by that times the neighbour
difference (<= 1). ``F.interpolate`` (the reference and Kornia) rounds its own way. 2e-5 covers
that for images up to 32 px and is orders below what a wrong convention gives (half-pixel vs
corner alignment shifts samples by up to half a pixel: differences of ~0.1 on noise images).
"""

from __future__ import annotations

import pytest
import torch
from kornia.geometry.transform import crop_by_indices

from fasttarget.kernels.resized_crop import resized_crop, resized_crop_reference, sample_positions

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
    return torch.stack([torch.stack([x0, y0], 1), torch.stack([x1, y0], 1), torch.stack([x1, y1], 1), torch.stack([x0, y1], 1)], 1)


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


@pytest.mark.gpu
def test_resized_crop_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    g = torch.Generator().manual_seed(4)
    images = torch.rand(64, 3, 32, 32, generator=g)
    boxes = random_boxes(64, 32, 32, g)
    out = resized_crop(images.cuda(), boxes.cuda(), (32, 32))
    torch.testing.assert_close(out.cpu(), resized_crop_reference(images, boxes, (32, 32)), atol=ATOL, rtol=0)
