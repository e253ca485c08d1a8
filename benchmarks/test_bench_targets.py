"""Strategy C's target cache on real CIFAR-10 (50,000 train images): build img/s and gather rows/s.

The cache of a narrow teacher (random ResNet-18 ×0.125; speed does not depend on its weights) is
built once per session through :class:`fasttarget.bench.BenchContext`, the same code
``fasttarget bench targets`` runs. Compared in the same process, alternately
(:func:`fasttarget.bench.measure`), 64 random batches of 128 indices per call:

- gather: :meth:`TargetCache.gather` (the memory map) vs h5py fancy indexing (sorted unique
  indices, then expanded; what HDF5 users typically write) — goal ≥ 10×; and vs the whole
  dataset read once with h5py and indexed in memory (the strongest fair baseline for a cache
  that fits memory) — goal ≥ 0.9×;
- cold gather: on a synthetic 128 MB cache (1,000 classes) whose pages are dropped from the
  page cache before every call, as for a cache larger than memory, vs h5py fancy indexing read
  cold too — goal ≥ 1×. Reading the whole file is no option for a cache that does not fit;
- top-k gather: a synthetic top-5 cache (1,000 classes; kept logits, tail logit and classes:
  22 bytes a row) vs the float16 full cache (2,000 bytes a row), warm — reported, no goal;
- build (slow-marked, it scores the 50,000 images four more times): :func:`build_cache` vs the
  bare teacher forward over the same images in memory.

The default run checks that the cold gather really reads from the disk and measures the top-k
gather once (``tests/test_bench_cli.py``'s ``bench all`` measures the others once, on a small
cache); ``-m slow`` builds the 50,000-image cache, takes medians of 9 pairs and asserts every
gather goal. Run
``pytest benchmarks/test_bench_targets.py -s`` to see the numbers (``-m slow`` for all).
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import pytest

from fasttarget.bench import (
    COLD_SHAPE, FP16_FULL, GATHER_BATCH, GATHER_CALLS, H5PY_FANCY, H5PY_IN_MEMORY, TOPK_K, BenchConfig, BenchContext,
    format_table, machine_info, measure, missed_goals, page_cache_unsupported, targets_comparisons,
    topk_gather_comparison,
)
from fasttarget.cache import TargetCache

GATHER = f"cache gather b{GATHER_BATCH}"


@pytest.fixture(scope="module")
def ctx(cifar10_dir, tmp_path_factory):
    cfg = BenchConfig(suites=("targets",), data=cifar10_dir, device="cpu", repeats=1, warmup=1, width=0.125)
    return BenchContext(cfg, tmp_path_factory.mktemp("bench-targets"))


@pytest.fixture(scope="module")
def build_seconds(ctx):
    """Builds the session's cache (read the beton, score 50,000 images, write, checksum) and times it."""
    start = time.perf_counter()
    ctx.cache  # noqa: B018 (the property builds the cache on first use)
    return time.perf_counter() - start


def _gather_comparisons(ctx):
    """The suite's gather comparisons (warm and cold), without the build."""
    return [c for c in targets_comparisons(ctx) if c.name.startswith("cache gather")]


@pytest.mark.slow
def test_cache_builds_and_every_gather_is_measured(ctx, build_seconds):
    """The 50,000-image cache and one pair of each gather comparison on it, printed.

    Slow-marked for the build (it scores the whole train split): the default run measures every
    gather comparison once in ``tests/test_bench_cli.py`` (``bench all``, rows for the warm and
    cold gathers and every CPU goal), the top-k one in :func:`test_top_k_gather_reads_both_tables_and_is_measured`,
    and builds and verifies caches in ``tests/test_cache.py``.
    """
    cache = TargetCache.open(ctx.cache, expected_fingerprint=ctx.meta.fingerprint)
    assert cache.num_samples == 50_000 and cache.verify()
    rows = [ctx.measure(c) for c in _gather_comparisons(ctx)]
    print(f"\ncache build (ResNet-18 x{ctx.cfg.width} teacher, CPU, incl. beton decode and checksum): "
          f"{cache.num_samples / build_seconds:,.0f} img/s ({build_seconds:.1f} s)")
    print(format_table(rows, machine_info()))
    assert [(r.name, r.baseline) for r in rows] == [
        (GATHER, H5PY_FANCY), (GATHER, H5PY_IN_MEMORY), (f"{GATHER} cold", H5PY_FANCY),
        (f"{GATHER} top-{TOPK_K}", FP16_FULL)]
    assert all(r.value > 0 and r.baseline_value > 0 for r in rows)


def _bytes_read(fn) -> int:
    """Bytes this process read from block devices while ``fn`` ran (``getrusage``'s ``ru_inblock``)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_inblock
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_inblock - before) * 512


def test_cold_gather_reads_from_the_disk(tmp_path):
    """After ``prepare`` both sides read the rows from the disk; run again, from the page cache.

    Counted in bytes read, not timed: otherwise the cold row could publish page-cache numbers
    under a disk-read name, and a loaded machine could not hide it.
    """
    from fasttarget.bench import cold_gather_comparison

    if page_cache_unsupported(tmp_path):
        pytest.skip(page_cache_unsupported(tmp_path))
    ctx = BenchContext(BenchConfig(suites=("targets",)), tmp_path)
    cold = cold_gather_comparison(ctx)
    # At least half the gathered rows' bytes (indices repeat a little; readahead reads more).
    needed = GATHER_BATCH * GATHER_CALLS * COLD_SHAPE[1] * 2 // 2
    for side in (cold.run, cold.baseline_run):
        cold.prepare()
        assert _bytes_read(side) >= needed, side
        assert _bytes_read(side) < needed // 10, side
    # Opened last: a second mapping of the file would hold its pages in the page cache.
    cache = TargetCache.open(tmp_path / "cold-cache.h5")
    assert (cache.num_samples, cache.num_classes) == COLD_SHAPE and cache.verify()


def test_cold_gather_is_skipped_with_a_note_on_tmpfs():
    """On tmpfs a file's pages are its storage: dropping them is impossible, so no cold row is made."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or page_cache_unsupported(shm) is None:
        pytest.skip("no tmpfs at /dev/shm here")
    from fasttarget.bench import cold_gather_comparison

    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        ctx = BenchContext(BenchConfig(suites=("targets",)), tmp)
        assert cold_gather_comparison(ctx) is None
        assert ctx.notes == [f"cold cache gather skipped: {tmp} is on tmpfs, whose files live in the page cache: "
                             "set TMPDIR to a disk-backed directory"]
        assert not (Path(tmp) / "cold-cache.h5").exists()


@pytest.mark.slow
def test_gather_meets_its_goals_warm_and_cold(ctx, build_seconds):
    """≥ 10× h5py fancy indexing and ≥ 0.9× the in-memory gather warm, ≥ 1× h5py cold; slow-marked
    because single pairs on a loaded shared machine are noisy."""
    rows = [measure(c, repeats=9, warmup=1) for c in _gather_comparisons(ctx)]
    print("\n" + format_table(rows, machine_info()))
    assert len(rows) == 4
    assert not missed_goals(rows, on_cuda=False)


@pytest.mark.slow
def test_cache_build_against_bare_teacher_forward(ctx, build_seconds):
    # Each call scores all 50,000 images: two timed calls a side, no warm-up (the session's build was one).
    build = measure(next(c for c in targets_comparisons(ctx) if c.name == "cache build"), repeats=2, warmup=0)
    print("\n" + format_table([build], machine_info()))
    # Decoding the beton, HDF5 writes and the checksum should cost little next to the teacher.
    assert build.ratio > 0.5


def test_top_k_gather_reads_both_tables_and_is_measured(tmp_path):
    """The top-k row's two sides gather what they claim; one measured pair, printed."""
    ctx = BenchContext(BenchConfig(suites=("targets",)), tmp_path)
    comparison = topk_gather_comparison(ctx)
    top5 = TargetCache.open(tmp_path / "top5-1000.h5")
    full = TargetCache.open(tmp_path / "full-1000.h5")
    assert top5.form.top_k == TOPK_K and top5.num_classes == full.num_classes == 1000
    assert top5.logits.shape[1] == TOPK_K + 1 and full.logits.dtype.itemsize == 2
    row = measure(comparison, repeats=3, warmup=1)
    print("\n" + format_table([row], machine_info()))
    assert row.value > 0 and row.baseline_value > 0
