"""Loader throughput: uint8 batches in random order, batch 128 and 512, on CPU, real CIFAR-10.

Compared in the same process, alternately (``fasttarget.bench.loader_comparisons``, the code
``fasttarget bench loader`` runs), each timed call one whole epoch:

- fasttarget's resident and ffcv backends through ``uint8_batches`` (the loader before
  augmentation: the gather, or ffcv's decode plus the copy out of its reused buffers),
- a ``torch.utils.data.DataLoader`` over a per-sample ``Dataset`` with 2 workers,
- whole-batch indexing of one uint8 tensor with a random permutation (the floor).

The default run compares on the bundled sample (5,000 real CIFAR-10 images, one timed epoch
each) and runs a few batches of each backend on the full converted CIFAR-10; ``-m slow``
compares on the full 50,000 images (median of 5) and checks the issue's goal, resident ≥ 10×
the DataLoader; ``--benchmark-enable`` also times the few-batch calls with pytest-benchmark.
``-s`` shows the img/s lines.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from fasttarget.dataset import DatasetMeta, read_split
from fasttarget.loader import LoaderConfig, ResidentLoader, build_loader

BATCH_SIZES = (128, 512)
FEW = 20  # batches per call of the pytest-benchmark tests
GOAL = 10.0


@pytest.fixture(scope="module")
def loaders(cifar10_dir):
    """Each backend at each batch size over the full converted CIFAR-10 train split (read once)."""
    meta = DatasetMeta.load(cifar10_dir)
    images, labels = read_split(cifar10_dir, "train")
    out = {}
    for b in BATCH_SIZES:
        cfg = LoaderConfig(cifar10_dir, batch_size=b)
        out["resident", b] = ResidentLoader.from_arrays(images, labels, cfg, mean=meta.mean, std=meta.std)
        out["ffcv", b] = build_loader(dataclasses.replace(cfg, backend="ffcv"))
    return out


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("backend", ["resident", "ffcv"])
def test_uint8_batches(benchmark, loaders, backend, batch_size):
    loader = loaders[(backend, batch_size)]
    epochs = itertools.count()

    def few_batches():
        return list(itertools.islice(loader.uint8_batches(next(epochs)), FEW))

    benchmark.group = f"loader uint8 b{batch_size}"
    benchmark.extra_info["images_per_round"] = FEW * batch_size
    batches = benchmark(few_batches)
    assert len(batches) == FEW
    assert all(b.images.shape == (batch_size, 32, 32, 3) for b in batches)
    # copied out, not views of reused buffers: the batches differ from one another
    assert not any(b.images.data_ptr() == batches[0].images.data_ptr() for b in batches[1:])


def _title(ctx) -> str:
    return f"loader uint8 batches, CPU, {len(ctx.train[1]):,} CIFAR-10 train images"


def test_loaders_against_dataloader_and_indexing_on_the_sample(sample_dir, compare_on_cpu):
    rows = compare_on_cpu("loader", sample_dir, 1, _title)
    assert {(r.name, r.baseline) for r in rows} == {
        (f"loader {backend} b{b}", baseline) for backend in ("resident", "ffcv") for b in BATCH_SIZES
        for baseline in ("DataLoader 2 workers", "tensor indexing")}


@pytest.mark.slow
def test_resident_at_least_ten_times_the_dataloader(cifar10_dir, compare_on_cpu):
    """The issue's goal on the full CIFAR-10; slow-marked: it walks 50,000 images many times."""
    rows = compare_on_cpu("loader", cifar10_dir, 5, _title)
    for row in rows:
        if row.name.startswith("loader resident") and row.baseline == "DataLoader 2 workers":
            assert row.ratio >= GOAL, row
