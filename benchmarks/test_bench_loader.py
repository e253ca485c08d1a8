"""Loader throughput: uint8 batches in random order, batch 128 and 512, on CPU, real CIFAR-10.

Compared in the same process, alternately (``fasttarget.bench.loader_comparisons``, the code
``fasttarget bench loader`` runs), each timed call one whole epoch, fasttarget's resident and
ffcv backends through ``uint8_batches`` (the loader before augmentation: the gather, or ffcv's
decode plus the copy out of its reused buffers) against

- a ``DataLoader`` over a per-sample ``Dataset`` with 2 workers (what users typically run;
  goal: resident ≥ 10×),
- a ``DataLoader`` with a ``BatchSampler`` gathering whole batches (the strongest
  ``DataLoader``; goal: resident ≥ 1×),
- a bare ``np.take`` / ``index_select`` gather over the same resident tensor in the same order
  (no loader at all; goal: resident ≥ 0.9×).

The default run checks that the baselines do the loader's work (the bare gather yields the
resident loader's very batches, the batched ``DataLoader`` every sample once), compares on
the bundled sample (5,000 real CIFAR-10 images, one timed epoch each) and runs a few batches
of each backend on the full converted CIFAR-10. ``-m slow`` compares on the full 50,000
images, median of 9 pairs, and asserts every goal; ``--benchmark-enable`` also times the
few-batch calls with pytest-benchmark. ``-s`` shows the img/s lines.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from fasttarget.bench import (
    BARE_GATHER, BATCHED_LOADER, PER_SAMPLE_LOADER, batched_dataloader, bare_gathers, missed_goals,
)
from fasttarget.dataset import DatasetMeta, read_split
from fasttarget.loader import LoaderConfig, ResidentLoader, build_loader

BATCH_SIZES = (128, 512)
FEW = 20  # batches per call of the pytest-benchmark tests
BASELINES = (PER_SAMPLE_LOADER, BATCHED_LOADER, BARE_GATHER)


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


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_bare_gather_yields_the_resident_loaders_batches(bench_ctx, batch_size):
    images, labels = bench_ctx.train
    loader = bench_ctx.resident_loader(batch_size, "noaug")
    ours = list(loader.uint8_batches(3))
    gathers = bare_gathers(images, labels, batch_size, bench_ctx.device)
    assert set(gathers) == {"np.take", "torch.index_select"}
    for kernel, epochs in gathers.items():
        theirs = list(epochs(3))
        assert len(theirs) == len(ours) == len(images) // batch_size, kernel
        for raw, (x, y) in zip(ours, theirs):
            assert x.dtype == torch.uint8 and x.is_contiguous() and x.device == raw.images.device, kernel
            assert torch.equal(x, raw.images) and torch.equal(y, raw.labels), kernel


def test_batched_dataloader_gathers_every_sample_once_per_epoch():
    n, batch_size = 1000, 128
    index = np.arange(n)
    # Each image carries its row number in its first two pixels' red bytes.
    images = np.zeros((n, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = index // 256, index % 256
    labels = (index * 7) % 10
    batches = list(batched_dataloader(images, labels, batch_size, torch.device("cpu"))(0))
    assert len(batches) == n // batch_size
    seen = []
    for x, y in batches:
        assert x.dtype == torch.uint8 and x.shape == (batch_size, 4, 4, 3) and x.is_contiguous()
        rows = x[:, 0, 0, 0].long() * 256 + x[:, 0, 1, 0].long()
        assert torch.equal(y, torch.from_numpy(labels)[rows])
        seen += rows.tolist()
    assert len(set(seen)) == len(seen) == n // batch_size * batch_size
    assert seen != sorted(seen)  # shuffled


def _title(ctx) -> str:
    return f"loader uint8 batches, CPU, {len(ctx.train[1]):,} CIFAR-10 train images"


def test_loaders_against_every_baseline_on_the_sample(sample_dir, compare_on_cpu):
    rows = compare_on_cpu("loader", sample_dir, 1, _title)
    assert [(r.name, r.baseline) for r in rows] == [
        (f"loader {backend} b{b}", baseline) for b in BATCH_SIZES for backend in ("resident", "ffcv")
        for baseline in BASELINES]


@pytest.mark.slow
def test_resident_meets_its_goals_against_every_baseline(cifar10_dir, compare_on_cpu):
    """≥ 10× the per-sample DataLoader, ≥ 1× the batched one, ≥ 0.9× the bare gather, on the
    full CIFAR-10; slow-marked: it walks 50,000 images many times, and the 0.9× goal needs
    a quiet machine and enough pairs."""
    rows = compare_on_cpu("loader", cifar10_dir, 9, _title)
    resident = [r for r in rows if r.name.startswith("loader resident")]
    assert {r.baseline for r in resident} == set(BASELINES)
    assert not missed_goals(resident, on_cuda=False)
