"""Teachers and students from the ecosystem: torchvision, timm and your own code.

Nothing is downloaded: every network is built with random weights (``weights=None`` /
``pretrained=False``); a teacher's weights come from a state-dict file you name.

**Teachers** (``--teacher`` of ``train``, ``cache build`` and ``cache inspect``):

- ``FILE``: a fasttarget checkpoint (``fasttarget teacher`` or a run's ``final.pt``);
- ``torchvision:NAME[@SIZE]=FILE`` and ``timm:NAME[@SIZE]=FILE``: the architecture ``NAME``
  with ``FILE``'s state dict (a plain ``state_dict()``, or a dict holding it under
  ``"state_dict"``), built for the dataset's class count. The teacher sees images the way it
  was trained: normalized with its own mean/std (torchvision's weights metadata, timm's
  ``pretrained_cfg``) and resized to its own resolution — ``SIZE`` when given, else the
  architecture's default (224 for torchvision's ImageNet models, timm's ``input_size``).
  :class:`~fasttarget.targets.TeacherModel` does both on the loader's view, as it re-normalizes
  fasttarget teachers.

**Students** (``--student`` / ``--arch`` of ``train``, any ``ModelConfig.arch``):
``torchvision:NAME``, ``timm:NAME`` or ``module.path:factory`` (a callable taking no argument,
importable where the run and anything loading its ``final.pt`` runs). The network becomes the
backbone φ of a :class:`~fasttarget.models.Student`, which attaches the separation loss's heads
``g`` and ``h`` as for the built-in architectures; the rule (:func:`as_backbone`):

1. a module with a ``feature_dim`` attribute is a backbone, used as is;
2. otherwise one ``[2, 3, S, S]`` probe forward (eval mode, ``S`` the data's image side) must return
   ``[2, D]``. If ``D`` is the class count and the module's last ``nn.Linear`` produces it, the module
   is a classifier: that Linear is replaced by ``nn.Identity`` and φ's features are its input;
3. else the module is a backbone of ``D`` features.

torchvision and timm students are built as classifiers for the dataset's classes, so rule 2 applies.

Example:
    >>> parse_teacher("torchvision:resnet18@64=teacher.pt")
    TeacherSpec(source='torchvision', name='resnet18', file=PosixPath('teacher.pt'), size=64)
    >>> str(parse_teacher("teachers/t30.pt"))
    'teachers/t30.pt'
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fasttarget.config import SOURCES, STUDENT_FORMS, TeacherSpec, check_student_spec, is_student_spec, parse_teacher  # noqa: F401 (re-exported)
from fasttarget.errors import UserError

# torchvision's classification weights all use these; the fallback for a model without weights metadata.
IMAGENET_MEAN, IMAGENET_STD, IMAGENET_SIZE = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224


@dataclass(frozen=True)
class Preprocessing:
    """How a teacher expects its input: per-channel mean/std (0..1 scale) and side in pixels."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int


def teacher_file(value: str | Path | TeacherSpec) -> Path:
    """The file a teacher's weights are in (the checkpoint, or a spec's state dict)."""
    spec = parse_teacher(value)
    return spec.file if isinstance(spec, TeacherSpec) else spec


def teacher_sha256(value: str | Path | TeacherSpec) -> str:
    """What names a teacher in a run's ``config.json`` and a cache's attributes.

    A checkpoint: its file's SHA-256. A spec: the SHA-256 of its architecture, size and file
    digest, since the same weights scored at another size give other targets.

    Raises:
        UserError: the file does not exist.
    """
    from fasttarget.dataset import file_sha256

    spec = parse_teacher(value)
    file = teacher_file(spec)
    if not file.is_file():
        fix = "train one with `fasttarget teacher`" if isinstance(spec, Path) else "pass an existing state-dict file"
        raise UserError(f"teacher {file} does not exist: {fix}")
    digest = file_sha256(file)
    if isinstance(spec, Path):
        return digest
    return hashlib.sha256(f"{spec.source}:{spec.name}@{spec.size}\n{digest}".encode()).hexdigest()


def build_network(source: str, name: str, num_classes: int) -> nn.Module:
    """A randomly initialised torchvision or timm classifier with ``num_classes`` outputs.

    Raises:
        UserError: an unknown name, or timm not installed.
    """
    if source == "torchvision":
        import torchvision.models

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise UserError(f"unknown torchvision classification model {name!r}: "
                            "pick one of torchvision.models.list_models(module=torchvision.models)")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    timm = _timm()
    if not timm.is_model(name):
        raise UserError(f"unknown timm model {name!r}: pick one of timm.list_models()")
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def preprocessing(source: str, name: str, net: nn.Module) -> Preprocessing:
    """The normalization and resolution an ecosystem architecture is trained with."""
    if source == "timm":
        cfg = getattr(net, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        size = cfg.get("input_size", (3, IMAGENET_SIZE, IMAGENET_SIZE))[-1]
        return Preprocessing(tuple(mean), tuple(std), int(size))
    import torchvision.models

    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, AttributeError):  # a model without published weights
        return Preprocessing(IMAGENET_MEAN, IMAGENET_STD, IMAGENET_SIZE)
    return Preprocessing(tuple(transforms.mean), tuple(transforms.std), int(transforms.crop_size[0]))


def load_spec_teacher(spec: TeacherSpec, num_classes: int, device: str | torch.device) -> tuple[nn.Module, Preprocessing]:
    """Build a spec's architecture for ``num_classes`` classes and load its state-dict file.

    Returns:
        The network (eval mode, on ``device``) and the preprocessing it expects (``@SIZE`` applied).

    Raises:
        UserError: the file is missing, unreadable or a fasttarget checkpoint, or its state dict does
            not fit the architecture.
    """
    if not spec.file.is_file():
        raise UserError(f"teacher state dict {spec.file} does not exist: save one with torch.save(model.state_dict(), PATH)")
    try:
        state = torch.load(spec.file, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling can raise nearly anything: say what, not a traceback
        raise UserError(f"{spec.file} is not a readable state dict ({err.__class__.__name__}): "
                        "save one with torch.save(model.state_dict(), PATH)") from err
    if isinstance(state, dict) and "format" in state:
        raise UserError(f"{spec.file} is a fasttarget checkpoint, not a state dict: pass it as --teacher {spec.file}")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    net = build_network(spec.source, spec.name, num_classes)
    mismatch = _state_mismatch(net, state)
    if mismatch:
        raise UserError(f"{spec.file} does not fit {spec.source}:{spec.name} with {num_classes} classes ({mismatch}): "
                        "pass that architecture's state dict, trained for this dataset's classes")
    net.load_state_dict(state)
    pre = preprocessing(spec.source, spec.name, net)
    if spec.size is not None:
        pre = replace(pre, size=spec.size)
    return net.to(device).eval(), pre


def _state_mismatch(net: nn.Module, state: Any) -> str:
    """Why ``state`` cannot be loaded into ``net`` in a few words, or ``""`` when it can."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return "not a dict of tensors"
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    parts = [f"{len(keys)} {what}, e.g. {keys[0]!r}" for what, keys in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shapes differ", shapes)) if keys]
    return "; ".join(parts)


# ---------------------------------------------------------------- students


def build_backbone(arch: str, num_classes: int, image_size: int) -> nn.Module:
    """The backbone φ of an ecosystem student (randomly initialised), with a ``feature_dim`` attribute.

    Raises:
        UserError: an unknown name or factory, timm missing, or a network that does not map images to vectors.
    """
    source, _, name = arch.partition(":")
    if source in SOURCES:
        net = build_network(source, name, num_classes)
    else:
        net = _factory(source, name)()
        if not isinstance(net, nn.Module):
            raise UserError(f"student factory {arch} returned {type(net).__name__}, not an nn.Module: "
                            "make it return the network")
    return as_backbone(net, num_classes, image_size, arch)


def as_backbone(net: nn.Module, num_classes: int, image_size: int, what: str = "network") -> nn.Module:
    """``net`` as a backbone φ: a feature extractor with ``feature_dim`` (the rule in the module docstring).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))
        >>> phi = as_backbone(net, num_classes=10, image_size=8)
        >>> phi.feature_dim, phi(torch.zeros(2, 3, 8, 8)).shape
        (32, torch.Size([2, 32]))
    """
    if hasattr(net, "feature_dim"):
        return net
    was_training = net.training
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros(2, 3, image_size, image_size))
    except Exception as err:  # a user's network can fail in any way: name it and the input size
        raise UserError(f"student {what} cannot run on {image_size}x{image_size} images "
                        f"({err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}): "
                        "pick a network for this resolution") from err
    finally:
        net.train(was_training)
    if not (isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == 2):
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"student {what} returns {shape} for 2 images, not [2, D] features or [2, K] logits: "
                        "make its forward return one vector per image")
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if out.shape[1] == num_classes and linears and linears[-1][1].out_features == num_classes:
        name, head = linears[-1]
        _set_submodule(net, name, nn.Identity())
        net.feature_dim = head.in_features
    else:
        net.feature_dim = int(out.shape[1])
    return net


def _set_submodule(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, module)


def _factory(module_name: str, attr: str) -> Any:
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"student module {module_name!r} cannot be imported ({err}): "
                        "put it on PYTHONPATH or install its package") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"{module_name} has no callable {attr!r}: pass --student module.path:factory "
                        "naming a function that returns an nn.Module")
    return factory


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise UserError("timm models need timm: `pip install fasttarget[timm]`") from err
    return timm


def measure_test_accuracy(teacher: Any, data_dir: str | Path, device: str | torch.device,
                          batch_size: int = 500) -> float:
    """Top-1 of a wrapped teacher (:class:`~fasttarget.targets.TeacherModel`) on a dataset's test split:
    what ``cache build`` records for a state-dict teacher, whose file records none."""
    from fasttarget.loader import LoaderConfig, build_loader

    test = build_loader(LoaderConfig(data_dir, split="test", batch_size=batch_size, shuffle=False, drop_last=False,
                                     device=device))
    correct = sum(int((teacher(batch.images).argmax(1) == batch.labels).sum()) for batch in test)
    return correct / test.num_samples
