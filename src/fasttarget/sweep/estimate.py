"""How long a sweep will take here: its work in training-image equivalents over a measured rate.

The rate comes from a short timed probe on this machine (:func:`probe_rate`): a few
training steps of the sweep's student at its batch size, width and image size, with the
threads one unit gets. The work (:func:`sweep_work`) counts every image a unit pushes
through a network, a forward pass weighing :data:`FORWARD_SHARE` of a training image
(forward ≈ 1/3 of forward + backward + optimizer):

- a student run: ``steps × batch`` training images; Strategy B adds its teacher's forward
  of every view (teacher width / student width, squared, scales its cost); each
  evaluation is a forward pass over the test split;
- a Strategy C cache: one teacher forward over the training split;
- a teacher ladder: at most ``max_steps × batch`` plus one evaluation per ``eval_every``
  steps (it stops at its highest target, so this is an upper bound).

The total is split over the workers that run at once. Fused fleets (``--max-fleet``) run
several students per pass and are faster than this solo-run estimate on GPUs; on 2 CPU
cores they were measured at about parity, so the estimate stands there.

Example:
    >>> w = Work(train=1e6, forward=3e5)
    >>> w.images
    1100000.0
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fasttarget.sweep.config import SweepConfig
from fasttarget.sweep.plan import SweepPlan

FORWARD_SHARE = 1 / 3
# Image side, classes, train and test images per dataset, for sweeps whose data is not converted yet.
DATASETS = {"cifar10": (32, 10, 50_000, 10_000), "cifar100": (32, 100, 50_000, 10_000),
            "tinyimagenet": (64, 200, 100_000, 10_000), "imagenet": (224, 1000, 1_281_167, 50_000)}


@dataclass(frozen=True)
class Work:
    """Training images and forward-only images of a sweep (or part of one)."""

    train: float = 0.0
    forward: float = 0.0
    ladder_bound: float = 0.0

    @property
    def images(self) -> float:
        """Training-image equivalents (ladders at their upper bound included)."""
        return self.train + FORWARD_SHARE * self.forward + self.ladder_bound


def sweep_work(cfg: SweepConfig, plan: SweepPlan, train_size: int, test_size: int) -> Work:
    """The work of every run, cache and ladder in ``plan`` (see the module docstring)."""
    teacher_cost = (cfg.teacher.width / cfg.width) ** 2
    train = forward = 0.0
    for spec in plan.runs:
        train += spec.steps * cfg.batch_size
        if spec.strategy == "B":
            forward += teacher_cost * spec.steps * cfg.batch_size
        forward += -(-spec.steps // spec.eval_every) * test_size
    forward += teacher_cost * len(plan.caches) * train_size
    t = cfg.teacher
    ladders = sum(t.max_steps * cfg.batch_size + FORWARD_SHARE * (t.max_steps // t.eval_every) * test_size
                  for accs in plan.ladders.values() if any(a > t.random_below for a in accs))
    return Work(train, forward, teacher_cost * ladders)


def probe_rate(cfg: SweepConfig, image_size: int, num_classes: int, threads: int, steps: int = 4) -> float:
    """Training images per second of the sweep's student here (one unit's threads), after a warm-up step.

    The student runs as training runs it: placed by :func:`fasttarget.models.place` (channels_last,
    or contiguous where that crashes on CPU), fed channels_last batches as the loader delivers them,
    under :func:`fasttarget.train.autocast`: a contiguous probe of a channels_last run (CPU, 32 px)
    timed it about 1.5× too slow.
    """
    import torch

    from fasttarget.losses import build_student
    from fasttarget.models import ModelConfig, place
    from fasttarget.threads import kept_threads
    from fasttarget.train import autocast

    with kept_threads():
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        device = torch.device(cfg.device)
        net = place(build_student(ModelConfig(arch=cfg.arch, width=cfg.width, num_classes=num_classes,
                                              image_size=image_size), "separation"), device, image_size)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
        # fasttarget.loader's Batch.images layout
        x = torch.randn(cfg.batch_size, 3, image_size, image_size, device=device).contiguous(
            memory_format=torch.channels_last)
        y = torch.randint(0, num_classes, (cfg.batch_size,), device=device)
        for i in range(steps + 1):
            if i == 1:  # the first step pays for allocation and kernel selection
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            with autocast(device):
                g, h = net(x)
            loss = torch.nn.functional.cross_entropy(g, y) + torch.nn.functional.cross_entropy(h, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return steps * cfg.batch_size / (time.perf_counter() - start)


def hours(seconds: float) -> str:
    """``1 h 52 min`` / ``14 min``."""
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def estimate_lines(cfg: SweepConfig, plan: SweepPlan, meta, workers: int | None) -> list[str]:
    """The estimate for ``--dry-run``: work, the probed rate, and the time over ``workers``.

    Args:
        meta: the converted dataset's :class:`~fasttarget.dataset.DatasetMeta`, or ``None``
            (sizes then come from :data:`DATASETS`).
        workers: units at once (default: one per GPU, else cores / ``[resources.run] num_cpus``).
    """
    import os

    import torch

    if meta is not None:
        side, classes = (meta.image_shape[0] if meta.image_shape else 224), meta.num_classes
        train_size, test_size = meta.count("train"), meta.count("test")
    elif cfg.dataset in DATASETS:
        side, classes, train_size, test_size = DATASETS[cfg.dataset]
    else:
        return [f"estimate: unknown dataset {cfg.dataset!r} and no converted data to read its size from"]
    work = sweep_work(cfg, plan, train_size, test_size)
    lines = [f"work: {work.train / 1e6:.2f} M training images + {work.forward / 1e6:.2f} M forward-only "
             f"(× {FORWARD_SHARE:.2f}) + ladders ≤ {work.ladder_bound / 1e6:.2f} M = {work.images / 1e6:.2f} M "
             "training-image equivalents"]
    if cfg.device == "cuda" and not torch.cuda.is_available():
        return lines + ["estimate: the sweep runs on cuda and this machine has no CUDA device to probe; "
                        "run --dry-run on the GPU machine for a time"]
    threads = cfg.unit_resources("run").threads
    if workers is None:
        workers = torch.cuda.device_count() if cfg.device == "cuda" else max(1, (os.cpu_count() or 1) // threads)
    rate = probe_rate(cfg, side, classes, threads)
    total = work.images / (rate * workers)
    return lines + [f"rate: {rate:.0f} img/s per unit ({cfg.arch} width {cfg.width:g}, batch {cfg.batch_size}, "
                    f"{side} px, {threads} thread(s), {cfg.device}; timed probe of 4 steps after a warm-up)",
                    f"estimate: {hours(total)} on {workers} worker(s) at once "
                    f"({hours(work.images / rate)} for one); ladders counted at their max_steps bound"]
