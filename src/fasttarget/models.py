"""Backbones (φ), heads and the model checkpoint format.

Every network is split into a backbone ``φ`` that maps images to a feature vector and
heads attached separately, because the paper's separation loss trains two heads on one
backbone (see :mod:`fasttarget.losses`).

Architectures:

- ``resnet18``: torchvision's ``BasicBlock`` ResNet-18; ``width`` multiplies the base width 64
  (0.25 → 16).
- ``resnet50``: torchvision's ``Bottleneck`` ResNet-50 (``width`` scales every stage too).
- ``vit_s``: a ViT-S/16 (patch 16, dim 384, depth 12, 6 heads; ViT-S/4 below 64 px) from
  torchvision's ``VisionTransformer``; ``width`` scales the embedding dimension (in multiples
  of the 6 heads).
- ``torchvision:NAME``, ``timm:NAME``, ``module.path:factory``: a network from the ecosystem
  (:mod:`fasttarget.zoo`).

Both ResNets take the stem from the resolution (:func:`imagenet_stem`): at ``image_size`` ≤ 64
the paper's CIFAR stem (3×3 stride-1 conv, no max-pool, so 32–64 px inputs keep their
resolution), above it the ImageNet stem (7×7 stride-2 conv + 3×3 stride-2 max-pool). Models run
``channels_last`` except where :func:`memory_format` says that crashes.

Example:
    >>> import torch
    >>> from fasttarget.models import ModelConfig, build_classifier
    >>> net = build_classifier(ModelConfig(arch="resnet18", width=0.125, num_classes=10))
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from fasttarget.choices import ARCHS
from fasttarget.config import ModelConfig
from fasttarget.dataset import file_sha256  # noqa: F401 (re-exported: teachers are named by it)
from fasttarget.errors import UserError

CHECKPOINT_FORMAT = "fasttarget-model/1"


# Above this side the ResNets switch from the CIFAR stem to the ImageNet one.
CIFAR_STEM_MAX_SIZE = 64


def imagenet_stem(cfg: ModelConfig) -> bool:
    """Whether a ResNet of ``cfg`` gets the ImageNet stem (7×7/2 conv + max-pool): above 64 px.

    Example:
        >>> imagenet_stem(ModelConfig(image_size=64)), imagenet_stem(ModelConfig(image_size=224))
        (False, True)
    """
    return cfg.image_size > CIFAR_STEM_MAX_SIZE


def _scaled(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


class ResNetBackbone(nn.Module):
    """A ResNet trunk ending in global average pooling: ``x [B,3,H,W] → features [B,D]``."""

    def __init__(self, block: type[nn.Module], layers: list[int], width: float, cifar_stem: bool):
        super().__init__()
        base = _scaled(64, width)
        self.inplanes = base
        if cifar_stem:
            # The paper's CIFAR variant: 3x3 stride-1 stem and no max-pool keep 32 px inputs at full resolution.
            self.stem = nn.Sequential(
                nn.Conv2d(3, base, 3, 1, 1, bias=False), nn.BatchNorm2d(base), nn.ReLU(inplace=True)
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, base, 7, 2, 3, bias=False),
                nn.BatchNorm2d(base),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        self.layer1 = self._make_layer(block, base, layers[0], 1)
        self.layer2 = self._make_layer(block, base * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, base * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, base * 8, layers[3], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = base * 8 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.pool(x), 1)


class ViTBackbone(nn.Module):
    """torchvision's VisionTransformer with its head removed: returns the class token."""

    def __init__(self, image_size: int, width: float):
        super().__init__()
        from torchvision.models.vision_transformer import VisionTransformer

        heads = 6
        hidden = max(heads, int(round(384 * width / heads)) * heads)
        patch = 16 if image_size >= 64 else 4
        if image_size % patch:
            raise UserError(f"vit_s needs an image size divisible by {patch}, got {image_size}")
        self.vit = VisionTransformer(
            image_size=image_size, patch_size=patch, num_layers=12, num_heads=heads,
            hidden_dim=hidden, mlp_dim=4 * hidden,
        )
        self.vit.heads = nn.Identity()
        self.feature_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)


# oneDNN's CPU channels_last convolutions (torch 2.14) crash narrow networks: below this many
# channels at any size (a segfault or a hang at width 0.0625), and below CPU_SAFE_CHANNELS at
# CPU_SAFE_MIN_SIZE px and above (ResNet-18 width 0.125 on 64 px images, reproduced in plain torch).
CPU_MIN_CHANNELS = 8
CPU_SAFE_CHANNELS = 16
CPU_SAFE_MIN_SIZE = 64


def memory_format(net: nn.Module, device: torch.device | str, image_size: int) -> torch.memory_format:
    """The memory format ``net`` runs in on ``device`` for ``image_size`` inputs.

    ``channels_last`` (faster convolutions on CPU and GPU), except on CPU for a network whose
    narrowest convolution has fewer than :data:`CPU_SAFE_CHANNELS` channels and inputs of
    :data:`CPU_SAFE_MIN_SIZE` px or more: torch 2.14's channels_last kernels can segfault there
    without a message, so it falls back to contiguous memory, with a one-line warning.

    Raises:
        UserError: on CPU, a convolution narrower than :data:`CPU_MIN_CHANNELS` channels,
            which crashes in either layout.

    Example:
        >>> net = build_classifier(ModelConfig(width=0.25))
        >>> memory_format(net, "cpu", 32) == torch.channels_last
        True
    """
    narrowest = min((m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)), default=CPU_SAFE_CHANNELS)
    if torch.device(device).type != "cpu":
        return torch.channels_last
    if narrowest < CPU_MIN_CHANNELS:
        raise UserError(f"--width gives convolutions of {narrowest} channels, which crash channels_last "
                        "training on CPU: use --width 0.125 or more")
    if narrowest < CPU_SAFE_CHANNELS and image_size >= CPU_SAFE_MIN_SIZE:
        warnings.warn(f"convolutions of {narrowest} channels on {image_size} px inputs crash channels_last on CPU "
                      "(torch 2.14): running in contiguous memory, slower (--width 0.25 or more avoids it)",
                      RuntimeWarning, stacklevel=2)
        return torch.contiguous_format
    return torch.channels_last


def place(net: nn.Module, device: torch.device | str, image_size: int, like: nn.Module | None = None) -> nn.Module:
    """Move ``net`` to ``device`` in its :func:`memory_format`; returns ``net``.

    Where that is contiguous, a forward pre-hook also makes the input contiguous: the loader
    hands over channels_last batches, and one channels_last operand is enough for torch to pick
    the channels_last kernels again.

    Args:
        like: the network whose convolutions choose the format, when ``net`` holds none of
            its own (a fused fleet: its members' format is a solo run's).
    """
    layout = memory_format(net if like is None else like, device, image_size)
    net = net.to(device=device, memory_format=layout)
    if layout == torch.contiguous_format:
        net.register_forward_pre_hook(_contiguous_input)
    return net


def _contiguous_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(), *args[1:])


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """Build the backbone φ; the returned module has a ``feature_dim`` attribute.

    An ``arch`` of the form ``torchvision:NAME``, ``timm:NAME`` or ``module.path:factory`` is built
    by :func:`fasttarget.zoo.build_backbone`.
    """
    if cfg.arch not in ARCHS:
        from fasttarget.zoo import build_backbone as build_ecosystem_backbone

        return build_ecosystem_backbone(cfg.arch, cfg.num_classes, cfg.image_size)
    if cfg.arch == "resnet18":
        return ResNetBackbone(BasicBlock, [2, 2, 2, 2], cfg.width, cifar_stem=not imagenet_stem(cfg))
    if cfg.arch == "resnet50":
        return ResNetBackbone(Bottleneck, [3, 4, 6, 3], cfg.width, cifar_stem=not imagenet_stem(cfg))
    return ViTBackbone(cfg.image_size, cfg.width)


class Classifier(nn.Module):
    """Backbone plus one linear head: the teacher's shape (``forward`` returns logits)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.backbone = build_backbone(cfg)
        self.head = nn.Linear(self.backbone.feature_dim, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_classifier(cfg: ModelConfig) -> Classifier:
    """Build a backbone with one linear classification head."""
    return Classifier(cfg)


class Student(nn.Module):
    """The paper's student: backbone φ with a soft-target head ``g`` and a classifier ``h``.

    With ``coupled=False`` (the separation loss) ``h`` sees ``φ(x).detach()``, so the
    classifier's one-hot cross-entropy never reaches the backbone, which only ``g``'s
    soft-target loss trains. With ``coupled=True`` (plain knowledge distillation) there
    is one head that both losses train end to end; it is returned as ``g`` and ``h``.

    Shape:
        ``x [B,3,H,W] → (logits_g [B,K], logits_h [B,K])``

    Example:
        >>> import torch
        >>> net = Student(ModelConfig(width=0.125))
        >>> g, h = net(torch.zeros(2, 3, 32, 32))
        >>> g.shape, h.requires_grad
        (torch.Size([2, 10]), True)
    """

    def __init__(self, cfg: ModelConfig, coupled: bool = False):
        super().__init__()
        self.config = cfg
        self.coupled = coupled
        self.backbone = build_backbone(cfg)
        self.h = nn.Linear(self.backbone.feature_dim, cfg.num_classes)
        self.g = None if coupled else nn.Linear(self.backbone.feature_dim, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        if self.g is None:
            logits = self.h(features)
            return logits, logits
        return self.g(features), self.h(features.detach())


def student_classifier(student: Student) -> Classifier:
    """The student's backbone φ and classifier ``h`` as one :class:`Classifier` sharing their
    parameters: what a finished run saves as ``final.pt``."""
    student = _unwrap(student)
    net = Classifier.__new__(Classifier)
    nn.Module.__init__(net)
    net.config, net.backbone, net.head = student.config, student.backbone, student.h
    return net


@dataclass(frozen=True)
class CheckpointInfo:
    """What a model checkpoint records besides its weights.

    Args:
        model: the :class:`ModelConfig` it was built from.
        test_accuracy: measured top-1 on the test split when it was saved (0..1).
        dataset_fingerprint: ``meta.json``'s fingerprint of the data it was trained on.
        mean, std: the per-channel normalization its inputs expect (0..1 pixel scale).
        step: training step at which it was saved.
        extra: free-form provenance (target accuracy, augmentation, seed...).
    """

    model: ModelConfig
    test_accuracy: float
    dataset_fingerprint: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def save_classifier(path: str | Path, net: Classifier, info: CheckpointInfo) -> Path:
    """Save a classifier atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in _unwrap(net).state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "info": asdict(info), "state_dict": state}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[Classifier, CheckpointInfo]:
    """Load a checkpoint written by :func:`save_classifier` (in eval mode, on ``device``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"teacher checkpoint {path} does not exist: train one with `fasttarget teacher`")
    fix = "pass a checkpoint written by `fasttarget teacher`"
    payload = read_checkpoint(path, CHECKPOINT_FORMAT, fix)
    try:
        raw = dict(payload["info"])
        raw["model"] = ModelConfig(**raw["model"])
        raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
        info = CheckpointInfo(**raw)
        net = build_classifier(info.model)
        net.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise UserError(f"{path} does not hold what its format says ({err.__class__.__name__}): {fix}") from err
    return net.to(device).eval(), info


def read_checkpoint(path: Path, expected_format: str, fix: str) -> dict[str, Any]:
    """Load a fasttarget checkpoint file of a given ``format`` (on the CPU).

    Args:
        path: the file.
        expected_format: the ``"format"`` entry it must have (:data:`CHECKPOINT_FORMAT`, a run's checkpoint).
        fix: the end of the message when it is refused, what the user can do about it.

    Raises:
        UserError: the file cannot be unpickled (truncated, corrupted, not a torch file) or is
            another kind of checkpoint; one line naming the file and ``fix``.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # unpickling a damaged file can raise nearly anything: say what, not a traceback
        raise UserError(f"{path} is not a readable checkpoint ({err.__class__.__name__}: truncated or corrupted): "
                        f"{fix}") from err
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise UserError(f"{path} is not a {expected_format} checkpoint (found {found!r}): {fix}")
    return payload


def _unwrap(net: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers (their state-dict keys carry prefixes)."""
    net = getattr(net, "_orig_mod", net)
    return getattr(net, "module", net)
