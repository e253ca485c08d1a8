"""The ``step`` suite: full training steps of Strategies A, B, C against pre-staged batches and each other."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any, Callable, Iterator

import torch

from fasttarget.bench.context import BenchContext
from fasttarget.bench.goals import STAGED
from fasttarget.bench.timing import Comparison, elapsed


STEP_BATCH = 128
STEP_AUGMENT = "stdaug"
STUDENT_BATCH = 512


class StudentStep:
    """One optimizer step of the paper's student on a batch: forward, separation loss, backward, AdamW.

    Built from the pieces :func:`fasttarget.train.train` uses (``prepare_model``,
    ``build_optimizer``, ``autocast``, ``loss_terms``), with the paper's defaults.

    Args:
        width: ResNet-18 width multiplier.
        num_classes: K.
        device: where it trains.
        compile: ``torch.compile`` the student (``None``: on CUDA only, as ``fasttarget train``).
        bf16: bf16 autocast on CUDA (as ``fasttarget train``); ``False`` steps in float32.
    """

    def __init__(self, width: float, num_classes: int, device: torch.device, compile: bool | None = None,
                 bf16: bool = True, temperature: float = 2.0):
        from fasttarget.losses import build_student
        from fasttarget.models import ModelConfig
        from fasttarget.train import autocast, build_optimizer, prepare_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = build_student(ModelConfig(width=width, num_classes=num_classes), "separation")
        self.net, self.forward = prepare_model(net, device, compile)
        self.optimizer = build_optimizer(self.net, 1e-3, 0.01)
        self.autocast = (lambda: autocast(device)) if bf16 else contextlib.nullcontext
        self.num_classes, self.temperature = num_classes, temperature

    def __call__(self, batch) -> torch.Tensor:
        from fasttarget.losses import hard_targets, loss_terms

        with self.autocast():
            logits_g, logits_h = self.forward(batch.images)
        hard = hard_targets(batch.labels, self.num_classes, batch.record)
        terms = loss_terms(logits_g, logits_h, batch.targets, hard, self.temperature)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.optimizer.step()
        return terms["loss"]


def step_comparisons(ctx: BenchContext) -> Iterator[Comparison]:
    """Training-step img/s of Strategies A, B and C at batch 128 with StdAug.

    For each strategy, the full step (resident loader + StdAug + the strategy's targets +
    student forward/backward/AdamW) against the same student step on batches produced
    beforehand (pre-staged tensors): ``1 - ratio`` is the loader's share of the step time.
    Then C's and B's full step against A's (C reads cached targets, B runs the teacher,
    which on CUDA overlaps the student on a side stream). On CUDA, also the full-width
    student at batch 512 with compile + bf16 + channels_last against the eager float32 step.
    """
    n = ctx.cfg.batches
    ctx.notes.append(f"step suite: ResNet-18 width {ctx.cfg.width} student and teacher, {STEP_AUGMENT}, "
                     f"batch {STEP_BATCH}, {n} steps per timed call")
    full, staged_by = {}, {}
    for strategy in ctx.strategies():
        loader = ctx.resident_loader(STEP_BATCH, STEP_AUGMENT, ctx.targets(strategy))
        student = StudentStep(ctx.cfg.width, ctx.meta.num_classes, ctx.device)
        stream = _forever(loader)
        staged = staged_by[strategy] = [next(stream) for _ in range(n)]
        full[strategy] = _steps(student, stream, n)
        yield Comparison(f"step {strategy} b{STEP_BATCH}", "img/s", n * STEP_BATCH, full[strategy],
                         STAGED, _steps(student, itertools.cycle(staged), n))
    if "C" in full:
        ctx.notes.append(_target_cost_note(ctx, staged_by["C"]))
    for strategy in ("C", "B"):
        if strategy in full:
            yield Comparison(f"step {strategy} b{STEP_BATCH}", "img/s", n * STEP_BATCH, full[strategy],
                             f"step A b{STEP_BATCH}", full["A"])
    if ctx.device.type == "cuda":
        # The student alone at full width: what a GPU's step time is made of once data is free.
        loader = ctx.resident_loader(STUDENT_BATCH, STEP_AUGMENT, ctx.targets("A"))
        staged = list(itertools.islice(_forever(loader), n))
        fast = StudentStep(1.0, ctx.meta.num_classes, ctx.device, compile=True, bf16=True)
        eager = StudentStep(1.0, ctx.meta.num_classes, ctx.device, compile=False, bf16=False)
        yield Comparison(f"student w1 b{STUDENT_BATCH} compile+bf16", "img/s", n * STUDENT_BATCH,
                         _steps(fast, itertools.cycle(staged), n), "eager float32",
                         _steps(eager, itertools.cycle(staged), n))


def _target_cost_note(ctx: BenchContext, batches: list[Any], calls: int = 200) -> str:
    """A note with what C's targets cost per batch over A's one-hot, timed on the providers alone.

    The full-step rows carry the whole machine's noise; this isolates the one thing C adds to
    a step (gather cached logits, softmax, mix), so its share of a step can be read directly.
    """
    providers = {s: ctx.targets(s) for s in ("A", "C")}
    cost = {}
    for strategy, provider in providers.items():
        for batch in batches:  # warm-up: page cache of the memory map, allocator
            provider(batch)
        cost[strategy] = min(
            elapsed(lambda: [provider(batches[i % len(batches)]) for i in range(calls)], ctx.device) / calls
            for _ in range(3)
        )
    return (f"targets alone, batch {STEP_BATCH}: C {cost['C'] * 1e6:.0f} µs/batch, A (one-hot) "
            f"{cost['A'] * 1e6:.0f} µs/batch: C adds {(cost['C'] - cost['A']) * 1e6:.0f} µs to each step")


def _forever(loader: Any) -> Iterator[Any]:
    """The batches of ``loader`` across epochs, without end (each pass over a loader is its next epoch)."""
    while True:
        yield from loader


def _steps(student: StudentStep, batches: Iterator[Any], count: int) -> Callable[[], None]:
    """A callable doing ``count`` student steps on the next batches of ``batches``."""

    def run() -> None:
        for _ in range(count):
            student(next(batches))

    return run
