"""Architectures (ResNet-18/50 with the stem of their resolution, ViT-S/16), the checkpoint round
trip, and the CPU channels_last guard (run in subprocesses: the failure it guards against is a
segfault)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from fasttarget.errors import UserError
from fasttarget.models import (
    CheckpointInfo, ModelConfig, Student, build_classifier, imagenet_stem, load_classifier, memory_format,
    save_classifier,
)


def _first_conv(net: nn.Module) -> nn.Conv2d:
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("size", [32, 64, 96])
def test_resnets_take_the_cifar_stem_up_to_64_px_and_the_imagenet_stem_above(arch, size):
    net = build_classifier(ModelConfig(arch=arch, width=0.125, num_classes=7, image_size=size))
    conv = _first_conv(net)
    pools = [m for m in net.backbone.stem if isinstance(m, nn.MaxPool2d)]
    if size > 64:
        assert imagenet_stem(net.config) and (conv.kernel_size, conv.stride) == ((7, 7), (2, 2)) and len(pools) == 1
    else:
        assert not imagenet_stem(net.config) and (conv.kernel_size, conv.stride) == ((3, 3), (1, 1)) and not pools
    with torch.no_grad():
        assert net.eval()(torch.zeros(2, 3, size, size)).shape == (2, 7)


def test_resnet_widths_at_1_are_the_papers_models():
    r18 = build_classifier(ModelConfig(arch="resnet18", num_classes=1000, image_size=224))
    r50 = build_classifier(ModelConfig(arch="resnet50", num_classes=1000, image_size=224))
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    # torchvision's resnet18 / resnet50: 11,689,512 and 25,557,032 parameters.
    assert count(r18) == 11_689_512 and count(r50) == 25_557_032


def test_vit_s16_shape_and_width_scaling():
    vit = build_classifier(ModelConfig(arch="vit_s", num_classes=1000, image_size=224)).backbone.vit
    assert (vit.patch_size, vit.hidden_dim, len(vit.encoder.layers)) == (16, 384, 12)
    assert vit.encoder.layers[0].self_attention.num_heads == 6
    small = build_classifier(ModelConfig(arch="vit_s", width=0.25, num_classes=5, image_size=64))
    assert small.backbone.feature_dim == 96 and small.backbone.vit.patch_size == 16
    assert build_classifier(ModelConfig(arch="vit_s", width=0.25, image_size=32)).backbone.vit.patch_size == 4
    with torch.no_grad():
        assert small.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 5)
    with pytest.raises(UserError, match="divisible by 16"):
        build_classifier(ModelConfig(arch="vit_s", image_size=72))


@pytest.mark.parametrize("arch,size", [("resnet18", 96), ("resnet50", 96), ("vit_s", 64)])
def test_every_arch_round_trips_through_its_checkpoint(arch, size, tmp_path):
    cfg = ModelConfig(arch=arch, width=0.125 if arch != "vit_s" else 0.25, num_classes=4, image_size=size)
    torch.manual_seed(0)
    net = build_classifier(cfg).eval()
    info = CheckpointInfo(cfg, 0.5, "f" * 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), step=3)
    loaded, loaded_info = load_classifier(save_classifier(tmp_path / "m.pt", net, info))
    assert loaded_info == info
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


def test_memory_format_falls_back_to_contiguous_for_narrow_nets_at_64_px_on_cpu():
    narrow, wide = (build_classifier(ModelConfig(width=w, image_size=64)) for w in (0.125, 0.25))
    with pytest.warns(RuntimeWarning, match="convolutions of 8 channels on 64 px inputs crash channels_last"):
        assert memory_format(narrow, "cpu", 64) == torch.contiguous_format
    assert memory_format(narrow, "cpu", 32) == torch.channels_last
    assert memory_format(wide, "cpu", 64) == torch.channels_last
    assert memory_format(narrow, "cuda", 64) == torch.channels_last
    with pytest.raises(UserError, match="convolutions of 4 channels, which crash channels_last"):
        memory_format(build_classifier(ModelConfig(width=0.0625)), "cpu", 32)


_TRAIN_STEPS = """
import torch
from fasttarget.models import ModelConfig, Student
from fasttarget.train import prepare_model
torch.manual_seed(0)
net, forward = prepare_model(Student(ModelConfig(width={width}, image_size={size})), torch.device("cpu"), False)
opt = torch.optim.AdamW(net.parameters())
for _ in range(2):
    x = torch.randn(8, 3, {size}, {size}).contiguous(memory_format=torch.channels_last)  # as the loader hands over
    g, h = forward(x)
    (g.logsumexp(1).mean() + h.logsumexp(1).mean()).backward()
    opt.step()
    opt.zero_grad()
print("layout", net.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last))
"""


@pytest.mark.parametrize("width,size,channels_last", [(0.125, 64, False), (0.125, 96, False), (0.25, 64, True)])
def test_training_steps_never_crash_and_say_so_when_falling_back(width, size, channels_last):
    """In a subprocess, so a segfault would fail this test instead of ending the session."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_TRAIN_STEPS.format(width=width, size=size))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"layout {channels_last}"
    warned = [line for line in proc.stderr.splitlines() if "crash channels_last on CPU" in line]
    assert len(warned) == (0 if channels_last else 1)


def test_student_heads_at_imagenet_resolution():
    net = Student(ModelConfig(arch="resnet50", width=0.125, num_classes=3, image_size=96))
    g, h = net(torch.zeros(2, 3, 96, 96))
    assert g.shape == h.shape == (2, 3)
