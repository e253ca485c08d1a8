"""Trusting a run directory: one writer at a time, leftovers of a kill, moved runs, damaged checkpoints."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import QUICK, make_teacher, run_cli

from fasttarget.errors import UserError
from fasttarget.locking import exclusive_lock
from fasttarget.train import CHECKPOINT, LOCK_FILE, TrainConfig, default_cache_path, train

FASTTARGET = Path(sys.executable).with_name("fasttarget")

# A finished 4-step run with a checkpoint at each evaluation.
RUN = dict(strategy="A", aug="stdaug", steps=4, eval_every=2, ipc=20, batch_size=32, width=0.125, device="cpu",
           progress=False)


def wait_for(condition, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process that takes ``exclusive_lock(path)`` and sleeps until killed."""
    script = (f"import time; from pathlib import Path; from fasttarget.locking import exclusive_lock\n"
              f"with exclusive_lock(Path({str(path)!r}), 'held'):\n    print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_a_lock_refuses_at_once_naming_the_holder_and_a_killed_holder_leaves_it_free(tmp_path):
    path = tmp_path / "x.lock"
    holder = hold_lock(path)
    try:
        started = time.perf_counter()
        with pytest.raises(UserError, match=f"^busy: pid {holder.pid}$"):
            with exclusive_lock(path, "busy: pid {pid}"):
                pass
        assert time.perf_counter() - started < 1  # refused, not waited for
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert path.exists()  # a SIGKILL leaves the file behind, but not the lock
    with exclusive_lock(path, "busy"):
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()


def test_a_second_train_on_the_same_out_refuses_at_once(small_sample_dir, tmp_path):
    """Two real ``fasttarget train --resume`` processes on one --out (a job started again while it still
    runs): the second exits 2 while the first trains, instead of training alongside it."""
    out = tmp_path / "run"
    args = [FASTTARGET, "train", "--data", small_sample_dir, "--strategy", "A", "--out", out, "--steps", "100000",
            "--eval-every", "50000", "--resume", *QUICK]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(list(map(str, args)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_for(lambda: (out / "config.json").is_file(), first)  # past the lock, training
        second = subprocess.run(list(map(str, args)), env=env, capture_output=True, text=True, timeout=300)
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2
    assert second.stderr == (f"error: another fasttarget train is writing {out} (pid {first.pid}): "
                             "wait for it or choose another --out\n")


def test_stale_temporary_files_are_removed_when_a_run_starts(small_sample_dir, tmp_path, one_thread):
    out = tmp_path / "run"
    train(TrainConfig(data=small_sample_dir, out=out, **RUN))
    (out / "final.json").unlink()  # as if killed after its last checkpoint
    leftovers = [out / CHECKPOINT.parent / ".last.pt.4242.tmp", out / ".metrics.jsonl.77.tmp",
                 out / ".config.json.5.tmp"]
    for path in leftovers:
        path.write_bytes(b"")
    train(TrainConfig(data=small_sample_dir, out=out, resume=True, **RUN))
    assert not any(path.exists() for path in leftovers)
    assert (out / "final.json").is_file() and not (out / LOCK_FILE).exists()


def test_a_moved_run_with_moved_inputs_resumes_and_other_inputs_are_refused(small_sample_dir, tmp_path, monkeypatch,
                                                                             one_thread):
    """The run, its dataset and its teacher (with the cache next to it) all move; paths go relative."""
    from fasttarget.dataset import DatasetMeta

    meta = DatasetMeta.load(small_sample_dir)
    teacher = make_teacher(tmp_path / "teachers" / "t.pt", meta)
    first = train(TrainConfig(data=small_sample_dir, out=tmp_path / "run", **{**RUN, "strategy": "C"}, teacher=teacher))
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(tmp_path / "run", moved / "run")
    shutil.move(tmp_path / "teachers", moved / "teachers")
    shutil.copytree(small_sample_dir, moved / "data")
    (moved / "run" / "final.json").unlink()  # resume from the checkpoint, not the finished result
    monkeypatch.chdir(moved)
    again = train(TrainConfig(data=Path("data"), out=Path("run"), **{**RUN, "strategy": "C"},
                              teacher=Path("teachers/t.pt"), resume=True))
    assert again["test_acc_h"] == first["test_acc_h"]
    config = json.loads((moved / "run" / "config.json").read_text())
    assert Path(config["data"]).is_absolute() and config["cache_sha256"] and config["teacher_sha256"]

    other_teacher = make_teacher(moved / "other.pt", meta, seed=5)
    with pytest.raises(UserError, match="holds a run with teacher_sha256="):
        train(TrainConfig(data=Path("data"), out=Path("run"), **{**RUN, "strategy": "C"}, teacher=other_teacher,
                          resume=True))
    assert not default_cache_path(other_teacher, meta.fingerprint).exists()  # refused before building one


def test_damaged_checkpoints_and_bad_outs_are_one_line_and_force_starts_over(small_sample_dir, tmp_path, monkeypatch,
                                                                            capsys, one_thread):
    out = tmp_path / "run"
    args = ["train", "--data", small_sample_dir, "--strategy", "A", "--out", out, "--steps", "4", "--eval-every", "2",
            *QUICK]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    ckpt = out / CHECKPOINT
    (out / "final.json").unlink()
    whole = ckpt.read_bytes()
    for damaged in (whole[: len(whole) // 2], os.urandom(4096)):
        ckpt.write_bytes(damaged)
        code, err = run_cli(monkeypatch, capsys, *args, "--resume")
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"error: {ckpt} is not a readable checkpoint (")
        assert err.endswith("restore a backup of it, or pass --force to start the run over\n")
    code, err = run_cli(monkeypatch, capsys, *args, "--force")
    assert code == 0, err
    assert json.loads((out / "final.json").read_text())["step"] == 4

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    for bad_out in (not_a_dir, not_a_dir / "run"):
        code, err = run_cli(monkeypatch, capsys, *args[:6], bad_out, *args[7:])
        assert code == 2 and err.count("\n") == 1, err
    assert run_cli(monkeypatch, capsys, *args[:6], not_a_dir, *args[7:])[1] == (
        f"error: --out {not_a_dir} is a file, not a run directory: choose another --out\n")
