"""Augmentation throughput: img/s at batch 256, 32×32, on CPU.

Compared, in the same process and alternately (``fasttarget.bench.measure``):

- fasttarget's batched augmentation (:func:`fasttarget.augment.build_augment`),
- Kornia's sequential chain of the same components, probabilities and magnitudes
  (for ``stdaug``: ColorJitter p=0.8, RandomGrayscale p=0.2, RandomHorizontalFlip,
  RandomResizedCrop), the whole batch per call,
- torchvision transforms v2 applied image by image, as a per-sample ``Dataset`` would.

Pixels are uniform noise: every op's cost is independent of the image content.
Run ``pytest benchmarks/test_bench_augment.py -s`` to see the table; with
``--benchmark-enable`` pytest-benchmark also times fasttarget alone.
"""

from __future__ import annotations

import pytest
import torch

from fasttarget.augment import AUGMENT_NAMES, build_augment
from fasttarget.bench import Comparison, kornia_chain, measure, torchvision_chain

BATCH, SIZE = 256, 32
PER_SAMPLE = 64
NAMES = (*AUGMENT_NAMES, "stdaug+mixup")


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(BATCH, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (BATCH,), generator=g)


@pytest.mark.parametrize("name", NAMES)
def test_augment_throughput(benchmark, name):
    images, _ = batch()
    aug = build_augment(name)
    out, record = benchmark(aug, images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert torch.equal(aug.apply(images, record), out)


def compare(names, repeats: int):
    """Rows of fasttarget vs the Kornia chain and vs torchvision per sample, printed as a table."""
    images, labels = batch()
    rows = []
    for name in names:
        aug = build_augment(name)
        generator = torch.Generator().manual_seed(0)

        def ours(aug=aug, generator=generator):
            return aug(images, generator)

        if aug.ops:
            chain = kornia_chain(aug, (SIZE, SIZE))
            rows.append(measure(Comparison(name, "img/s", BATCH, ours, "kornia chain",
                                           lambda chain=chain: chain(images, labels)), repeats=repeats))
        if aug.ops and not aug.mixes:
            # Per-sample cost is flat in the batch size, so time it on a quarter batch.
            per_sample = torchvision_chain(aug, (SIZE, SIZE))
            rows.append(measure(Comparison(name, "img/s", BATCH, ours, "torchvision v2 per sample",
                                           lambda per_sample=per_sample: [per_sample(im) for im in images[:PER_SAMPLE]],
                                           baseline_work=PER_SAMPLE), repeats=repeats))
    print(f"\naugment, CPU, batch {BATCH}, {SIZE}x{SIZE}, {torch.get_num_threads()} threads, median of {repeats}")
    for row in rows:
        print(f"  {row.name:13s} {row.value:10.0f} img/s   {row.baseline:26s} {row.baseline_value:9.0f} img/s"
              f"   ratio {row.ratio:6.1f}x")
    return rows


def test_augment_against_kornia_and_torchvision():
    rows = compare(NAMES, repeats=3)
    assert {r.name for r in rows} == set(NAMES) - {"noaug"}
    assert all(r.value > 0 and r.baseline_value > 0 for r in rows)


@pytest.mark.slow
def test_stdaug_at_least_twice_the_kornia_chain():
    """Issue 3's goal; slow-marked because a loaded shared machine makes single runs noisy."""
    row = next(r for r in compare(["stdaug"], repeats=15) if r.baseline == "kornia chain")
    assert row.ratio >= 2.0
