"""Fleet training throughput (the ``fleet`` suite of ``fasttarget bench``), issue 12.

A fleet of N fused ResNet-18 students (one loader pass, StdAug, Strategy C members, batch
128) against the same N students trained one after another, aggregate student img/s. CPU:
width 0.125, N = 4, 8, goal ≥ 2× at N = 8. CUDA (``gpu``): full width, compile + bf16 +
channels_last, N = 8, 16, 32, goal ≥ 4× at N = 16, and the projected time of the paper's
CIFAR-10 Table 2 grid (one seed) printed from the best fleet.

The default run checks the comparisons here and measures each once in ``tests/test_bench_cli.py``
(``bench all``); ``-m slow`` asserts the CPU goal over 21 pairs; ``-m gpu`` the CUDA one.
"""

from __future__ import annotations

import dataclasses

import pytest

from fasttarget.bench import (
    CPU_FLEETS, CUDA_FLEETS, GOALS, STEP_BATCH, BenchContext, FleetSteps, fleet_comparisons, fleet_name, format_table,
    machine_info, missed_goals, solo_runs, table2_hours,
)


def test_fleet_suite_compares_each_fleet_with_its_solo_runs(bench_ctx):
    """The CPU comparisons: a fleet of N against N solo runs in turn, counting every member's images.

    Not timed here: the default run measures every fleet row once in ``tests/test_bench_cli.py``
    (``bench all``: each row's repeats, min ≤ value ≤ max, and a row for every CPU goal), and
    ``-m slow`` times them in :func:`test_fleet_meets_its_cpu_goal`.
    """
    comparisons = list(fleet_comparisons(bench_ctx))
    assert [(c.name, c.baseline) for c in comparisons] == [(fleet_name(n, "C", cuda=False), solo_runs(n))
                                                           for n in CPU_FLEETS]
    for comparison, n in zip(comparisons, CPU_FLEETS):
        assert comparison.work == n * bench_ctx.cfg.batches * STEP_BATCH  # every member's images count
    keys = {(c.name, c.baseline) for c in comparisons}
    assert {key for key, goal in GOALS.items() if key[0].startswith("fleet ") and not goal.cuda_only} <= keys


def test_fleet_steps_train_every_member_on_its_own_targets(bench_ctx):
    fleet = FleetSteps(bench_ctx, 2, 0.125, [bench_ctx.targets("C"), bench_ctx.targets("A")])
    net = fleet.step.net
    before = [p.detach().clone() for p in net.parameters()]
    fleet.run(1)()
    assert fleet.step.active.tolist() == [True, True]
    for a, p in zip(before, net.parameters()):
        assert (p.detach() != a).unflatten(0, (2, -1)).flatten(1).any(1).all()  # both members stepped


def test_table2_projection_counts_the_grid():
    assert table2_hours(19 * 39_000 * STEP_BATCH / 3600) == pytest.approx(1.0)


@pytest.mark.slow
def test_fleet_meets_its_cpu_goal(bench_ctx, tmp_path):
    """≥ 2× at N = 8 over 21 interleaved pairs of 8 steps per member."""
    ctx = BenchContext(dataclasses.replace(bench_ctx.cfg, repeats=21, batches=8), tmp_path)
    rows = [ctx.measure(c) for c in fleet_comparisons(ctx)]
    print("\n" + format_table(rows, machine_info()))
    assert not missed_goals(rows, on_cuda=False)


@pytest.mark.gpu
def test_fleet_meets_its_cuda_goal_and_projects_table2(cuda_ctx, bench_rows):
    """≥ 4× at N = 16 against the compiled solo runs; Table 2's projected time from the best fleet."""
    rows = [cuda_ctx.measure(c) for c in fleet_comparisons(cuda_ctx)]
    bench_rows.extend(rows)
    assert [r.name for r in rows] == [fleet_name(n, rows[0].name.split()[1], cuda=True) for n in CUDA_FLEETS]
    best = max(rows, key=lambda r: r.value)
    print(f"\nTable 2 (CIFAR-10, one seed, 19 runs × 39,000 steps): {table2_hours(best.value):.1f} h at "
          f"{best.value:,.0f} img/s ({best.name}); solo runs in turn: {table2_hours(best.baseline_value):.1f} h")
    assert not missed_goals(rows, on_cuda=True)
