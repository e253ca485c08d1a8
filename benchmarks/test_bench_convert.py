"""fasttarget convert of the real CIFAR-10 against FFCV's own DatasetWriter on the same arrays.

Goal: the whole conversion (reading the source, statistics, fingerprint, both betons, meta.json)
takes at most twice what FFCV's ``DatasetWriter`` alone needs for the two splits already in memory,
with the same fields and workers. Both sides are :func:`fasttarget.bench.convert_comparisons`,
the code ``fasttarget bench convert`` runs, timed alternately by ``BenchContext.measure``.

The default run converts once per side; ``--benchmark-enable`` takes the median of 3 after a
warm-up and checks the goal:

    .venv/bin/pytest benchmarks/test_bench_convert.py --benchmark-enable -s
"""

from __future__ import annotations

from fasttarget.bench import BenchConfig, BenchContext, convert_comparisons
from fasttarget.convert import usable_cores

GOAL_RATIO = 2.0


def test_bench_convert_vs_ffcv_writer(benchmark, bench_rows, full_cifar10_source, tmp_path):
    timed = benchmark.enabled
    cfg = BenchConfig(suites=("convert",), source=full_cifar10_source,
                      repeats=3 if timed else 1, warmup=1 if timed else 0)
    ctx = BenchContext(cfg, tmp_path)
    comparison = next(convert_comparisons(ctx))
    benchmark.extra_info["note"] = "one round = the interleaved measurement of both sides; see the printed row"
    row = benchmark.pedantic(ctx.measure, args=(comparison,), rounds=1, iterations=1)
    bench_rows.append(row)

    time_ratio = 1 / row.ratio  # fasttarget's time over the writer's
    benchmark.extra_info.update(fasttarget_img_per_s=row.value, ffcv_writer_img_per_s=row.baseline_value,
                                time_ratio=time_ratio)
    print(f"\nCIFAR-10 {comparison.work:,.0f} images, {usable_cores()} cores: fasttarget convert {row.value:,.0f} img/s, "
          f"FFCV DatasetWriter {row.baseline_value:,.0f} img/s, time ratio {time_ratio:.2f} (goal <= {GOAL_RATIO})")
    assert comparison.work == 60_000
    assert (tmp_path / "convert" / "fasttarget" / "meta.json").is_file()
    if timed:
        assert time_ratio <= GOAL_RATIO
