"""``fasttarget.sweep.estimate``: the timed probe runs the student as training runs it."""

from __future__ import annotations

import pytest
import torch

from fasttarget import models
from fasttarget.sweep import SweepConfig
from fasttarget.sweep.estimate import probe_rate


def _probe_layouts(monkeypatch, width: float, image_size: int) -> tuple[list[torch.Tensor], list[torch.nn.Module]]:
    """Run a one-step probe; return the inputs the student's forward saw and the placed students."""
    inputs, nets = [], []
    place = models.place

    def spied(net, device, size):
        net = place(net, device, size)
        # Registered after place's own hook, so it sees the input as the network receives it.
        net.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
        nets.append(net)
        return net

    monkeypatch.setattr(models, "place", spied)
    cfg = SweepConfig.from_dict({"name": "probe", "data": {"source": "unused"}, "model": {"width": width},
                                 "student": {"batch_size": 4},
                                 "grid": [{"strategies": ["A"], "student_augs": ["noaug"], "steps": [1], "eval_every": 1, "seeds": [0]}]})
    assert probe_rate(cfg, image_size, 10, threads=1, steps=1) > 0
    return inputs, nets


def test_probe_runs_channels_last_where_training_does(monkeypatch):
    inputs, (net,) = _probe_layouts(monkeypatch, 0.25, 32)
    assert len(inputs) == 2  # the warm-up step and the timed one
    assert all(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() for x in inputs)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


def test_probe_falls_back_to_contiguous_memory_where_training_does(monkeypatch):
    # 8-channel convolutions on 64 px: channels_last crashes torch 2.14 on CPU, training runs contiguous.
    with pytest.warns(RuntimeWarning, match="running in contiguous memory"):
        inputs, _ = _probe_layouts(monkeypatch, 0.125, 64)
    assert inputs and all(x.is_contiguous() for x in inputs)
