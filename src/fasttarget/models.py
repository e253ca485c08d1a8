"""Backbones (φ), heads and the model checkpoint format.

Every network is split into a backbone ``φ`` that maps images to a feature vector and
heads attached separately, because the paper's separation loss trains two heads on one
backbone (see :mod:`fasttarget.losses`).

Architectures:

- ``resnet18``: the paper's CIFAR variant (3×3 stride-1 stem, no max-pool) built from
  torchvision's ``BasicBlock``; ``width`` multiplies the base width 64 (0.25 → 16).
- ``resnet50``: torchvision's ImageNet ResNet-50 (``width`` scales every stage too).
- ``vit_s``: a ViT-S/16 (ViT-S/4 below 64 px) from torchvision's ``VisionTransformer``;
  ``width`` scales the embedding dimension.
- ``torchvision:NAME``, ``timm:NAME``, ``module.path:factory``: a network from the ecosystem
  (:mod:`fasttarget.zoo`).

Example:
    >>> import torch
    >>> from fasttarget.models import ModelConfig, build_classifier
    >>> net = build_classifier(ModelConfig(arch="resnet18", width=0.125, num_classes=10))
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from fasttarget.dataset import file_sha256  # noqa: F401 (re-exported: teachers are named by it)
from fasttarget.errors import UserError

ARCHS = ("resnet18", "resnet50", "vit_s")
CHECKPOINT_FORMAT = "fasttarget-model/1"


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build.

    Args:
        arch: one of :data:`ARCHS`.
        width: multiplier of the architecture's base width (1.0 = the paper's model).
        num_classes: size of the classifier heads.
        image_size: input side in pixels (ViT patching depends on it).
    """

    arch: str = "resnet18"
    width: float = 1.0
    num_classes: int = 10
    image_size: int = 32

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            from fasttarget.zoo import check_student_spec

            check_student_spec(self.arch, ARCHS)
            if self.width != 1.0:
                raise UserError(f"--width scales the built-in architectures only: drop it for {self.arch}")
        if not 0 < self.width <= 8:
            raise UserError(f"--width must be in (0, 8], got {self.width}")
        if self.num_classes < 2:
            raise UserError(f"num_classes must be at least 2, got {self.num_classes}")


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


def build_backbone(cfg: ModelConfig) -> nn.Module:
    """Build the backbone φ; the returned module has a ``feature_dim`` attribute.

    An ``arch`` of the form ``torchvision:NAME``, ``timm:NAME`` or ``module.path:factory`` is built
    by :func:`fasttarget.zoo.build_backbone`.
    """
    if cfg.arch not in ARCHS:
        from fasttarget.zoo import build_backbone as build_ecosystem_backbone

        return build_ecosystem_backbone(cfg.arch, cfg.num_classes, cfg.image_size)
    if cfg.arch == "resnet18":
        return ResNetBackbone(BasicBlock, [2, 2, 2, 2], cfg.width, cifar_stem=True)
    if cfg.arch == "resnet50":
        return ResNetBackbone(Bottleneck, [3, 4, 6, 3], cfg.width, cifar_stem=cfg.image_size <= 64)
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
