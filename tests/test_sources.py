"""Every source layout, generated small in tmp_path: read by open_source, converted, read back."""

from __future__ import annotations

import hashlib
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fasttarget.convert import ConvertConfig, convert
from fasttarget.dataset import read_split
from fasttarget.demo import SAMPLE_SOURCE
from fasttarget.errors import UserError
from fasttarget.sources import load_image, open_source


def _records_to_planes(images: np.ndarray) -> np.ndarray:
    """[N,32,32,3] → CIFAR rows [N,3072] (R plane, G plane, B plane)."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _pickle(path: Path, obj: dict, keys: str) -> None:
    """Pickle a CIFAR python dict with ``keys="bytes"`` or ``"str"`` keys and class names.

    ``"bytes"`` is what the official Python 2 files give under ``pickle.load(f, encoding="bytes")``;
    ``"str"`` is what torchvision sees (``encoding="latin1"``) and what a Python 3 re-pickle holds.
    """
    def form(value):
        return value.encode() if keys == "bytes" and isinstance(value, str) else value

    with open(path, "wb") as f:
        pickle.dump({form(k): [form(x) for x in v] if isinstance(v, list) else v for k, v in obj.items()}, f)


def make_cifar10(root: Path, layout: str, rng: np.random.Generator,
                 keys: str = "bytes") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A 2-batch CIFAR-10 in ``layout`` under ``root/<layout>``; returns the true (images, labels).

    ``keys`` is the form of the python layout's pickles (see :func:`_pickle`).
    """
    folder = root / layout
    folder.mkdir(parents=True)
    truth = {}
    parts = {"train": [("1", 7), ("2", 5)], "test": [("", 6)]}
    for split, batches in parts.items():
        all_images, all_labels = [], []
        for suffix, n in batches:
            images, labels = _random_images(rng, n), rng.integers(0, 10, n)
            name = f"data_batch_{suffix}" if split == "train" else "test_batch"
            if layout == "cifar-10-batches-bin":
                records = np.concatenate([labels[:, None].astype(np.uint8), _records_to_planes(images)], axis=1)
                records.tofile(folder / f"{name}.bin")
            else:
                _pickle(folder / name, {"data": _records_to_planes(images), "labels": labels.tolist()}, keys)
            all_images.append(images)
            all_labels.append(labels)
        truth[split] = (np.concatenate(all_images), np.concatenate(all_labels))
    names = [f"class{i}" for i in range(10)]
    if layout == "cifar-10-batches-bin":
        (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    else:
        _pickle(folder / "batches.meta", {"label_names": names}, keys)
    return truth


def make_cifar100(root: Path, layout: str, rng: np.random.Generator,
                  keys: str = "bytes") -> dict[str, tuple[np.ndarray, ...]]:
    """A small CIFAR-100 in ``layout``; returns the true (images, fine, coarse) per split.

    ``keys`` is the form of the python layout's pickles (see :func:`_pickle`).
    """
    folder = root / layout
    folder.mkdir(parents=True)
    truth = {}
    for split, n in (("train", 9), ("test", 4)):
        images, fine, coarse = _random_images(rng, n), rng.integers(0, 100, n), rng.integers(0, 20, n)
        if layout == "cifar-100-binary":
            head = np.stack([coarse, fine], axis=1).astype(np.uint8)
            np.concatenate([head, _records_to_planes(images)], axis=1).tofile(folder / f"{split}.bin")
        else:
            _pickle(folder / split, {"data": _records_to_planes(images), "fine_labels": fine.tolist(),
                                     "coarse_labels": coarse.tolist()}, keys)
        truth[split] = (images, fine, coarse)
    fine_names = [f"fine{i}" for i in range(100)]
    coarse_names = [f"coarse{i}" for i in range(20)]
    if layout == "cifar-100-binary":
        (folder / "fine_label_names.txt").write_text("\n".join(fine_names))
        (folder / "coarse_label_names.txt").write_text("\n".join(coarse_names))
    else:
        _pickle(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": coarse_names}, keys)
    return truth


def _save(path: Path, array: np.ndarray, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array if mode == "RGB" else array[..., 0], mode=mode)
    image.save(path)


def make_tinyimagenet(root: Path, rng: np.random.Generator) -> Path:
    """tiny-imagenet-200 with 3 classes (listed unsorted in wnids.txt), 3 train JPEGs each (one grayscale), 4 val."""
    folder = root / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("n01\tgoldfish\nn02\tcat, tabby\nn03\tbus\nn99\tunused\n")
    for wnid in wnids:
        for k in range(3):
            mode = "L" if (wnid, k) == ("n02", 1) else "RGB"
            _save(folder / "train" / wnid / "images" / f"{wnid}_{k}.JPEG",
                  rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), mode)
    annotations = []
    for k, wnid in enumerate(["n02", "n01", "n03", "n02"]):
        _save(folder / "val" / "images" / f"val_{k}.JPEG", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        annotations.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return folder


def make_imagefolder(root: Path, rng: np.random.Generator, corrupt: bool) -> Path:
    """train/ and val/ with 2 classes of 96x128 PNGs; optionally one corrupt train file.

    The images are 16-pixel blocks of random colour (aligned with JPEG's 16x16 chroma blocks),
    photo-like enough for JPEG to keep them close.
    """
    folder = root / "folder"
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("dog", "cat"):
            for k in range(n):
                blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
                _save(folder / split / cls / f"{k}.png", blocks.repeat(16, axis=0).repeat(16, axis=1))
    if corrupt:
        (folder / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    return folder


def _convert(dataset: str, source: Path, out: Path, **kw) -> object:
    return convert(ConvertConfig(dataset, source, out, num_workers=2, progress=False, **kw))


# The python layouts in both pickle forms (see _pickle): byte keys and names, or str ones.
CIFAR10_FORMS = [("cifar-10-batches-bin", "bytes"), ("cifar-10-batches-py", "bytes"), ("cifar-10-batches-py", "str")]
CIFAR100_FORMS = [("cifar-100-binary", "bytes"), ("cifar-100-python", "bytes"), ("cifar-100-python", "str")]
FORM_IDS = ["binary", "python-bytes-keys", "python-str-keys"]


@pytest.mark.parametrize(("layout", "keys"), CIFAR10_FORMS, ids=FORM_IDS)
def test_cifar10_layouts_round_trip(tmp_path, layout, keys):
    truth = make_cifar10(tmp_path / "src", layout, np.random.default_rng(1), keys)
    # The parent folder works as --source (torchvision's root), the layout folder too.
    for source in (tmp_path / "src", tmp_path / "src" / layout):
        src = open_source("cifar10", source)
        assert src.layout == layout
        assert src.classes == tuple(f"class{i}" for i in range(10))
        for split, (images, labels) in truth.items():
            np.testing.assert_array_equal(src.split(split).images, images)
            np.testing.assert_array_equal(src.split(split).labels, labels)

    if layout == "cifar-10-batches-bin" or keys == "str":
        return  # conftest.py converts the binary layout (the sample); one pickle form covers the write path
    meta = _convert("cifar10", tmp_path / "src", tmp_path / "out")
    assert meta.source["layout"] == layout
    assert (meta.count("train"), meta.count("test")) == (12, 6)
    for split, (images, labels) in truth.items():
        got_images, got_labels = read_split(tmp_path / "out", split)
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_labels, labels)
        assert meta.splits[split].class_counts == tuple(np.bincount(labels, minlength=10))


@pytest.mark.parametrize(("layout", "keys"), CIFAR100_FORMS, ids=FORM_IDS)
def test_cifar100_layouts_fine_labels_and_coarse_in_meta(tmp_path, layout, keys):
    truth = make_cifar100(tmp_path, layout, np.random.default_rng(2), keys)
    src = open_source("cifar100", tmp_path)
    assert src.layout == layout
    assert len(src.classes) == 100 and src.classes[7] == "fine7"
    for split, (images, fine, coarse) in truth.items():
        np.testing.assert_array_equal(src.split(split).images, images)
        np.testing.assert_array_equal(src.split(split).labels, fine)
        assert src.extra["coarse_labels"][split] == coarse.tolist()
    assert src.extra["coarse_classes"][19] == "coarse19"

    if layout == "cifar-100-binary":  # one conversion covers the write path for CIFAR-100
        meta = _convert("cifar100", tmp_path, tmp_path / "out")
        assert meta.num_classes == 100
        assert meta.extra["coarse_labels"]["test"] == truth["test"][2].tolist()
        images, labels = read_split(tmp_path / "out", "train")
        np.testing.assert_array_equal(images, truth["train"][0])
        np.testing.assert_array_equal(labels, truth["train"][1])


def test_tinyimagenet_sorted_wnids_grayscale_to_rgb_val_as_test(tmp_path):
    folder = make_tinyimagenet(tmp_path, np.random.default_rng(3))
    src = open_source("tinyimagenet", tmp_path)
    assert src.classes == ("n01", "n02", "n03")
    assert src.extra["class_words"] == ["goldfish", "cat, tabby", "bus"]
    assert src.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert src.test.labels.tolist() == [1, 0, 2, 1]
    gray_row = [f.name for f in src.train.files].index("n02_1.JPEG")
    gray = src.train.load(gray_row)
    assert gray.shape == (64, 64, 3)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()

    meta = _convert("tinyimagenet", folder, tmp_path / "out")
    assert (meta.encoding, meta.image_shape) == ("raw", (64, 64, 3))
    images, labels = read_split(tmp_path / "out", "train")
    np.testing.assert_array_equal(labels, src.train.labels)
    # Raw storage: the beton holds exactly the decoded RGB pixels, the grayscale file included.
    for i, f in enumerate(src.train.files):
        np.testing.assert_array_equal(images[i], load_image(f))
    test_images, test_labels = read_split(tmp_path / "out", "test")
    np.testing.assert_array_equal(test_labels, [1, 0, 2, 1])
    np.testing.assert_array_equal(test_images[2], load_image(folder / "val" / "images" / "val_2.JPEG"))


def test_imagefolder_corrupt_file_fails_naming_it(tmp_path):
    folder = make_imagefolder(tmp_path, np.random.default_rng(4), corrupt=True)
    with pytest.raises(UserError, match=r"broken\.jpg.*--skip-bad"):
        _convert("imagefolder", folder, tmp_path / "out")
    assert not (tmp_path / "out" / "train.beton").exists()


def test_imagefolder_with_nothing_readable_is_a_user_error(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        (tmp_path / split / "cat" / "0.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="no readable training images"):
        _convert("imagefolder", tmp_path, tmp_path / "out", skip_bad=True)


def test_imagefolder_skip_bad_counts_and_jpeg_for_large_images(tmp_path):
    folder = make_imagefolder(tmp_path, np.random.default_rng(5), corrupt=True)
    meta = _convert("imagenet", folder, tmp_path / "out", skip_bad=True, jpeg_quality=95)
    assert meta.classes == ("cat", "dog")
    assert meta.splits["train"].skipped == 1 and meta.splits["train"].count == 8
    assert meta.splits["test"].class_counts == (2, 2)
    assert (meta.encoding, meta.jpeg_quality, meta.image_shape) == ("jpg", 95, (96, 128, 3))
    images, labels = read_split(tmp_path / "out", "train")
    src = open_source("imagenet", folder)
    kept = [f for f in src.train.files if f.name != "broken.jpg"]
    np.testing.assert_array_equal(labels, [0] * 4 + [1] * 4)
    for i, f in enumerate(kept):
        error = np.abs(images[i].astype(int) - load_image(f).astype(int))
        # Chroma subsampling blurs colour edges; flat areas come back exact.
        assert np.median(error) == 0 and error.mean() < 6, f"JPEG round trip of {f} is off by {error.mean():.1f}"


def test_max_side_downscales_and_keeps_raw(tmp_path):
    folder = make_imagefolder(tmp_path, np.random.default_rng(6), corrupt=False)
    meta = _convert("imagefolder", folder, tmp_path / "out", max_side=64)
    # 128x96 (WxH) halves to 64x48, which fits the raw limit.
    assert (meta.encoding, meta.image_shape) == ("raw", (48, 64, 3))
    images, _ = read_split(tmp_path / "out", "test")
    assert images.shape == (4, 48, 64, 3)


def test_open_source_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        open_source("mnist", tmp_path)
    with pytest.raises(UserError, match=r"does not exist.*--source"):
        open_source("cifar10", tmp_path / "nope")
    with pytest.raises(UserError, match=r"no cifar10 data found in .*cifar-10-batches-bin.*--download"):
        open_source("cifar10", tmp_path)
    (tmp_path / "data_batch_1.bin").write_bytes(b"\0" * 3074)
    (tmp_path / "test_batch.bin").write_bytes(b"\0" * 3073)
    with pytest.raises(UserError, match=r"data_batch_1\.bin is not a CIFAR binary file"):
        open_source("cifar10", tmp_path)


def test_cifar_pickle_errors_name_the_file_and_the_fix(tmp_path):
    make_cifar100(tmp_path, "cifar-100-python", np.random.default_rng(7), "str")
    train = tmp_path / "cifar-100-python" / "train"
    fix = "replace it with the file from the official download"
    # A CIFAR-10 batch where CIFAR-100's train file belongs.
    _pickle(train, {"data": np.zeros((1, 3072), np.uint8), "labels": [0]}, "str")
    with pytest.raises(UserError, match=rf"train lacks 'fine_labels', 'coarse_labels': {fix}"):
        open_source("cifar100", tmp_path)
    train.write_bytes(b"not a pickle")
    with pytest.raises(UserError, match=rf"train is not a CIFAR python pickle \(invalid load key.*\): {fix}"):
        open_source("cifar100", tmp_path)
    with open(train, "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(UserError, match=rf"train holds a list, not a CIFAR python dict: {fix}"):
        open_source("cifar100", tmp_path)


def test_download_offline_is_a_user_error(tmp_path, monkeypatch):
    import urllib.error

    from torchvision.datasets import cifar

    def offline(*args, **kwargs):  # what urllib raises without a network
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(UserError, match=r"could not download cifar10 .*--source"):
        _convert("cifar10", tmp_path / "root", tmp_path / "out", download=True)


def _sample_checksums() -> dict[str, str]:
    """File name → SHA-256 as listed in the shipped sample's README."""
    readme = (SAMPLE_SOURCE.parent / "README.md").read_text()
    return {name: digest for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M)}


def test_shipped_sample_matches_its_readme():
    sums = _sample_checksums()
    assert len(sums) == 7
    for name, digest in sums.items():
        assert hashlib.sha256((SAMPLE_SOURCE / name).read_bytes()).hexdigest() == digest, f"{name} differs"
    src = open_source("cifar10", SAMPLE_SOURCE)
    assert np.bincount(src.train.labels).tolist() == [500] * 10
    assert np.bincount(src.test.labels).tolist() == [100] * 10


def test_make_sample_reproduces_the_shipped_sample(tmp_path, full_cifar10_source):
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(repo / "scripts" / "make_sample.py"), "--source", str(full_cifar10_source),
                    "--out", str(tmp_path / "sample")], check=True, capture_output=True)
    for name in _sample_checksums():
        made = (tmp_path / "sample" / "cifar-10-batches-bin" / name).read_bytes()
        assert made == (SAMPLE_SOURCE / name).read_bytes(), f"{name} is not reproducible"
