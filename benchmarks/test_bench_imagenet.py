"""Decode-time crops of variable-size JPEGs: img/s against FFCV's own decoders and torchvision.

Compared in the same process, alternately (``fasttarget.bench.imagenet_comparisons``, the code
``fasttarget bench imagenet`` runs), each timed call one epoch over the same random rows of a beton
written by FFCV's ``DatasetWriter`` (all JPEG, max side 500, quality 90), batch 256, every core:

- train views: :class:`~fasttarget.decode.PlannedCropDecoder` with boxes planned by fasttarget
  against FFCV's ``RandomResizedCropRGBImageDecoder`` (goal ≥ 1.5×) and against torchvision's
  ``ImageFolder`` + ``DataLoader(num_workers=2)`` + ``RandomResizedCrop(224)`` (goal ≥ 4×);
- test views: center boxes against FFCV's ``CenterCropRGBImageDecoder`` (goal ≥ 1×);
- ``build_loader``'s whole crop path against FFCV's RRC loader.

The default run checks, on a small synthetic photo folder, that the baselines do the same work
(the same rows, the same output shapes) and times one planned epoch with pytest-benchmark.
``-m slow`` builds the >= 10,000-photo beton from the 334 real photos of
``../shared/data/imagenet-sample`` (skips without them), measures the suite (median of 3 pairs)
and asserts the goals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fasttarget.bench import FFCV_CENTER, FFCV_RRC, TORCHVISION_FOLDER, BenchConfig, BenchContext, missed_goals, run_suite
from fasttarget.bench import imagenet as suite

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-sample"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A synthetic train-folder layout (3 classes, photo-like JPEGs of varied sizes), repeated to
    96 files, written into a bench beton: ``(folder, files, beton)``."""
    root = tmp_path_factory.mktemp("imagenet-small")
    rng = np.random.default_rng(0)
    for c in range(3):
        for i in range(4):
            h, w = int(rng.integers(150, 600)), int(rng.integers(150, 600))
            yy, xx = np.mgrid[0:h, 0:w] / 100.0
            waves = np.stack([np.sin(xx + k) * np.cos(yy * (k + 1)) for k in range(3)], -1)
            pixels = np.clip(128 + 90 * waves + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
            (root / "src" / "train" / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / "src" / "train" / f"n{c:08d}" / f"{i}.JPEG", quality=90)
    folder, files = suite.bench_folder(root / "src", root / "files", 96)
    beton = suite.bench_beton(files, root / "bench.beton", lambda msg: None)
    return folder, files, beton


def test_bench_beton_holds_every_file_as_jpeg_at_most_500_px(small):
    from ffcv.reader import Reader

    _, files, beton = small
    meta = Reader(str(beton)).metadata["f0"]
    assert len(files) == len(meta) == 96
    assert (meta["mode"] == 0).all() and (np.maximum(meta["height"], meta["width"]) <= 500).all()


@pytest.mark.parametrize("view", ["train", "test"])
def test_planned_and_ffcv_loaders_decode_the_same_rows_to_the_same_shape(small, view):
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder

    from fasttarget.augment import center_crop_boxes
    from fasttarget.decode import PlannedCropDecoder, stored_sizes

    _, _, beton = small
    rows = np.array([1, 5, 17, 40, 41, 90])
    boxes = center_crop_boxes(torch.from_numpy(stored_sizes(beton))).numpy()
    theirs = (RandomResizedCropRGBImageDecoder((suite.OUT, suite.OUT)) if view == "train"
              else CenterCropRGBImageDecoder((suite.OUT, suite.OUT), 224 / 256))
    seen = {}
    for name, decoder in (("ours", PlannedCropDecoder(boxes, (suite.OUT, suite.OUT))), ("ffcv", theirs)):
        batches = list(suite._ffcv_loader(beton, rows, decoder, 2))
        seen[name] = sorted(int(y) for _, labels in batches for y in labels.reshape(-1))
        assert all(x.shape[1:] == (suite.OUT, suite.OUT, 3) and x.dtype == np.uint8 for x, _ in batches)
    assert seen["ours"] == seen["ffcv"] and len(seen["ours"]) == len(rows)
    if view == "test":  # the same rule and boxes: close to FFCV's own center crops (filters differ)
        ours = np.concatenate([x for x, _ in suite._ffcv_loader(beton, rows, PlannedCropDecoder(boxes, (224, 224)), 2)])
        ffcv = np.concatenate([x for x, _ in suite._ffcv_loader(beton, rows, theirs, 2)])
        assert np.abs(ours.astype(np.int16) - ffcv).mean() < 6


def test_torchvision_baseline_reads_the_beton_rows_files(small):
    folder, files, _ = small
    rows = np.array([0, 3, 50, 95])
    loader = suite.torchvision_loader(folder, rows)
    # row i of the beton is file i of the folder
    assert [Path(loader.dataset.dataset.samples[i][0]) for i in rows] == [files[i] for i in rows]
    images = [x for x, _ in loader]
    assert sum(len(x) for x in images) == len(rows)
    assert all(x.shape[1:] == (3, suite.OUT, suite.OUT) for x in images)


def test_one_planned_train_epoch(benchmark, small):
    _, files, beton = small
    rows = np.arange(len(files))
    epoch = suite.planned_epochs(beton, rows, "train", 2)
    epoch()  # compile
    benchmark.extra_info["images_per_round"] = len(rows)
    benchmark(epoch)


@pytest.mark.slow
def test_imagenet_goals_on_10000_real_photos(tmp_path_factory, bench_rows):
    if not SAMPLE.is_dir():
        pytest.skip(f"needs the 334 real ImageNet photos at {SAMPLE}")
    cfg = BenchConfig(suites=("imagenet",), imagenet=SAMPLE, scratch=tmp_path_factory.mktemp("imagenet-bench"),
                      repeats=3, warmup=1)
    ctx = BenchContext(cfg, cfg.scratch)
    rows = run_suite("imagenet", ctx)
    print("\n".join(ctx.notes))
    bench_rows.extend(rows)
    assert {(r.name, r.baseline) for r in rows} >= {
        ("imagenet train rrc224", FFCV_RRC), ("imagenet train rrc224", TORCHVISION_FOLDER),
        ("imagenet test center224", FFCV_CENTER)}
    assert not missed_goals(rows, on_cuda=False)
