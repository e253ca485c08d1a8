"""Fixtures shared by the benchmarks: a benchmark context on the bundled sample, a narrow student,
CUDA gating, and one table of every row measured in the session.

Rows that tests append to ``bench_rows`` are printed as one table at the end of the session
(whatever ``-s`` says) and, when ``FASTTARGET_BENCH_JSON`` names a file, saved there in the
``fasttarget bench --json`` format (``scripts/device_check.sh`` reads it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import pytest
import torch

from fasttarget.bench import BenchConfig, BenchContext, Row, StudentStep, format_table, machine_info, run_suite

_ROWS_KEY = pytest.StashKey[list]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ROWS_KEY] = []


@pytest.fixture(scope="session")
def timing_enabled(request: pytest.FixtureRequest) -> bool:
    """Whether this session times (``--benchmark-enable``) or runs every benchmark once (the default)."""
    config = request.config
    return not (config.getoption("benchmark_disable") and not config.getoption("benchmark_enable"))


@pytest.fixture(scope="session")
def bench_ctx(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory, timing_enabled: bool) -> BenchContext:
    """The ``fasttarget bench`` context on the bundled CIFAR-10 sample (5,000 train images), on CPU.

    Timed sessions take 5 repetitions of 8 training steps after one warm-up; default sessions
    one repetition of 2 steps after one warm-up (a first call pays one-off allocations).
    """
    cfg = BenchConfig(data=sample_dir, device="cpu", repeats=5 if timing_enabled else 1, warmup=1,
                      batches=8 if timing_enabled else 2, width=0.125)
    return BenchContext(cfg, tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="session")
def cuda_ctx(tmp_path_factory: pytest.TempPathFactory) -> BenchContext:
    """The benchmark context on CUDA over the bundled sample: full-width student and teacher,
    CUDA-event timing. Without ffcv (the GPU check machine) the data is read from the sample's
    source files and the ffcv paths are skipped.
    """
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cfg = BenchConfig(device="cuda", repeats=5, warmup=2, batches=20, width=1.0)
    return BenchContext(cfg, tmp_path_factory.mktemp("bench-cuda"))


@pytest.fixture
def narrow_student(bench_ctx: BenchContext) -> StudentStep:
    """A fresh ResNet-18 ×0.125 student step on CPU (AdamW, separation loss), as the step suite uses."""
    return StudentStep(bench_ctx.cfg.width, bench_ctx.meta.num_classes, bench_ctx.device)


@pytest.fixture(scope="session")
def bench_rows(request: pytest.FixtureRequest) -> list[Row]:
    """Rows measured in this session; printed as one table at the end."""
    return request.config.stash[_ROWS_KEY]


@pytest.fixture
def compare_on_cpu(tmp_path: Path, bench_rows: list[Row], request: pytest.FixtureRequest) -> Callable[..., list[Row]]:
    """Measure one ``fasttarget bench`` suite on CPU the way the augment and loader benchmarks do.

    Returns a function ``(suite, data_dir, repeats, title)`` that measures the suite's
    comparisons (one warm-up each), prints them as img/s lines under ``title(context)``
    (``-s`` shows them), checks every throughput is positive, adds the rows to the session
    table and returns them. Under ``--benchmark-enable`` every suite takes at least 5 pairs:
    a single pair is a smoke test, not a number to publish.
    """
    timed = request.config.getoption("benchmark_enable", False)

    def compare(suite: str, data_dir: Path, repeats: int, title: Callable[[BenchContext], str]) -> list[Row]:
        repeats = max(repeats, 5) if timed else repeats
        cfg = BenchConfig(suites=(suite,), data=data_dir, device="cpu", repeats=repeats, warmup=1)
        ctx = BenchContext(cfg, tmp_path)
        rows = run_suite(suite, ctx)
        print(f"\n{title(ctx)}, median of {repeats}")
        for row in rows:
            print(f"  {row.name:20s} {_img_per_s(row, row.value):12,.0f} img/s   {row.baseline:26s} "
                  f"{_img_per_s(row, row.baseline_value):12,.0f} img/s   ratio {row.ratio:7.1f}x")
        assert all(r.value > 0 and r.baseline_value > 0 for r in rows)
        bench_rows.extend(rows)
        return rows

    return compare


def _img_per_s(row: Row, value: float) -> float:
    """A throughput of ``row`` in img/s: ``batches/s`` rows end their name with the batch size (``b128``)."""
    return value * int(row.name.rsplit("b", 1)[1]) if row.unit == "batches/s" else value


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(_ROWS_KEY, [])
    if not rows:
        return
    machine = machine_info()
    terminalreporter.write_sep("=", "fasttarget benchmark rows")
    terminalreporter.write_line(format_table(rows, machine))
    out = os.environ.get("FASTTARGET_BENCH_JSON")
    if out:
        Path(out).write_text(json.dumps({"machine": machine, "rows": [r.to_dict() for r in rows]}, indent=2) + "\n")
