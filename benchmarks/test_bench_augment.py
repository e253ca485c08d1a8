"""Augmentation throughput: img/s of every named augmentation at batch 256, 32×32, on CPU.

Compared in the same process, alternately (``fasttarget.bench.augment_comparisons``, the code
``fasttarget bench augment`` runs), on 256 real CIFAR-10 images of the bundled sample:

- fasttarget's batched augmentation (:func:`fasttarget.augment.build_augment`; on CPU the
  fused numba kernel for color/grayscale/flip/crop),
- Kornia's sequential chain of the same components, probabilities and magnitudes, the whole
  batch per call (for ``stdaug``: ColorJitter p=0.8, RandomGrayscale p=0.2,
  RandomHorizontalFlip, RandomResizedCrop), with Kornia's default crop (``cropping_mode="slice"``,
  what users run) and, for augmentations with a crop, ``cropping_mode="resample"`` (one batched
  affine warp, as fasttarget crops),
- torchvision transforms v2 applied image by image, as a per-sample ``Dataset`` would.

The default run times one call per side after one warm-up (which absorbs numba's JIT); ``-m slow``
takes medians of 7 and checks the issue's goal, ``stdaug`` ≥ 2× the Kornia chain in either mode;
``--benchmark-enable`` also times fasttarget alone with pytest-benchmark. ``-s`` shows the
img/s lines.
"""

from __future__ import annotations

import pytest
import torch

from fasttarget.augment import AUGMENT_NAMES, build_augment
from fasttarget.bench import AUGMENT_BATCH, KORNIA, KORNIA_RESAMPLE, kornia_chain, missed_goals



@pytest.mark.parametrize("name", (*AUGMENT_NAMES, "stdaug+mixup"))
def test_augment_throughput(benchmark, name):
    images = torch.rand(AUGMENT_BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    aug = build_augment(name)
    benchmark.group = f"augment b{AUGMENT_BATCH}"
    benchmark.extra_info["images_per_round"] = AUGMENT_BATCH
    out, record = benchmark(aug, images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert torch.equal(aug.apply(images, record), out)


def _title(ctx) -> str:
    return f"augment, CPU, batch {AUGMENT_BATCH}, 32x32, {torch.get_num_threads()} torch threads"


def test_augment_against_kornia_and_torchvision(sample_dir, compare_on_cpu):
    rows = compare_on_cpu("augment", sample_dir, 1, _title)
    named = [n for n in AUGMENT_NAMES if n != "noaug"]
    assert {(r.name, r.baseline) for r in rows} == {
        (f"augment {n} b{AUGMENT_BATCH}", baseline) for n in named
        for baseline in (KORNIA, KORNIA_RESAMPLE, "torchvision v2 per sample")
        if (baseline == KORNIA or (baseline == KORNIA_RESAMPLE and n in ("crop", "stdaug"))
            or (baseline.startswith("torchvision") and not build_augment(n).mixes))}


def test_resample_chain_crops_by_warping_not_slicing():
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(8, dtype=torch.long)
    out = {}
    for mode in ("slice", "resample"):
        chain = kornia_chain(build_augment("crop"), (32, 32), cropping_mode=mode)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same boxes for both modes
            out[mode] = chain(images, labels)
    assert out["slice"].shape == out["resample"].shape == images.shape
    # Same boxes, different interpolation: close, but not the same pixels.
    assert not torch.equal(out["slice"], out["resample"])
    assert (out["slice"] - out["resample"]).abs().mean() < 0.1


@pytest.mark.slow
def test_stdaug_at_least_twice_the_kornia_chain(sample_dir, compare_on_cpu):
    """The issue's goal against both Kornia chains; slow-marked because single runs on a shared machine are noisy."""
    rows = compare_on_cpu("augment", sample_dir, 7, _title)
    stdaug = [r for r in rows if r.name == f"augment stdaug b{AUGMENT_BATCH}" and r.baseline.startswith(KORNIA)]
    assert {r.baseline for r in stdaug} == {KORNIA, KORNIA_RESAMPLE}
    assert not missed_goals(stdaug, on_cuda=False)
