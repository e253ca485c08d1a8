"""The convert / inspect / demo commands: exit codes, one-line errors, output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_console_script_reports_user_errors_without_traceback(tmp_path, record_bad_input):
    exe = Path(sys.executable).with_name("fasttarget")
    args = ["convert", "cifar10", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]
    result = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)
    record_bad_input("source folder missing (console script)", args, result.returncode, result.stderr,
                     "missing", "does not exist", "--source")


@pytest.mark.parametrize("command", ["convert", "inspect", "demo"])
def test_help_for_every_command(command, run_cli):
    code, out, _ = run_cli(command, "--help")
    assert code == 0 and "Usage" in out


def test_convert_errors_are_one_line_exit_2(tmp_path, sample_dir, user_error):
    from fasttarget.demo import SAMPLE_SOURCE

    user_error("unknown dataset", "convert", "mnist", "--source", SAMPLE_SOURCE, "--out", tmp_path / "o",
               expect=("unknown dataset 'mnist'", "cifar10"))
    user_error("--out holds a dataset already", "convert", "cifar10", "--source", SAMPLE_SOURCE, "--out", sample_dir,
               expect=(str(sample_dir), "--force"))
    user_error("--jpeg-quality 0", "convert", "cifar10", "--source", SAMPLE_SOURCE, "--out", tmp_path / "o", "--jpeg-quality", "0",
               expect="--jpeg-quality must be in 1..100")
    user_error("--download for tinyimagenet", "convert", "tinyimagenet", "--source", SAMPLE_SOURCE,
               "--out", tmp_path / "o", "--download", expect="--download supports cifar10 and cifar100")


def test_inspect_prints_summary_and_subset(sample_dir, run_cli, user_error):
    code, out, _ = run_cli("inspect", sample_dir, "--ipc", "20", "--subset-seed", "1")
    assert code == 0
    assert "train       5000 samples (500 per class)" in out
    assert "test        1000 samples (100 per class)" in out
    assert "subset      ipc20-seed1: 200 train samples (20..20 per class)" in out
    user_error("--ipc above the class size", "inspect", sample_dir, "--ipc", "501",
               expect="fewer than --ipc 501")
    user_error("--ipc with --fraction", "inspect", sample_dir, "--ipc", "5", "--fraction", "0.5",
               expect="exclude each other")


def test_inspect_fails_on_a_damaged_dataset(sample_dir, tmp_path, user_error):
    user_error("folder without meta.json", "inspect", tmp_path,
               expect=("no meta.json", "fasttarget convert"))
    copy = tmp_path / "copy"
    shutil.copytree(sample_dir, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["splits"]["train"]["class_counts"][0] += 1
    (copy / "meta.json").write_text(json.dumps(meta))
    user_error("class counts differ from meta.json", "inspect", copy,
               expect="train.beton has class counts")
    shutil.copy(sample_dir / "meta.json", copy / "meta.json")
    (copy / "test.beton").unlink()
    user_error("test.beton missing", "inspect", copy,
               expect="test.beton is missing")


def test_convert_then_demo_reuses_converted_sample(tmp_path, run_cli, user_error):
    out = tmp_path / "demo"
    code, stdout, _ = run_cli("demo", "--out", out, "--no-progress", "--until", "inspect")
    assert code == 0
    assert "train       5000 samples" in stdout and f"inspect: {out / 'data'} OK" in stdout
    first = (out / "data" / "train.beton").stat().st_mtime_ns
    code, stdout, _ = run_cli("demo", "--out", out, "--no-progress", "--until", "inspect")
    assert code == 0 and "reusing it" in stdout
    assert (out / "data" / "train.beton").stat().st_mtime_ns == first
    user_error("demo --source missing", "demo", "--out", out, "--source", tmp_path / "nope",
               expect=("demo data not found", "--source"))


def test_inspect_verifies_checksums_and_quick_skips_them(sample_dir, tmp_path, run_cli, user_error):
    code, out, _ = run_cli("inspect", sample_dir)
    assert code == 0 and "checksum    train.beton: sha256 verified" in out
    copy = tmp_path / "copy"
    shutil.copytree(sample_dir, copy)
    beton = copy / "train.beton"
    with open(beton, "r+b") as fh:  # one flipped bit in the image data
        fh.seek(beton.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 1]))
    user_error("one flipped bit in train.beton", "inspect", copy,
               expect=(f"{beton} does not match the SHA-256 meta.json records", "--force"))
    code, out, _ = run_cli("inspect", copy, "--quick")
    assert code == 0 and "checksum    train.beton: sha256 not checked (--quick)" in out
    meta = json.loads((copy / "meta.json").read_text())
    for info in meta["splits"].values():
        del info["size"], info["sha256"]
    (copy / "meta.json").write_text(json.dumps(meta))
    code, out, _ = run_cli("inspect", copy)
    assert code == 0 and "checksum    train.beton: no checksum recorded" in out


def test_inspect_names_a_truncated_beton(sample_dir, tmp_path, user_error):
    copy = tmp_path / "copy"
    shutil.copytree(sample_dir, copy)
    with open(copy / "test.beton", "r+b") as fh:
        fh.truncate(1 << 20)
    user_error("test.beton truncated (inspect --quick)", "inspect", copy, "--quick",
               expect=(f"{copy / 'test.beton'} is 1048576 bytes, meta.json records", "--force"))


def test_convert_on_a_full_disk_is_one_line(tmp_path, user_error):
    import os

    from fasttarget.demo import SAMPLE_SOURCE

    out = tmp_path / "o"
    out.mkdir()
    (out / f".train.beton.{os.getpid()}.tmp").symlink_to("/dev/full")  # every write fails with ENOSPC
    user_error("disk full during convert", "convert", "cifar10", "--source", SAMPLE_SOURCE, "--out", out,
               "--no-progress", expect=f"no space left on device writing {out / 'train.beton'}: free space or "
                                       "choose another --out")
    assert list(out.iterdir()) == []


def test_train_on_a_truncated_beton_is_one_line(sample_dir, tmp_path, user_error):
    copy = tmp_path / "copy"
    shutil.copytree(sample_dir, copy)
    with open(copy / "train.beton", "r+b") as fh:
        fh.truncate(3 << 20)
    user_error("train.beton truncated (train)", "train", "--data", copy, "--strategy", "A", "--out", tmp_path / "run",
               "--steps", "1", "--device", "cpu", "--no-progress",
               expect=(f"{copy / 'train.beton'} is 3145728 bytes, meta.json records",
                       "fasttarget convert cifar10 --source", f"--out {copy} --force"))
