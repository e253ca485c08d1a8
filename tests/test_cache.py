"""The Strategy C logits cache: build (via the CLI), layout, memmap reads, refusals, atomicity."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch
from test_targets import cifar1k_dir, normalize, save_teacher  # noqa: F401 (cifar1k_dir is a fixture)

import fasttarget.cache
import fasttarget.dataset
import fasttarget.loader
from fasttarget.cache import (
    CACHE_FORMAT,
    FORMAT_VERSION,
    CacheBuildConfig,
    CacheForm,
    TargetCache,
    _resumable_rows,
    build_cache,
    partial_path,
    stored_rows,
    verified_path,
)
from fasttarget.cli import main
from fasttarget.dataset import DatasetMeta, read_split
from fasttarget.errors import UserError
from fasttarget.models import file_sha256, load_classifier

BUILD_BATCH = 64
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``fasttarget ARGS`` in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["fasttarget", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


@pytest.fixture(scope="module")
def built(cifar1k_dir, tmp_path_factory):
    """A float16 cache of 1,000 real CIFAR-10 images, built by ``fasttarget cache build``."""
    sample_dir = cifar1k_dir
    root = tmp_path_factory.mktemp("cache")
    meta = DatasetMeta.load(sample_dir)
    teacher = save_teacher(root / "teacher.pt", meta)
    out = root / "targets.h5"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["fasttarget", "cache", "build", "--data", str(sample_dir), "--teacher", str(teacher),
                                 "--out", str(out), "--batch-size", "256", "--device", "cpu"])
        with pytest.raises(SystemExit) as exit_info:
            main()
    assert not exit_info.value.code
    return sample_dir, meta, teacher, out


def teacher_logits(sample_dir, meta, teacher) -> np.ndarray:
    """A fresh float32 pass of the teacher over every original train image, in index order."""
    images = torch.from_numpy(read_split(sample_dir, "train")[0]).permute(0, 3, 1, 2).float().div(255)
    net, _ = load_classifier(teacher)
    with torch.no_grad():
        return net(normalize(images, meta.mean, meta.std)).numpy()


def test_build_writes_a_contiguous_cache_with_its_provenance(built):
    sample_dir, meta, teacher, out = built
    cache = TargetCache.open(out, expected_fingerprint=meta.fingerprint, num_classes=meta.num_classes,
                             teacher_sha256=file_sha256(teacher))
    assert (cache.num_samples, cache.num_classes) == (meta.count("train"), meta.num_classes)
    assert cache.logits.dtype == np.float16 and isinstance(cache.logits, np.memmap)
    attrs = cache.attrs
    assert attrs["format_version"] == FORMAT_VERSION and attrs["split"] == "train"
    assert attrs["teacher_sha256"] == file_sha256(teacher) and attrs["teacher_test_accuracy"] == pytest.approx(0.1)
    assert attrs["dataset_fingerprint"] == meta.fingerprint and attrs["num_classes"] == meta.num_classes
    assert attrs["temperature"] == 2.0 and attrs["dtype"] == "float16" and attrs["created"].endswith("Z")
    assert "rows_done" not in attrs and not partial_path(out).exists()
    assert cache.verify()
    with h5py.File(out, "r") as f:
        assert f["logits"].chunks is None and f["logits"].compression is None


def test_rows_equal_a_fresh_teacher_pass_over_the_originals(built):
    sample_dir, meta, teacher, out = built
    expected = teacher_logits(sample_dir, meta, teacher)
    cache = TargetCache.open(out)
    # Row i is sample i, to float16 precision (|logit| < 8: half-ulp ≤ 2^-8).
    np.testing.assert_allclose(cache.logits.astype(np.float32), expected, atol=4e-3, rtol=1e-3)


def test_memmap_gather_equals_h5py_reads(built):
    out = built[3]
    cache = TargetCache.open(out)
    indices = torch.randint(0, cache.num_samples, (300,), generator=torch.Generator().manual_seed(0))
    got = cache.gather(indices, "cpu")
    with h5py.File(out, "r") as f:
        unique, inverse = np.unique(indices.numpy(), return_inverse=True)
        expected = f["logits"][unique][inverse]  # h5py fancy indexing wants sorted, unique indices
    assert got.dtype == torch.float16 and got.shape == (300, cache.num_classes)
    np.testing.assert_array_equal(got.numpy(), expected)
    with pytest.raises(IndexError):
        cache.gather(torch.tensor([cache.num_samples]))


@pytest.mark.parametrize("mismatch", ["fingerprint", "num_classes", "teacher"])
def test_open_refuses_a_cache_made_for_something_else(built, mismatch, tmp_path):
    sample_dir, meta, teacher, out = built
    expect = {"expected_fingerprint": meta.fingerprint, "num_classes": meta.num_classes,
              "teacher_sha256": file_sha256(teacher)}
    if mismatch == "fingerprint":
        expect["expected_fingerprint"] = "0" * 64
        named = "dataset fingerprint"
    elif mismatch == "num_classes":
        expect["num_classes"] = 100
        named = "number of classes is 10, expected 100"
    else:
        expect["teacher_sha256"] = file_sha256(save_teacher(tmp_path / "other.pt", meta, seed=1))
        named = "teacher SHA-256"
    with pytest.raises(UserError, match=named) as err:
        TargetCache.open(out, **expect)
    assert "fasttarget cache build" in str(err.value)


def test_open_refuses_missing_unfinished_and_foreign_files(built, tmp_path):
    out = built[3]
    with pytest.raises(UserError, match="does not exist"):
        TargetCache.open(tmp_path / "none.h5")
    partial_path(tmp_path / "half.h5").write_bytes(b"")
    with pytest.raises(UserError, match="not finished"):
        TargetCache.open(tmp_path / "half.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(UserError, match="not a readable HDF5"):
        TargetCache.open(tmp_path / "text.h5")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["logits"] = np.zeros((4, 10), np.float16)
    with pytest.raises(UserError, match="not a fasttarget target cache"):
        TargetCache.open(tmp_path / "plain.h5")
    with h5py.File(out, "r") as src, h5py.File(tmp_path / "chunked.h5", "w") as f:
        f.create_dataset("logits", data=src["logits"][:], chunks=(16, 10), compression="gzip")
        f.attrs.update(src.attrs)
    with pytest.raises(UserError, match="cannot be memory-mapped"):
        TargetCache.open(tmp_path / "chunked.h5")


def flip_logit_byte(path) -> None:
    """Flip one bit of one stored logit, in place."""
    offset = TargetCache.open(path, verify=False).logits.offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 7)
        byte = fh.read(1)
        fh.seek(offset + 7)
        fh.write(bytes([byte[0] ^ 0x40]))


def test_corrupted_logits_are_refused_on_open_and_by_inspect(built, tmp_path, monkeypatch, capsys):
    sample_dir, _, teacher, out = built
    code, stdout, _ = run_cli(monkeypatch, capsys, "cache", "inspect", out, "--data", sample_dir, "--teacher", teacher)
    assert code == 0 and "checksum: ok" in stdout and "teacher_sha256" in stdout
    bad = shutil.copy(out, tmp_path / "bad.h5")
    flip_logit_byte(bad)
    assert not TargetCache.open(bad, verify=False).verify()
    with pytest.raises(UserError, match="checksum does not match.*fasttarget cache build"):
        TargetCache.open(bad)  # what build_targets, and so `fasttarget train --strategy C`, calls
    code, _, stderr = run_cli(monkeypatch, capsys, "cache", "inspect", bad)
    assert code == 2 and stderr.count("\n") == 1 and "checksum does not match" in stderr


def test_a_verification_is_recorded_and_a_changed_file_is_hashed_again(built, tmp_path, monkeypatch):
    sample_dir, _, teacher, _ = built
    out = tmp_path / "targets.h5"
    build_cache(CacheBuildConfig(sample_dir, teacher, out, batch_size=BUILD_BATCH, progress=False))
    assert verified_path(out).is_file()  # the build hashed what it wrote
    hashed = []
    real_sha256_rows = fasttarget.cache._sha256_rows
    monkeypatch.setattr(fasttarget.cache, "_sha256_rows", lambda a: hashed.append(1) or real_sha256_rows(a))

    TargetCache.open(out)
    assert len(hashed) == 1  # recorded less than RECORD_MARGIN_NS after the file changed: not trusted yet
    monkeypatch.setattr(fasttarget.cache, "RECORD_MARGIN_NS", 0)  # as if that record were old
    TargetCache.open(out)
    TargetCache.open(out)
    assert len(hashed) == 1  # the record answered
    assert TargetCache.open(out, verify=False).verify() and len(hashed) == 2  # an explicit verify hashes

    moved = tmp_path / "copy"  # copied along with its record (times kept): another file, hashed again
    moved.mkdir()
    shutil.copy2(verified_path(out), verified_path(moved / out.name))
    shutil.copy2(out, moved / out.name)
    TargetCache.open(moved / out.name)
    assert len(hashed) == 3

    flip_logit_byte(out)  # in place: same size and inode, new mtime/ctime
    with pytest.raises(UserError, match="checksum does not match"):
        TargetCache.open(out)
    assert len(hashed) == 4 and not verified_path(out).exists()


def test_a_write_right_after_a_verification_is_not_missed(built, tmp_path):
    """A flip within the file system's timestamp tick of the build leaves the times as recorded."""
    sample_dir, _, teacher, _ = built
    out = tmp_path / "targets.h5"
    build_cache(CacheBuildConfig(sample_dir, teacher, out, batch_size=BUILD_BATCH, progress=False))
    flip_logit_byte(out)
    with pytest.raises(UserError, match="checksum does not match"):
        TargetCache.open(out)


def test_cli_refusals_are_one_line_exit_2(built, tmp_path, monkeypatch, capsys):
    sample_dir, meta, _, out = built
    other = save_teacher(tmp_path / "other.pt", meta, seed=2)
    code, _, stderr = run_cli(monkeypatch, capsys, "cache", "inspect", out, "--teacher", other)
    assert code == 2 and stderr.count("\n") == 1 and "teacher SHA-256" in stderr
    wrong_k = save_teacher(tmp_path / "k5.pt", meta, num_classes=5)
    code, _, stderr = run_cli(monkeypatch, capsys, "cache", "build", "--data", sample_dir, "--teacher", wrong_k,
                              "--out", tmp_path / "x.h5")
    assert code == 2 and stderr.count("\n") == 1 and "predicts 5 classes" in stderr
    code, _, stderr = run_cli(monkeypatch, capsys, "cache", "build", "--data", sample_dir, "--teacher", other,
                              "--out", tmp_path / "x.h5", "--dtype", "int8")
    assert code == 2 and "--dtype" in stderr
    assert not (tmp_path / "x.h5").exists()


# Kills its own process (SIGKILL: no cleanup, like a power cut or an OOM kill) during the 4th teacher forward.
_KILLED_BUILD = """
import os, signal
from fasttarget import targets
from fasttarget.cache import CacheBuildConfig, build_cache
forward = targets.TeacherModel.__call__
calls = []
def dying(self, images):
    calls.append(1)
    if len(calls) == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return forward(self, images)
targets.TeacherModel.__call__ = dying
build_cache(CacheBuildConfig({data!r}, {teacher!r}, {out!r}, batch_size={batch}, progress=False))
"""


def test_interrupted_build_leaves_nothing_complete_and_rerun_finishes(built, tmp_path):
    sample_dir, meta, teacher, _ = built
    out = tmp_path / "targets.h5"
    script = _KILLED_BUILD.format(data=str(sample_dir), teacher=str(teacher), out=str(out), batch=BUILD_BATCH)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(UserError, match="not finished"):
        TargetCache.open(out)
    report = build_cache(CacheBuildConfig(sample_dir, teacher, out, batch_size=BUILD_BATCH, progress=False))
    assert report.rows_resumed == 3 * BUILD_BATCH and report.rows == meta.count("train")
    assert not partial_path(out).exists()
    cache = TargetCache.open(out, expected_fingerprint=meta.fingerprint, teacher_sha256=file_sha256(teacher))
    assert cache.verify()
    # Same rows as the uninterrupted build (other batch size: equal to float16 rounding).
    uninterrupted = TargetCache.open(built[3]).logits.astype(np.float32)
    np.testing.assert_allclose(cache.logits.astype(np.float32), uninterrupted, atol=4e-3, rtol=1e-3)


# Builds like the CLI, but waits before its 2nd teacher forward until the test creates RELEASE.
_WAITING_BUILD = """
import pathlib, time
from fasttarget import targets
from fasttarget.cache import CacheBuildConfig, build_cache
forward = targets.TeacherModel.__call__
calls = []
def waiting(self, images):
    calls.append(1)
    if len(calls) == 2:
        print("building", flush=True)
        while not pathlib.Path({release!r}).exists():
            time.sleep(0.02)
    return forward(self, images)
targets.TeacherModel.__call__ = waiting
build_cache(CacheBuildConfig({data!r}, {teacher!r}, {out!r}, batch_size={batch}, progress=False))
"""


def test_a_second_build_of_the_same_file_refuses_at_once(built, tmp_path, monkeypatch, capsys):
    sample_dir, meta, teacher, _ = built
    out, release = tmp_path / "targets.h5", tmp_path / "release"
    script = _WAITING_BUILD.format(data=str(sample_dir), teacher=str(teacher), out=str(out), batch=BUILD_BATCH,
                                   release=str(release))
    first = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "building\n"
        code, _, stderr = run_cli(monkeypatch, capsys, "cache", "build", "--data", sample_dir, "--teacher", teacher,
                                  "--out", out, "--device", "cpu")
    finally:
        release.touch()
        first.communicate(timeout=300)
    assert code == 2 and stderr == (f"error: another fasttarget cache build is writing {out} (pid {first.pid}): "
                                    "wait for it or choose another --out\n")
    assert first.returncode == 0  # the first build was not disturbed
    cache = TargetCache.open(out, expected_fingerprint=meta.fingerprint, teacher_sha256=file_sha256(teacher))
    assert cache.num_samples == meta.count("train")
    assert not out.with_name(out.name + ".lock").exists() and not partial_path(out).exists()


def test_only_a_partial_of_the_same_build_is_resumed(tmp_path):
    identity = {"teacher_sha256": "a" * 64, "dataset_fingerprint": "b" * 64, "split": "train",
                "num_classes": 10, "num_samples": 100, "dtype": "float16"}
    partial = tmp_path / "t.h5.partial"

    def write_partial(**changes):
        with h5py.File(partial, "w") as f:
            f.create_dataset("logits", shape=(100, 10), dtype="float16")
            f.attrs.update({**identity, **changes, "rows_done": 64})

    tables = {"logits": ((100, 10), "float16")}
    write_partial()
    assert _resumable_rows(partial, identity, tables) == 64 and partial.exists()
    for changes in ({"teacher_sha256": "c" * 64}, {"dtype": "float32"}, {"num_samples": 99}):
        write_partial(**changes)
        assert _resumable_rows(partial, identity, tables) == 0 and not partial.exists()
    write_partial()  # the same attributes, but a top-k build's tables
    assert _resumable_rows(partial, identity, {"topk_logits": ((100, 4), "float16")}) == 0 and not partial.exists()
    partial.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)  # a header cut short by a kill
    assert _resumable_rows(partial, identity, tables) == 0 and not partial.exists()


def test_build_config_validates():
    with pytest.raises(UserError, match="--batch-size"):
        CacheBuildConfig("d", "t.pt", "o.h5", batch_size=0)
    with pytest.raises(UserError, match="--temperature"):
        CacheBuildConfig("d", "t.pt", "o.h5", temperature=-1.0)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("device_table", [True, False], ids=["device-table", "pinned-copy"])
def test_cuda_gather_equals_host_gather(tmp_path, monkeypatch, device_table):
    """Both CUDA paths (the table copied to the GPU; rows gathered into alternating pinned buffers
    and copied without blocking) give the host's rows, also when results are held across calls."""
    logits = np.random.default_rng(0).standard_normal((5000, 10)).astype(np.float16)
    with h5py.File(tmp_path / "t.h5", "w") as f:  # a hand-made cache: no ffcv on some GPU machines
        f["logits"] = logits
        f.attrs.update({"format": CACHE_FORMAT, "format_version": FORMAT_VERSION,
                        "logits_sha256": hashlib.sha256(logits.tobytes()).hexdigest()})
    if not device_table:
        monkeypatch.setattr(fasttarget.cache, "DEVICE_TABLE_BYTES", 0)
    cache = TargetCache.open(tmp_path / "t.h5")
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 5000, (n,), generator=generator) for n in (128, 128, 64, 256, 128)]
    held = [(rows, cache.gather(rows.cuda(), "cuda"), cache.gather(rows, "cuda")) for rows in batches]
    for rows, from_cuda_rows, from_host_rows in held:
        assert from_cuda_rows.is_cuda and from_host_rows.is_cuda
        np.testing.assert_array_equal(from_cuda_rows.cpu().numpy(), logits[rows.numpy()])
        np.testing.assert_array_equal(from_host_rows.cpu().numpy(), logits[rows.numpy()])


@pytest.fixture(scope="module")
def built_topk(built, tmp_path_factory):
    """A top-3 float32 cache of the same images and teacher, built by the CLI while the
    whole-split readers raise: the build streams."""
    sample_dir, meta, teacher, _ = built
    out = tmp_path_factory.mktemp("cache-topk") / "top3.h5"

    def whole_split(*args, **kwargs):
        raise AssertionError("cache build read the whole split into memory")

    with pytest.MonkeyPatch.context() as mp:
        for module in (fasttarget.dataset, fasttarget.loader):
            mp.setattr(module, "read_split", whole_split)
        mp.setattr(sys, "argv", ["fasttarget", "cache", "build", "--data", str(sample_dir), "--teacher", str(teacher),
                                 "--out", str(out), "--batch-size", "256", "--device", "cpu", "--top-k", "3",
                                 "--dtype", "float32", "--temperature", "4"])
        with pytest.raises(SystemExit) as exit_info:
            main()
    assert not exit_info.value.code
    return out


def test_top_k_cache_holds_the_largest_logits_their_classes_and_the_tail(built, built_topk):
    sample_dir, meta, teacher, _ = built
    cache = TargetCache.open(built_topk, expected_fingerprint=meta.fingerprint, num_classes=meta.num_classes,
                             form=CacheForm(top_k=3, dtype="float32"))
    assert cache.form == CacheForm(3, "float32") and cache.num_classes == meta.num_classes
    assert cache.logits.shape == (meta.count("train"), 4) and cache.classes.shape == (meta.count("train"), 3)
    assert cache.classes.dtype == np.int16 and cache.logits.dtype == np.float32
    assert cache.attrs["form"] == "top-k" and cache.attrs["top_k"] == 3 and cache.attrs["temperature"] == 4.0
    full = teacher_logits(sample_dir, meta, teacher)
    order = np.argsort(-full, axis=1)[:, :3]
    np.testing.assert_array_equal(cache.classes, order)
    np.testing.assert_allclose(cache.logits[:, :3], np.take_along_axis(full, order, 1), atol=1e-4, rtol=1e-4)
    rest = full.copy()
    np.put_along_axis(rest, order, -np.inf, 1)
    tail = 4.0 * (np.log(np.exp(rest / 4.0).sum(1)) - np.log(meta.num_classes - 3))
    np.testing.assert_allclose(cache.logits[:, 3], tail, atol=1e-4, rtol=1e-4)
    rows = np.array([5, 0, 999, 5])
    np.testing.assert_array_equal(cache.gather(rows).numpy(), cache.logits[rows])
    np.testing.assert_array_equal(cache.gather_classes(torch.from_numpy(rows)).numpy(), cache.classes[rows])
    with pytest.raises(IndexError):
        cache.gather_classes(np.array([cache.num_samples]))
    assert cache.verify()


def test_a_cache_of_another_form_or_a_corrupted_k_is_refused(built, built_topk, tmp_path):
    full = built[3]
    with pytest.raises(UserError, match=r"holds top-3 float32 logits, expected full float16: rebuild it with "
                                        r"`fasttarget cache build .* --dtype float16`$"):
        TargetCache.open(built_topk, form=CacheForm())
    with pytest.raises(UserError, match=r"holds full float16 logits, expected top-5 float16: .* --top-k 5`$"):
        TargetCache.open(full, form=CacheForm(top_k=5))
    corrupted = tmp_path / "k.h5"
    shutil.copy(built_topk, corrupted)
    with h5py.File(corrupted, "r+") as f:
        f.attrs["top_k"] = 4
    with pytest.raises(UserError, match=r"attributes say top-4 of 10 classes but its tables are 1000x4 logits and "
                                        r"1000x3 classes \(corrupted\)"):
        TargetCache.open(corrupted)
    with h5py.File(corrupted, "r+") as f:
        f.attrs["top_k"], f.attrs["form"] = 3, "full"
    with pytest.raises(UserError, match="attributes say form 'full' but it holds tables"):
        TargetCache.open(corrupted)


def test_top_k_must_leave_classes_out_and_be_positive(built):
    sample_dir, _, teacher, _ = built
    with pytest.raises(UserError, match="--top-k 10 keeps every one of the 10 classes"):
        build_cache(CacheBuildConfig(sample_dir, teacher, sample_dir / "never.h5", top_k=10))
    with pytest.raises(UserError, match="--top-k must be at least 1"):
        CacheBuildConfig(sample_dir, teacher, "o.h5", top_k=0)


def test_a_version_1_cache_opens_as_the_full_form(tmp_path):
    """Caches written before the top-k form (no form attributes) keep working."""
    logits = np.random.default_rng(0).standard_normal((50, 10)).astype(np.float16)
    with h5py.File(tmp_path / "v1.h5", "w") as f:
        f["logits"] = logits
        f.attrs.update({"format": CACHE_FORMAT, "format_version": 1, "dtype": "float16",
                        "logits_sha256": hashlib.sha256(logits.tobytes()).hexdigest()})
    cache = TargetCache.open(tmp_path / "v1.h5", form=CacheForm())
    assert cache.form == CacheForm() and cache.num_classes == 10
    np.testing.assert_array_equal(cache.gather([3, 1]).numpy(), logits[[3, 1]])


def test_stored_rows_keep_classes_in_int16_up_to_32768():
    logits = torch.randn(2, 40_000)
    values, classes = stored_rows(logits, CacheForm(top_k=2), 2.0)
    assert classes.dtype == torch.int32 and values.dtype == torch.float16 and values.shape == (2, 3)
    assert stored_rows(logits[:, :1000], CacheForm(top_k=2), 2.0)[1].dtype == torch.int16
