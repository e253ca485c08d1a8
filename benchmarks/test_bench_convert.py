"""fasttarget convert of the real CIFAR-10 against FFCV's own DatasetWriter on the same arrays.

Goal: the whole conversion (reading the source, statistics, fingerprint, both betons, meta.json)
takes at most twice what FFCV's ``DatasetWriter`` alone needs for the two splits already in memory.

    .venv/bin/pytest benchmarks/test_bench_convert.py --benchmark-enable -s
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fasttarget.bench import Row
from fasttarget.convert import ConvertConfig, convert, usable_cores
from fasttarget.sources import open_source

GOAL_RATIO = 2.0


class _Arrays:
    """FFCV's usual indexable: sample i → (image, label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])


def _ffcv_write(splits: dict[str, _Arrays], out: Path) -> None:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    out.mkdir(parents=True, exist_ok=True)
    for name, data in splits.items():
        writer = DatasetWriter(str(out / f"{name}.beton"), {"image": RGBImageField(), "label": IntField()},
                               num_workers=usable_cores())
        writer.from_indexed_dataset(data)


def test_bench_convert_vs_ffcv_writer(benchmark, bench_rows, cifar10_source, tmp_path):
    source = open_source("cifar10", cifar10_source)
    splits = {name: _Arrays(source.split(name).images, source.split(name).labels) for name in ("train", "test")}
    _ffcv_write({"warmup": _Arrays(source.test.images[:64], source.test.labels[:64])}, tmp_path / "warmup")

    start = time.perf_counter()
    _ffcv_write(splits, tmp_path / "ffcv")
    ffcv_s = time.perf_counter() - start

    runs = iter(range(1000))

    def run_convert() -> None:
        convert(ConvertConfig("cifar10", cifar10_source, tmp_path / f"ft{next(runs)}", progress=False))

    start = time.perf_counter()
    benchmark.pedantic(run_convert, rounds=1, iterations=1)
    fasttarget_s = time.perf_counter() - start

    ratio = fasttarget_s / ffcv_s
    images = sum(len(d) for d in splits.values())
    bench_rows.append(Row(
        name="convert cifar10", value=images / fasttarget_s, unit="img/s", baseline="FFCV DatasetWriter",
        baseline_value=images / ffcv_s, ratio=ffcv_s / fasttarget_s, repeats=1,
        min=images / fasttarget_s, max=images / fasttarget_s,
    ))
    benchmark.extra_info.update(ffcv_writer_s=ffcv_s, fasttarget_convert_s=fasttarget_s, ratio=ratio)
    print(f"\nCIFAR-10 60,000 images, {usable_cores()} cores: fasttarget convert {fasttarget_s:.2f} s, "
          f"FFCV DatasetWriter {ffcv_s:.2f} s, ratio {ratio:.2f} (goal <= {GOAL_RATIO})")
    assert (tmp_path / "ft0" / "meta.json").is_file()
    if not benchmark.disabled:
        assert ratio <= GOAL_RATIO
