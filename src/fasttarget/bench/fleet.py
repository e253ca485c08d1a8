"""The ``fleet`` suite: a fleet of N fused students against N solo runs one after another."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator

import torch

from fasttarget.bench.context import BenchContext
from fasttarget.bench.step import STEP_AUGMENT, STEP_BATCH, StudentStep, _forever
from fasttarget.bench.timing import Comparison

# Fleet sizes: on CPU the narrow student of the other suites, on CUDA the full-width one (issue 12).
CPU_FLEETS = (4, 8)
CUDA_FLEETS = (8, 16, 32)
# The paper's CIFAR-10 Table 2 grid for one seed: 9 teachers × Strategies B and C, plus A.
TABLE2_RUNS = 9 * 2 + 1
TABLE2_STEPS = 39_000


def solo_runs(n: int) -> str:
    """The baseline's name: ``n`` solo runs one after another."""
    return f"{n} solo runs in turn"


def fleet_name(n: int, strategy: str, cuda: bool) -> str:
    return f"fleet {strategy} x{n} b{STEP_BATCH}" + (" w1 compile+bf16" if cuda else "")


class FleetSteps:
    """``batches`` optimizer steps of a fused fleet of ``n`` students, each on its own targets.

    Built as ``fasttarget train --member …`` builds one: solo students seeded alike, fused
    (:class:`~fasttarget.fused.FusedStudent`), one AdamW, :class:`~fasttarget.fused.FleetStep`,
    compiled with bf16 autocast on CUDA.
    """

    def __init__(self, ctx: BenchContext, n: int, width: float, providers: list[Any]):
        from fasttarget.fleet import FleetTargets
        from fasttarget.fused import FleetStep, FusedStudent
        from fasttarget.losses import build_student
        from fasttarget.models import ModelConfig
        from fasttarget.train import autocast, build_optimizer

        students = []
        with torch.random.fork_rng(devices=[]):
            for _ in range(n):
                torch.manual_seed(0)
                students.append(build_student(ModelConfig(width=width, num_classes=ctx.meta.num_classes),
                                              "separation"))
        device = ctx.device
        net = FusedStudent(students).to(device=device, memory_format=torch.channels_last)
        forward = torch.compile(net) if device.type == "cuda" else net
        self.step = FleetStep(net, build_optimizer(net, 1e-3, 0.01), 2.0, forward=forward,
                              autocast=lambda: autocast(device))
        self.batches = _forever(ctx.resident_loader(STEP_BATCH, STEP_AUGMENT, FleetTargets(providers)))
        self.num_classes = ctx.meta.num_classes

    def run(self, count: int) -> Callable[[], None]:
        from fasttarget.losses import hard_targets

        def steps() -> None:
            for batch in itertools.islice(self.batches, count):
                self.step(batch.images, batch.targets, hard_targets(batch.labels, self.num_classes, batch.record))

        return steps


def fleet_comparisons(ctx: BenchContext) -> Iterator[Comparison]:
    """Aggregate student img/s of a fleet of N against N solo runs one after another.

    Both sides train N students on Strategy C targets (each member its own provider, so one
    cache gather per member and step, as a fleet does) with StdAug at batch 128 for
    ``cfg.batches`` steps per timed call: the fleet with one loader pass, the solo runs each
    with its own pass over the same loader. CPU: ResNet-18 at ``cfg.width``, N = 4, 8. CUDA:
    full width, compile + bf16 + channels_last on both sides, N = 8, 16, 32.
    """
    cuda = ctx.device.type == "cuda"
    width = 1.0 if cuda else ctx.cfg.width
    strategy = "C" if "C" in ctx.strategies() else "A"
    count = ctx.cfg.batches
    ctx.notes.append(f"fleet suite: ResNet-18 width {width}, strategy {strategy} members, {STEP_AUGMENT}, batch "
                     f"{STEP_BATCH}, {count} steps per member per timed call"
                     + ("; compile + bf16 + channels_last" if cuda else ""))
    for n in CUDA_FLEETS if cuda else CPU_FLEETS:
        fleet = FleetSteps(ctx, n, width, [ctx.targets(strategy) for _ in range(n)])
        solos = [StudentStep(width, ctx.meta.num_classes, ctx.device) for _ in range(n)]
        solo_batches = _forever(ctx.resident_loader(STEP_BATCH, STEP_AUGMENT, ctx.targets(strategy)))

        def solo_runs_in_turn(solos=solos, batches=solo_batches) -> None:
            for student in solos:
                for batch in itertools.islice(batches, count):
                    student(batch)

        yield Comparison(fleet_name(n, strategy, cuda), "img/s", n * count * STEP_BATCH, fleet.run(count),
                         solo_runs(n), solo_runs_in_turn)


def table2_hours(img_per_s: float) -> float:
    """Projected hours of the paper's CIFAR-10 Table 2 grid (one seed) at an aggregate student img/s."""
    return TABLE2_RUNS * TABLE2_STEPS * STEP_BATCH / img_per_s / 3600
