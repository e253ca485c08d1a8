"""The training step (the ``step`` suite of ``fasttarget bench``) on the bundled CIFAR-10 sample, CPU.

A full step is resident loader + StdAug + the strategy's targets + the student's forward,
separation loss, backward and AdamW step (ResNet-18 ×0.125, batch 128). Its baseline is the
same student stepping on batches produced beforehand (pre-staged tensors), so
``1 - ratio`` is the loader's share of the step. Goals (issues 3 and 4): loader overhead ≤ 5 %
for A and C, and C's step ≤ 1.02× A's. B runs its teacher inline on CPU (no side stream),
so its overhead is the teacher's forward, reported without a goal.

``pytest benchmarks/test_bench_step.py`` runs every step once; ``--benchmark-enable`` times
them with pytest-benchmark and measures the ratios (median of 5, interleaved) into the
table printed at the end of the session.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from fasttarget.bench import GOALS, STAGED, STEP_AUGMENT, STEP_BATCH, step_comparisons
from fasttarget.targets import STRATEGIES


@pytest.fixture(scope="module")
def comparisons(bench_ctx):
    return {(c.name, c.baseline): c for c in step_comparisons(bench_ctx)}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("side", ["full step", "pre-staged"])
def test_step_time(benchmark, comparisons, strategy, side):
    comparison = comparisons[(f"step {strategy} b{STEP_BATCH}", STAGED)]
    benchmark.group = f"step {strategy} b{STEP_BATCH}"
    benchmark.extra_info["images_per_round"] = comparison.work
    benchmark.pedantic(comparison.run if side == "full step" else comparison.baseline_run, rounds=5, warmup_rounds=1)


def test_full_step_trains_the_student_on_c_targets(bench_ctx, narrow_student):
    loader = bench_ctx.resident_loader(STEP_BATCH, STEP_AUGMENT, bench_ctx.targets("C"))
    batch = next(iter(loader))
    assert batch.targets.shape == (STEP_BATCH, bench_ctx.meta.num_classes)
    torch.testing.assert_close(batch.targets.sum(1), torch.ones(STEP_BATCH))
    before = [p.detach().clone() for p in narrow_student.net.parameters()]
    loss = narrow_student(batch)
    assert torch.isfinite(loss)
    assert all(not torch.equal(a, p) for a, p in zip(before, narrow_student.net.parameters()) if p.grad is not None)


def test_step_ratios(bench_ctx, comparisons, bench_rows):
    rows = [bench_ctx.measure(c) for c in comparisons.values()]
    bench_rows.extend(rows)
    assert {r.name for r in rows} == {f"step {s} b{STEP_BATCH}" for s in STRATEGIES}
    for row in rows:
        # The ratio is a median of back-to-back pairs, so it lies within the sides' spread.
        assert row.min / row.baseline_value / 2 < row.ratio < row.max / row.baseline_value * 2
        assert 0 < row.min <= row.value <= row.max
    # A loaded shared machine moves single numbers by more than these goals' margins: report, do not fail.
    for row in rows:
        goal = GOALS.get((row.name, row.baseline))
        if goal is not None and not goal.cuda_only and not goal.met(row):
            warnings.warn(f"{row.name} vs {row.baseline}: ratio {row.ratio:.3f} misses the goal {goal.text}", stacklevel=1)
