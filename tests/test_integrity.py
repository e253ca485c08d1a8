"""Trusting a converted dataset: betons checked against meta.json, checksums, reproducible bytes, full disks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fasttarget.convert import ConvertConfig, convert
from fasttarget.dataset import DatasetMeta, check_dataset, check_split, read_labels, read_split
from fasttarget.demo import SAMPLE_SOURCE
from fasttarget.errors import UserError
from fasttarget.loader import LoaderConfig, build_loader

BACKENDS = ["resident", "ffcv"]


def _copy(sample_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(sample_dir, copy)
    return copy


def _edit_meta(directory: Path, edit) -> None:
    d = json.loads((directory / "meta.json").read_text())
    edit(d)
    (directory / "meta.json").write_text(json.dumps(d))


def _more_rows(d):
    d["splits"]["test"]["count"] += 24
    d["splits"]["test"]["class_counts"][0] += 24


def _fewer_rows(d):
    d["splits"]["test"]["count"] -= 100
    d["splits"]["test"]["class_counts"][9] -= 100


def _fewer_classes(d):
    d["classes"] = d["classes"][:5]
    d["num_classes"] = 5
    d["splits"]["test"]["class_counts"] = d["splits"]["test"]["class_counts"][:5]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("edit", "message"), [
    (_more_rows, r"test\.beton holds 1000 samples, meta\.json says 1024"),
    (_fewer_rows, r"test\.beton holds 1000 samples, meta\.json says 900"),
    (_fewer_classes, r"test\.beton has labels 0\.\.9, but meta\.json lists 5 classes"),
], ids=["more-rows", "fewer-rows", "fewer-classes"])
def test_loader_refuses_a_beton_that_meta_json_misdescribes(sample_dir, tmp_path, backend, edit, message):
    data = _copy(sample_dir, tmp_path)
    _edit_meta(data, edit)
    with pytest.raises(UserError, match=message + r".*fasttarget convert cifar10 --source .* --force"):
        build_loader(LoaderConfig(data, split="test", batch_size=100, backend=backend))


def test_readers_check_the_beton_too(sample_dir, tmp_path):
    data = _copy(sample_dir, tmp_path)
    _edit_meta(data, _more_rows)
    with pytest.raises(UserError, match="meta.json says 1024"):
        read_split(data, "test")
    with pytest.raises(UserError, match="meta.json says 1024"):
        read_labels(data, "test")


def _truncate(path: Path, keep: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(keep)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_beton_is_one_clear_error(sample_dir, tmp_path, backend):
    data = _copy(sample_dir, tmp_path)
    size = (data / "train.beton").stat().st_size
    _truncate(data / "train.beton", size // 2)
    with pytest.raises(UserError, match=rf"train\.beton is {size // 2} bytes, meta\.json records {size} .*--force"):
        build_loader(LoaderConfig(data, batch_size=100, backend=backend))


@pytest.mark.parametrize("keep", [2**20, 2**23 + 2**20], ids=["in-metadata", "in-data"])
def test_truncation_is_found_without_a_recorded_size(sample_dir, tmp_path, keep):
    data = _copy(sample_dir, tmp_path)
    _edit_meta(data, lambda d: [v.pop(k) for v in d["splits"].values() for k in ("size", "sha256")])
    _truncate(data / "train.beton", keep)
    with pytest.raises(UserError, match=r"train\.beton (is truncated or damaged|does not open as a beton).*--force"):
        build_loader(LoaderConfig(data, batch_size=100, backend="ffcv"))


def test_meta_json_records_each_betons_size_and_sha256(sample_dir):
    meta = DatasetMeta.load(sample_dir)
    for info in meta.splits.values():
        path = sample_dir / info.file
        assert info.size == path.stat().st_size
        assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def _flip_image_byte(path: Path) -> None:
    """Flip one bit in the middle of the image data: the structure stays valid, only the checksum can tell."""
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 1]))


def test_flipped_byte_fails_the_checksum_but_not_the_structure(sample_dir, tmp_path):
    data = _copy(sample_dir, tmp_path)
    _flip_image_byte(data / "test.beton")
    with pytest.raises(UserError, match=r"test\.beton does not match the SHA-256 meta\.json records.*--force"):
        check_dataset(data)
    assert check_dataset(data, checksum=False) == DatasetMeta.load(data)
    check_split(data, "test")  # what the loaders run: cheap, so blind to a flipped pixel


def test_dataset_without_recorded_checksums_still_loads(sample_dir, tmp_path):
    data = _copy(sample_dir, tmp_path)
    _edit_meta(data, lambda d: [v.pop(k) for v in d["splits"].values() for k in ("size", "sha256")])
    meta = check_dataset(data)
    assert all(info.sha256 is None and info.size is None for info in meta.splits.values())
    assert len(build_loader(LoaderConfig(data, split="test", batch_size=100))) == 10


def test_converting_twice_gives_the_same_bytes(tmp_path):
    # Different worker counts too: the layout must not depend on how the work was shared.
    for workers, out in ((1, tmp_path / "a"), (2, tmp_path / "b")):
        convert(ConvertConfig("cifar10", SAMPLE_SOURCE, out, num_workers=workers, progress=False))
    for name in ("train.beton", "test.beton", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_jpeg_betons_are_reproducible_and_decode_back(tmp_path):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader

    from fasttarget.convert import write_split

    # Smooth images (JPEG keeps them close), larger than the raw limit, several thousand bytes each.
    ramp = np.add.outer(np.arange(72), np.arange(72)).astype(np.float64)
    images = np.stack([np.stack([ramp * (1 + i % 3) / 3 + 20 * c + i % 50 for c in range(3)], -1)
                       for i in range(700)]).astype(np.uint8)
    labels = np.arange(700) % 7
    for workers in (1, 2):
        write_split(tmp_path / f"{workers}.beton", list(images), labels, encoding="jpg", num_workers=workers,
                    progress=False)
    assert (tmp_path / "1.beton").read_bytes() == (tmp_path / "2.beton").read_bytes()
    reader = Reader(str(tmp_path / "1.beton"))
    np.testing.assert_array_equal(reader.metadata["f1"], labels)
    # Every sample's bytes lie inside one page, as ffcv's loader reads them.
    ptr, size = reader.alloc_table["ptr"], reader.alloc_table["size"]
    assert np.all(ptr // reader.page_size == (ptr + size - 1) // reader.page_size)
    loader = Loader(str(tmp_path / "1.beton"), batch_size=100, num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()], "index": [IntDecoder()]})
    decoded = np.concatenate([batch[0].copy() for batch in loader])
    assert np.abs(decoded.astype(np.int64) - images).mean() < 2


@pytest.mark.parametrize("target", ["train.beton", "meta.json"])
def test_full_disk_is_one_line_and_leaves_no_temporaries(tmp_path, target):
    out = tmp_path / "data"
    out.mkdir()
    # /dev/full fails every write with ENOSPC: the temporary file this process would write goes there.
    (out / f".{target}.{os.getpid()}.tmp").symlink_to("/dev/full")
    with pytest.raises(UserError, match=rf"^no space left on device writing {out / target}: free space or choose "
                                        r"another --out$"):
        convert(ConvertConfig("cifar10", SAMPLE_SOURCE, out, progress=False))
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    assert not (out / "meta.json").exists()
