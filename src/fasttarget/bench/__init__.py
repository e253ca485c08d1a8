"""Benchmark suites shared by ``benchmarks/`` and ``fasttarget bench``.

Every number fasttarget publishes is a :class:`Comparison`: a fasttarget callable and
the callable a user would write instead (their *baseline*), timed in the same process,
alternately, on the same data. :func:`measure` turns one into a :class:`Row`: medians
of several repetitions after warm-up (CUDA events on CUDA), with min and max, and the
ratio oriented so that higher is better for fasttarget. Every value is a throughput
(img/s, batches/s, rows/s), so the ratio is always ``value / baseline_value``.

Baselines come in two kinds, side by side: what users typically run (a per-sample
``DataLoader`` with workers, Kornia's default chain, h5py fancy indexing) and the strongest
fair one a competent engineer would write for the same job (a bare gather over the same
resident tensor, a batched ``DataLoader``, Kornia with its resampling crop, the cache read
into memory once). Every row names its baseline, and :data:`GOALS` states the goal of each
comparison that has one.

Suites (``COMPARISONS[suite](ctx)`` yields them, :func:`run_suite` measures them):

- ``convert``: CIFAR-10 source → beton with :func:`fasttarget.convert.convert` vs FFCV's
  ``DatasetWriter`` called directly on the same arrays.
- ``loader``: uint8 batches/s of the resident and ffcv backends vs a per-sample
  ``DataLoader`` (2 workers), a ``DataLoader`` with a ``BatchSampler`` and a bare
  ``np.take``/``index_select`` gather; random order, batch 128 and 512.
- ``augment``: img/s of each named augmentation at batch 256 vs Kornia's sequential
  chain (default and resampling crop) and vs torchvision transforms v2 applied per sample.
- ``targets``: cache gather rows/s (memmap vs h5py fancy indexing and vs the cache read into
  memory; cold, vs h5py on a file dropped from the page cache) and cache build img/s (vs the
  bare teacher forward it wraps).
- ``fleet``: aggregate student img/s of a fused fleet of N (one loader pass, Strategy C
  members) against the same N students trained one after another (CPU: width ``cfg.width``,
  N = 4, 8; CUDA: full width, compile + bf16, N = 8, 16, 32).
- ``step``: a full training step (loader + augment + targets + student fwd/bwd/opt) vs
  the same student step on pre-staged tensors (the loader overhead) for Strategies A, B
  and C, and C's step against A's. On CUDA also the full-width student's img/s with
  compile + bf16 + channels_last at batch 512 against the eager fp32 step.

Modules: :mod:`~fasttarget.bench.timing` (:class:`Comparison`, :func:`measure`,
:class:`Row`), :mod:`~fasttarget.bench.goals` (the baselines' names, :data:`GOALS`),
:mod:`~fasttarget.bench.table` (:func:`format_table`, :func:`missed_goals`),
:mod:`~fasttarget.bench.context` (:class:`BenchConfig`, :class:`BenchContext`) and one module
per suite, named after it. Everything is importable from ``fasttarget.bench``.

Example:
    >>> import time
    >>> from fasttarget.bench import Comparison, measure
    >>> row = measure(Comparison("sleep less", "call/s", 1, lambda: time.sleep(0.001),
    ...                          "sleep more", lambda: time.sleep(0.004)), repeats=3, warmup=0)
    >>> row.ratio > 1
    True
"""

from __future__ import annotations

import tempfile
from typing import Callable, Iterator

from fasttarget.bench.augment import AUGMENT_BATCH, augment_comparisons, kornia_chain, torchvision_chain
from fasttarget.bench.context import DEVICES, SUITES, BenchConfig, BenchContext, has_module
from fasttarget.bench.convert import convert_comparisons
from fasttarget.bench.fleet import (
    CPU_FLEETS, CUDA_FLEETS, FleetSteps, fleet_comparisons, fleet_name, solo_runs, table2_hours,
)
from fasttarget.bench.goals import (
    BARE_GATHER, BATCHED_LOADER, FFCV_CENTER, FFCV_RRC, GOALS, H5PY_FANCY, H5PY_IN_MEMORY, KORNIA, KORNIA_RESAMPLE, PER_SAMPLE_LOADER,
    STAGED, TORCHVISION_FOLDER, Goal,
)
from fasttarget.bench.imagenet import imagenet_comparisons, per_core_notes
from fasttarget.bench.loader import (
    LOADER_BATCH_SIZES, bare_gathers, batched_dataloader, loader_comparisons, per_sample_dataloader,
)
from fasttarget.bench.step import STEP_AUGMENT, STEP_BATCH, STUDENT_BATCH, StudentStep, step_comparisons
from fasttarget.bench.table import format_table, machine_info, missed_goals
from fasttarget.bench.targets import (
    COLD_SHAPE, FP16_FULL, GATHER_BATCH, GATHER_CALLS, TOPK_K, TOPK_SHAPE, cold_gather_comparison, drop_page_cache,
    page_cache_unsupported, targets_comparisons, topk_gather_comparison, write_synthetic_cache,
)
from fasttarget.bench.timing import Comparison, Row, elapsed, fastest, measure, race_note

__all__ = [
    "AUGMENT_BATCH",
    "augment_comparisons",
    "BARE_GATHER",
    "bare_gathers",
    "batched_dataloader",
    "BATCHED_LOADER",
    "BenchConfig",
    "BenchContext",
    "cold_gather_comparison",
    "COLD_SHAPE",
    "FP16_FULL",
    "TOPK_K",
    "TOPK_SHAPE",
    "topk_gather_comparison",
    "Comparison",
    "COMPARISONS",
    "convert_comparisons",
    "CPU_FLEETS",
    "CUDA_FLEETS",
    "FleetSteps",
    "fleet_comparisons",
    "fleet_name",
    "DEVICES",
    "drop_page_cache",
    "elapsed",
    "fastest",
    "FFCV_CENTER",
    "FFCV_RRC",
    "format_table",
    "GATHER_BATCH",
    "GATHER_CALLS",
    "Goal",
    "GOALS",
    "H5PY_FANCY",
    "H5PY_IN_MEMORY",
    "has_module",
    "imagenet_comparisons",
    "KORNIA",
    "kornia_chain",
    "KORNIA_RESAMPLE",
    "LOADER_BATCH_SIZES",
    "loader_comparisons",
    "machine_info",
    "measure",
    "missed_goals",
    "page_cache_unsupported",
    "per_core_notes",
    "per_sample_dataloader",
    "PER_SAMPLE_LOADER",
    "race_note",
    "Row",
    "run_benchmarks",
    "run_suite",
    "solo_runs",
    "STAGED",
    "STEP_AUGMENT",
    "STEP_BATCH",
    "step_comparisons",
    "STUDENT_BATCH",
    "StudentStep",
    "SUITES",
    "table2_hours",
    "targets_comparisons",
    "torchvision_chain",
    "TORCHVISION_FOLDER",
    "write_synthetic_cache",
]

COMPARISONS: dict[str, Callable[[BenchContext], Iterator[Comparison]]] = {
    "convert": convert_comparisons,
    "loader": loader_comparisons,
    "augment": augment_comparisons,
    "targets": targets_comparisons,
    "step": step_comparisons,
    "fleet": fleet_comparisons,
    "imagenet": imagenet_comparisons,
}


def run_suite(suite: str, ctx: BenchContext) -> list[Row]:
    """Build and measure a suite's comparisons one at a time (each loader lives only while measured)."""
    rows = [ctx.measure(comp) for comp in COMPARISONS[suite](ctx)]
    if suite == "imagenet":
        ctx.notes += per_core_notes(rows)
    return rows


def run_benchmarks(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> tuple[list[Row], list[str]]:
    """Run the selected suites in a temporary working directory.

    Returns:
        The rows of every suite, in suite order, and notes on what was skipped and why.
    """
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fasttarget-bench-") as tmp:
        ctx = BenchContext(cfg, tmp, progress)
        for suite in cfg.selected:
            ctx.say(f"suite {suite}")
            rows += run_suite(suite, ctx)
    return rows, ctx.notes
