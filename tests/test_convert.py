"""Conversion of the real CIFAR-10, meta.json, atomicity under kill and Ctrl-C, overwrite rules."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fasttarget.convert as convert_module
from fasttarget.convert import ConvertConfig, channel_histogram, convert, fingerprint, mean_std, pixel_settings, \
    write_split
from fasttarget.dataset import DatasetMeta, check_dataset, read_split
from fasttarget.demo import SAMPLE_SOURCE
from fasttarget.errors import UserError
from fasttarget.sources import Split
from fasttarget.threads import kept_threads


def _source_records(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and ``[N,32,32,3]`` pixels parsed straight from CIFAR binary records (independent of fasttarget)."""
    raw = np.concatenate([np.fromfile(folder / n, np.uint8).reshape(-1, 3073) for n in names])
    return raw[:, 0].astype(np.int64), raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def test_real_cifar10_is_byte_identical_to_source(cifar10_dir, full_cifar10_source):
    meta = DatasetMeta.load(cifar10_dir)
    assert (meta.count("train"), meta.count("test")) == (50_000, 10_000)
    assert meta.splits["train"].class_counts == (5000,) * 10
    assert meta.splits["test"].class_counts == (1000,) * 10
    assert meta.classes[0] == "airplane" and meta.classes[9] == "truck"
    assert (meta.encoding, meta.image_shape) == ("raw", (32, 32, 3))
    # The published CIFAR-10 statistics.
    np.testing.assert_allclose(meta.mean, (0.4914, 0.4822, 0.4465), atol=1e-4)
    np.testing.assert_allclose(meta.std, (0.2470, 0.2435, 0.2616), atol=1e-4)

    rng = np.random.default_rng(0)
    for split, names in (("train", [f"data_batch_{i}.bin" for i in range(1, 6)]), ("test", ["test_batch.bin"])):
        want_labels, want_images = _source_records(full_cifar10_source, names)
        images, labels = read_split(cifar10_dir, split)
        assert np.bincount(labels).tolist() == list(meta.splits[split].class_counts)
        np.testing.assert_array_equal(labels, want_labels)
        rows = rng.choice(len(labels), 200 if split == "train" else 100, replace=False)
        for i in rows:
            assert images[i].tobytes() == want_images[i].tobytes(), f"{split} image {i} differs from its source record"


def test_meta_json_follows_the_contract(cifar10_dir):
    d = json.loads((cifar10_dir / "meta.json").read_text())
    assert list(d) == ["format_version", "dataset", "classes", "num_classes", "image_shape", "encoding",
                       "jpeg_quality", "max_side", "compress_probability", "splits", "mean", "std", "fingerprint",
                       "source", "extra"]
    assert d["max_side"] is None and d["compress_probability"] is None
    assert d["format_version"] == 1 and d["num_classes"] == 10 and d["jpeg_quality"] is None
    train = (cifar10_dir / "train.beton").stat().st_size
    assert d["splits"]["train"] == {"file": "train.beton", "count": 50000, "class_counts": [5000] * 10, "skipped": 0,
                                    "size": train, "sha256": d["splits"]["train"]["sha256"]}
    assert len(d["splits"]["train"]["sha256"]) == 64 and int(d["splits"]["train"]["sha256"], 16) >= 0
    assert d["source"]["layout"] == "cifar-10-batches-bin"
    assert len(d["fingerprint"]) == 64 and int(d["fingerprint"], 16) >= 0
    assert check_dataset(cifar10_dir) == DatasetMeta.from_dict(d)


def test_fingerprint_changes_with_labels_and_pixels():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (100, 4, 4, 3), dtype=np.uint8), rng.integers(0, 10, 100)
    settings = pixel_settings("raw", None, None, (0.5,) * 3, (0.25,) * 3)
    base = fingerprint({"train": Split(labels, images=images)}, settings)
    assert base == fingerprint({"train": Split(labels.copy(), images=images.copy())}, settings)
    relabelled = labels.copy()
    relabelled[50] = (relabelled[50] + 1) % 10
    assert fingerprint({"train": Split(relabelled, images=images)}, settings) != base
    touched = images.copy()
    touched[0, 0, 0, 0] ^= 1  # the first sample is always among the sampled ones
    assert fingerprint({"train": Split(labels, images=touched)}, settings) != base


def test_mean_std_from_histogram_matches_numpy():
    images = np.random.default_rng(1).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    mean, std = mean_std(channel_histogram(images))
    x = images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-6)
    np.testing.assert_allclose(std, x.std(0), atol=1e-6)


def test_write_split_rejects_non_uint8_before_spawning_workers(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_split(tmp_path / "x.beton", np.zeros((2, 8, 8, 3), np.float32), np.zeros(2), progress=False)
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        write_split(tmp_path / "x.beton", np.zeros((2, 8, 8, 3), np.uint8), np.zeros(3), progress=False)


def _sample_config(out: Path, **kw) -> ConvertConfig:
    return ConvertConfig("cifar10", SAMPLE_SOURCE, out, progress=False, **kw)


def test_proportion_mode_stores_a_seeded_share_as_jpeg_reproducibly(tmp_path):
    """FFCV's proportion mode, written twice from variable-size images: the same bytes, about the
    asked share of JPEG rows, and every image stored at its own size."""
    with kept_threads():
        from ffcv.reader import Reader

    from fasttarget.decode import stored_sizes

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)
              for h, w in rng.integers(20, 90, (200, 2))]
    labels = np.arange(200) % 3
    paths = [tmp_path / f"{i}.beton" for i in range(2)]
    for path, workers in zip(paths, (1, 2)):
        write_split(path, images, labels, encoding="proportion", compress_probability=0.3, num_workers=workers,
                    progress=False)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    modes = Reader(str(paths[0])).metadata["f0"]["mode"]
    assert 0.2 < (modes == 0).mean() < 0.4  # IMAGE_MODES: jpg 0, raw 1
    assert stored_sizes(paths[0]).tolist() == [list(im.shape[:2]) for im in images]


def test_existing_output_needs_force_and_check_detects_tampering(sample_dir, tmp_path):
    with pytest.raises(UserError, match=r"already holds meta\.json, train\.beton, test\.beton: pass --force"):
        convert(_sample_config(sample_dir))
    copy = tmp_path / "copy"
    shutil.copytree(sample_dir, copy)
    d = json.loads((copy / "meta.json").read_text())
    d["splits"]["test"]["count"] = 999
    (copy / "meta.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match=r"test\.beton holds 1000 samples, meta\.json says 999"):
        check_dataset(copy)
    (copy / "train.beton").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"train\.beton is 7 bytes, meta\.json records \d+ \(truncated or changed"):
        check_dataset(copy)
    d["splits"]["test"]["count"] = 1000
    del d["splits"]["train"]["size"]  # as in a dataset converted before sizes were recorded
    (copy / "meta.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match=r"train\.beton does not open as a beton"):
        check_dataset(copy)
    (copy / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match=r"malformed.*fasttarget convert"):
        DatasetMeta.load(copy)


def test_interrupted_force_leaves_previous_dataset_intact(sample_dir, tmp_path, monkeypatch):
    out = tmp_path / "data"
    shutil.copytree(sample_dir, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    real_write = convert_module.write_split

    def interrupted(path, *args, desc, **kwargs):
        if desc == "write test":
            raise KeyboardInterrupt
        real_write(path, *args, desc=desc, **kwargs)

    monkeypatch.setattr(convert_module, "write_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(_sample_config(out, force=True))
    # The old files are untouched and the half-done new ones are gone.
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    check_dataset(out)


_CONVERT_SCRIPT = """
import signal, sys
from pathlib import Path
# A shell that starts jobs in the background makes them ignore SIGINT; a terminal's Ctrl-C does not.
signal.signal(signal.SIGINT, signal.default_int_handler)
from fasttarget.convert import ConvertConfig, convert
convert(ConvertConfig("cifar10", Path(sys.argv[1]), Path(sys.argv[2]), progress=False))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_interrupted_conversion_leaves_no_train_beton_and_rerun_completes(full_cifar10_source, tmp_path, sig):
    out = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-c", _CONVERT_SCRIPT, str(full_cifar10_source), str(out)],
                            start_new_session=True, stderr=subprocess.PIPE)
    temporary = out / f".train.beton.{proc.pid}.tmp"
    deadline = time.monotonic() + 300
    # Wait until the writer processes are filling the train beton, then signal the whole group as a terminal would.
    while not (temporary.exists() and temporary.stat().st_size > 4 << 20):
        assert proc.poll() is None, f"conversion ended before it could be stopped: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "the conversion never started writing"
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    proc.communicate(timeout=120)  # a hang here is the failure DatasetWriter alone has on Ctrl-C
    assert not (out / "train.beton").exists()
    assert not (out / "meta.json").exists()
    if sig == signal.SIGINT:
        assert proc.returncode != 0
        assert list(out.iterdir()) == [], "Ctrl-C should remove the temporary files"
        return

    meta = convert(ConvertConfig("cifar10", full_cifar10_source, out, progress=False))
    assert meta.count("train") == 50_000
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "test.beton", "train.beton"]
    check_dataset(out)


class _FailingImages:
    """A sequence whose fifth item cannot be produced, like a file that broke after the up-front check."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> np.ndarray:
        if i == 5:
            raise OSError("image 5 vanished")
        return np.zeros((8, 8, 3), np.uint8)


def test_failing_sample_stops_the_writer_instead_of_hanging(tmp_path):
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="beton writer failed"):
        write_split(tmp_path / "x.beton", _FailingImages(), np.zeros(40), num_workers=2, progress=False)
    assert time.monotonic() - start < 60
