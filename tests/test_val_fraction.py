"""Datasets as users have them: class folders without val/ (``--val-fraction``), and fingerprints
that tell conversions with other pixel settings apart (a cache of one is refused on the other).

The class folders hold real CIFAR-10 images (the first records of ``cifar10_source``) as PNG files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fasttarget.convert import ConvertConfig, convert, fingerprint, pixel_settings
from fasttarget.dataset import DatasetMeta, read_split
from fasttarget.holdout import hold_out_test_split
from fasttarget.sources import CIFAR10_CLASSES, Split, load_image, open_source

IMAGENET_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def _cifar_records(cifar10_source: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(cifar10_source / "data_batch_1.bin", np.uint8, count * 3073).reshape(count, 3073)
    return raw[:, 1:].reshape(count, 3, 32, 32).transpose(0, 2, 3, 1), raw[:, 0].astype(np.int64)


def write_class_folders(root: Path, images: np.ndarray, labels: np.ndarray, scale: int = 1) -> Path:
    """``root/<class>/<k>.png`` per image (upscaled ``scale`` times), no train/ and no val/."""
    for k, (image, label) in enumerate(zip(images, labels)):
        folder = root / CIFAR10_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.repeat(scale, 0).repeat(scale, 1)).save(folder / f"{k:04d}.png")
    return root


@pytest.fixture(scope="module")
def class_folders(cifar10_source, tmp_path_factory) -> Path:
    images, labels = _cifar_records(cifar10_source, 200)
    return write_class_folders(tmp_path_factory.mktemp("classes") / "photos", images, labels)


def test_val_fraction_holds_out_a_stratified_seeded_split(class_folders, tmp_path, run_cli):
    code, out, err = run_cli("convert", "imagefolder", "--source", class_folders, "--out", tmp_path / "d",
                             "--val-fraction", "0.2", "--seed", "3", "--no-progress", "--workers", "2")
    assert code == 0, err
    meta = DatasetMeta.load(tmp_path / "d")
    source = open_source("imagefolder", class_folders)
    per_class = np.bincount(source.train.labels, minlength=10)
    # floor(0.2 * n) of each class held out (all but ceil(0.8 * n)), the rest kept for training.
    expected_test = per_class - np.ceil(np.round(0.8 * per_class, 6)).astype(int)
    assert meta.splits["test"].class_counts == tuple(expected_test)
    assert meta.splits["train"].class_counts == tuple(per_class - expected_test)
    holdout = meta.extra["holdout"]
    assert (holdout["fraction"], holdout["seed"]) == (0.2, 3)

    # The held-out images are exactly the files the record's checksum names, pixel for pixel.
    carved = hold_out_test_split(source, 0.2, seed=3)
    names = [f.relative_to(class_folders).as_posix() for f in carved.test.files]
    assert hashlib.sha256("\n".join(names).encode()).hexdigest() == holdout["test_files_sha256"]
    test_images, test_labels = read_split(tmp_path / "d", "test")
    np.testing.assert_array_equal(test_labels, carved.test.labels)
    for i, f in enumerate(carved.test.files):
        np.testing.assert_array_equal(test_images[i], load_image(f))
    assert not set(carved.test.files) & set(carved.train.files)
    assert len(carved.test) + len(carved.train) == len(source.train)

    # Same seed, same split; another seed, another one.
    again = hold_out_test_split(open_source("imagefolder", class_folders), 0.2, seed=3)
    assert again.extra["holdout"] == holdout and again.test.files == carved.test.files
    other = hold_out_test_split(source, 0.2, seed=4)
    assert other.extra["holdout"]["test_files_sha256"] != holdout["test_files_sha256"]


def test_train_folder_without_val_works_too(class_folders, tmp_path):
    shutil.copytree(class_folders, tmp_path / "src" / "train")
    meta = convert(ConvertConfig("imagefolder", tmp_path / "src", tmp_path / "d", val_fraction=0.1, seed=0,
                                 num_workers=2, progress=False))
    assert meta.extra["holdout"]["fraction"] == 0.1 and meta.splits["test"].count > 0
    assert "train/<class>/, no test split" in meta.source["layout"]


def test_val_fraction_bad_inputs(class_folders, tmp_path, user_error):
    user_error("class folders without --val-fraction", "convert", "imagefolder", "--source", class_folders,
               "--out", tmp_path / "a", expect=("no test images", "--val-fraction"))
    user_error("--val-fraction out of range", "convert", "imagefolder", "--source", class_folders,
               "--out", tmp_path / "b", "--val-fraction", "1.5", expect="--val-fraction must be in (0, 1)")
    with_val = tmp_path / "with-val"
    shutil.copytree(class_folders, with_val / "train")
    shutil.copytree(class_folders, with_val / "val")
    user_error("--val-fraction on a source with val/", "convert", "imagefolder", "--source", with_val,
               "--out", tmp_path / "c", "--val-fraction", "0.1", expect=("already has a test split", "drop --val-fraction"))
    user_error("--val-fraction too small to hold out an image", "convert", "imagefolder", "--source", class_folders,
               "--out", tmp_path / "d", "--val-fraction", "0.001", expect=("holds out no image", "raise it"))


def test_fingerprint_covers_the_pixel_settings():
    rng = np.random.default_rng(0)
    splits = {"train": Split(rng.integers(0, 10, 20), images=rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8))}
    base = dict(encoding="jpg", jpeg_quality=90, max_side=256, mean=(0.5,) * 3, std=(0.25,) * 3)
    reference = fingerprint(splits, pixel_settings(**base))
    assert fingerprint(splits, pixel_settings(**base)) == reference
    for change in (dict(jpeg_quality=75), dict(max_side=None), dict(encoding="raw"),
                   dict(mean=(0.5, 0.5, 0.51)), dict(std=(0.25, 0.26, 0.25))):
        assert fingerprint(splits, pixel_settings(**{**base, **change})) != reference, change
    # JPEG quality does not change raw pixels, so it does not change a raw conversion's fingerprint.
    raw = {**base, "encoding": "raw"}
    assert fingerprint(splits, pixel_settings(**raw)) == fingerprint(splits, pixel_settings(**{**raw, "jpeg_quality": 75}))


def test_conversions_with_other_jpeg_quality_get_other_fingerprints(cifar10_source, tmp_path):
    images, labels = _cifar_records(cifar10_source, 30)
    folders = write_class_folders(tmp_path / "big", images, labels, scale=3)  # 96 px: stored as JPEG
    metas = [convert(ConvertConfig("imagefolder", folders, tmp_path / f"{k}-q{q}", jpeg_quality=q, val_fraction=0.5,
                                   num_workers=2, progress=False)) for k, q in enumerate((90, 75, 90))]
    assert [m.encoding for m in metas] == ["jpg"] * 3
    assert metas[0].fingerprint == metas[2].fingerprint != metas[1].fingerprint
    assert json.loads((tmp_path / "0-q90" / "meta.json").read_text())["max_side"] is None


def test_cache_of_one_conversion_is_refused_on_another(class_folders, tmp_path, run_cli, user_error):
    from test_targets import save_teacher

    dirs = {}
    for name, max_side in (("full", None), ("small", 24)):
        dirs[name] = tmp_path / name
        convert(ConvertConfig("imagefolder", class_folders, dirs[name], max_side=max_side, val_fraction=0.2,
                              num_workers=2, progress=False))
    full, small = DatasetMeta.load(dirs["full"]), DatasetMeta.load(dirs["small"])
    assert full.fingerprint != small.fingerprint
    teacher = save_teacher(tmp_path / "teacher.pt", full)
    cache = tmp_path / "targets.h5"
    code, _, err = run_cli("cache", "build", "--data", dirs["full"], "--teacher", teacher, "--out", cache,
                           "--device", "cpu", "--batch-size", "64")
    assert code == 0, err
    assert run_cli("cache", "inspect", cache, "--data", dirs["full"])[0] == 0
    message = user_error("cache of a conversion with another --max-side", "cache", "inspect", cache,
                         "--data", dirs["small"], expect=("dataset fingerprint", "another conversion"))
    assert full.fingerprint[:12] in message and small.fingerprint[:12] in message


@pytest.mark.slow
def test_real_imagenet_sample_with_val_fraction(tmp_path):
    """The 334 real ImageNet JPEGs (train/<wnid>/ only): a 10% stratified test split held out."""
    if not (IMAGENET_SAMPLE / "train").is_dir():
        pytest.skip(f"needs the ImageNet sample at {IMAGENET_SAMPLE}")
    meta = convert(ConvertConfig("imagenet", IMAGENET_SAMPLE, tmp_path / "d", val_fraction=0.1, max_side=128,
                                 num_workers=2, progress=False))
    train, test = meta.splits["train"], meta.splits["test"]
    assert train.count + test.count == 334 and min(train.class_counts) >= 1
    assert all(t <= 0.1 * (t + k) for t, k in zip(test.class_counts, train.class_counts))
