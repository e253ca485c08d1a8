"""The convert / inspect / demo commands: exit codes, one-line errors, output."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fasttarget.cli import main


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run the ``fasttarget`` entry point in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["fasttarget", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


def test_console_script_reports_user_errors_without_traceback(tmp_path):
    exe = Path(sys.executable).with_name("fasttarget")
    result = subprocess.run([str(exe), "convert", "cifar10", "--source", str(tmp_path / "missing"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert_one_line_error(result.returncode, result.stderr, "missing", "does not exist", "--source")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["convert", "inspect", "demo"])
def test_help_for_every_command(command, monkeypatch, capsys):
    code, out, _ = run_cli([command, "--help"], monkeypatch, capsys)
    assert code == 0 and "Usage" in out


def test_convert_errors_are_one_line_exit_2(tmp_path, sample_dir, monkeypatch, capsys):
    from fasttarget.demo import SAMPLE_SOURCE

    code, _, err = run_cli(["convert", "mnist", "--source", SAMPLE_SOURCE, "--out", tmp_path / "o"], monkeypatch, capsys)
    assert_one_line_error(code, err, "unknown dataset 'mnist'", "cifar10")
    code, _, err = run_cli(["convert", "cifar10", "--source", SAMPLE_SOURCE, "--out", sample_dir], monkeypatch, capsys)
    assert_one_line_error(code, err, str(sample_dir), "--force")
    code, _, err = run_cli(["convert", "cifar10", "--source", SAMPLE_SOURCE, "--out", tmp_path / "o",
                            "--jpeg-quality", "0"], monkeypatch, capsys)
    assert_one_line_error(code, err, "--jpeg-quality must be in 1..100")
    code, _, err = run_cli(["convert", "tinyimagenet", "--source", SAMPLE_SOURCE, "--out", tmp_path / "o",
                            "--download"], monkeypatch, capsys)
    assert_one_line_error(code, err, "--download supports cifar10 and cifar100")


def test_inspect_prints_summary_and_subset(sample_dir, monkeypatch, capsys):
    code, out, _ = run_cli(["inspect", sample_dir, "--ipc", "20", "--subset-seed", "1"], monkeypatch, capsys)
    assert code == 0
    assert "train       5000 samples (500 per class)" in out
    assert "test        1000 samples (100 per class)" in out
    assert "subset      ipc20-seed1: 200 train samples (20..20 per class)" in out
    code, _, err = run_cli(["inspect", sample_dir, "--ipc", "501"], monkeypatch, capsys)
    assert_one_line_error(code, err, "fewer than --ipc 501")
    code, _, err = run_cli(["inspect", sample_dir, "--ipc", "5", "--fraction", "0.5"], monkeypatch, capsys)
    assert_one_line_error(code, err, "exclude each other")


def test_inspect_fails_on_a_damaged_dataset(sample_dir, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["inspect", tmp_path], monkeypatch, capsys)
    assert_one_line_error(code, err, "no meta.json", "fasttarget convert")
    copy = tmp_path / "copy"
    shutil.copytree(sample_dir, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["splits"]["train"]["class_counts"][0] += 1
    (copy / "meta.json").write_text(json.dumps(meta))
    code, _, err = run_cli(["inspect", copy], monkeypatch, capsys)
    assert_one_line_error(code, err, "train.beton has class counts")
    shutil.copy(sample_dir / "meta.json", copy / "meta.json")
    (copy / "test.beton").unlink()
    code, _, err = run_cli(["inspect", copy], monkeypatch, capsys)
    assert_one_line_error(code, err, "test.beton is missing")


def test_convert_then_demo_reuses_converted_sample(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    code, stdout, _ = run_cli(["demo", "--out", out, "--no-progress", "--until", "inspect"], monkeypatch, capsys)
    assert code == 0
    assert "train       5000 samples" in stdout and f"inspect: {out / 'data'} OK" in stdout
    first = (out / "data" / "train.beton").stat().st_mtime_ns
    code, stdout, _ = run_cli(["demo", "--out", out, "--no-progress", "--until", "inspect"], monkeypatch, capsys)
    assert code == 0 and "reusing it" in stdout
    assert (out / "data" / "train.beton").stat().st_mtime_ns == first
    code, _, err = run_cli(["demo", "--out", out, "--source", tmp_path / "nope"], monkeypatch, capsys)
    assert_one_line_error(code, err, "demo data not found", "--source")


def test_inspect_verifies_checksums_and_quick_skips_them(sample_dir, tmp_path, monkeypatch, capsys):
    code, out, _ = run_cli(["inspect", sample_dir], monkeypatch, capsys)
    assert code == 0 and "checksum    train.beton: sha256 verified" in out
    copy = tmp_path / "copy"
    shutil.copytree(sample_dir, copy)
    beton = copy / "train.beton"
    with open(beton, "r+b") as fh:  # one flipped bit in the image data
        fh.seek(beton.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 1]))
    code, _, err = run_cli(["inspect", copy], monkeypatch, capsys)
    assert_one_line_error(code, err, f"{beton} does not match the SHA-256 meta.json records", "--force")
    code, out, _ = run_cli(["inspect", copy, "--quick"], monkeypatch, capsys)
    assert code == 0 and "checksum    train.beton: sha256 not checked (--quick)" in out
    meta = json.loads((copy / "meta.json").read_text())
    for info in meta["splits"].values():
        del info["size"], info["sha256"]
    (copy / "meta.json").write_text(json.dumps(meta))
    code, out, _ = run_cli(["inspect", copy], monkeypatch, capsys)
    assert code == 0 and "checksum    train.beton: no checksum recorded" in out


def test_inspect_names_a_truncated_beton(sample_dir, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(sample_dir, copy)
    with open(copy / "test.beton", "r+b") as fh:
        fh.truncate(1 << 20)
    code, _, err = run_cli(["inspect", copy, "--quick"], monkeypatch, capsys)
    assert_one_line_error(code, err, f"{copy / 'test.beton'} is 1048576 bytes, meta.json records", "--force")


def test_convert_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    import os

    from fasttarget.demo import SAMPLE_SOURCE

    out = tmp_path / "o"
    out.mkdir()
    (out / f".train.beton.{os.getpid()}.tmp").symlink_to("/dev/full")  # every write fails with ENOSPC
    code, _, err = run_cli(["convert", "cifar10", "--source", SAMPLE_SOURCE, "--out", out, "--no-progress"],
                           monkeypatch, capsys)
    assert_one_line_error(code, err, f"no space left on device writing {out / 'train.beton'}: free space or "
                                     "choose another --out")
    assert list(out.iterdir()) == []


def test_train_on_a_truncated_beton_is_one_line(sample_dir, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(sample_dir, copy)
    with open(copy / "train.beton", "r+b") as fh:
        fh.truncate(3 << 20)
    code, _, err = run_cli(["train", "--data", copy, "--strategy", "A", "--out", tmp_path / "run", "--steps", "1",
                            "--device", "cpu", "--no-progress"], monkeypatch, capsys)
    assert_one_line_error(code, err, f"{copy / 'train.beton'} is 3145728 bytes, meta.json records",
                          f"fasttarget convert cifar10 --source", f"--out {copy} --force")
