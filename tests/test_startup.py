"""Startup: `--help` and user errors found before any work must not import torch, ffcv or numba.

Timing depends on the machine, so the default tests check the property that makes startup
fast (which heavy libraries a command has imported when it exits); one loose timing check is
marked slow. ``scripts/startup_times.py`` measures the times themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "ffcv", "numba")

# Runs the CLI as `python -m fasttarget.cli ARGS` would, then reports what got imported.
_PROBE = """
import json, runpy, sys
sys.argv = ["fasttarget", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("fasttarget.cli", run_name="__main__")
except SystemExit as exit_info:
    code = exit_info.code or 0
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}), file=sys.stderr)
""" % (HEAVY,)


def _probe(*args: str) -> tuple[int, list[str], str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", _PROBE, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300)
    *lines, report = done.stderr.strip().splitlines()
    result = json.loads(report)
    return result["code"], result["heavy"], "\n".join(lines)


@pytest.mark.parametrize("args", [
    ["--help"],
    ["train", "--help"],
    ["cache", "build", "--help"],
    ["bench", "--help"],
    ["sweep", "--help"],
], ids=lambda a: " ".join(a))
def test_help_imports_no_heavy_library(args):
    code, heavy, _ = _probe(*args)
    assert code == 0 and heavy == []


@pytest.mark.parametrize(("args", "fragment"), [
    (["train", "--data", "{missing}", "--strategy", "A", "--out", "{tmp}/run"], "no meta.json"),
    (["teacher", "--data", "{missing}", "--out", "{tmp}/ladder"], "no meta.json"),
    (["cache", "build", "--data", "{missing}", "--teacher", "t.pt", "--out", "{tmp}/c.h5"], "no meta.json"),
    (["inspect", "{missing}"], "no meta.json"),
    (["train", "--data", "{missing}", "--out", "{tmp}/run"], "pass --strategy"),
    (["convert", "cifar10", "--source", "{missing}", "--out", "{tmp}/out"], "does not exist"),
], ids=["train", "teacher", "cache-build", "inspect", "train-no-strategy", "convert"])
def test_user_errors_before_work_import_no_heavy_library(args, fragment, tmp_path, record_bad_input):
    args = [a.format(missing=tmp_path / "missing", tmp=tmp_path) for a in args]
    code, heavy, err = _probe(*args)
    record_bad_input(f"{args[0]} on a missing path, checked before torch is imported", args, code, err, fragment)
    assert heavy == []


@pytest.fixture(scope="module")
def meta_only(tmp_path_factory) -> Path:
    """A converted dataset's meta.json alone (32x32 CIFAR-10 shape): enough for every check before the betons."""
    from fasttarget.dataset import DatasetMeta, SplitInfo

    directory = tmp_path_factory.mktemp("meta-only")
    DatasetMeta(dataset="cifar10", classes=tuple(f"class{i}" for i in range(10)), image_shape=(32, 32, 3),
                splits={"train": SplitInfo("train.beton", 100, (10,) * 10),
                        "test": SplitInfo("test.beton", 50, (5,) * 10)},
                mean=(0.5,) * 3, std=(0.25,) * 3, fingerprint="0" * 64).save(directory)
    return directory


_TRAIN = ["train", "--data", "{data}", "--out", "{tmp}/run"]
_TEACHER = ["teacher", "--data", "{data}", "--out", "{tmp}/ladder"]
_CACHE = ["cache", "build", "--data", "{data}", "--teacher", "{tmp}/t.pt", "--out", "{tmp}/c.h5"]
_SWEEP_TOML = """name = "bad"
[data]
dir = "data"
[model]
width = {width}
[[grid]]
strategies = ["A"]
student_augs = ["{aug}"]
steps = [10]
eval_every = 5
seeds = [0]
"""

# (arguments, what the one-line message must contain): a bad flag value of each command, found
# from the arguments and meta.json alone, so before torch (seconds) is imported.
FLAG_VALUE_ERRORS = {
    "train-lr": ([*_TRAIN, "--strategy", "A", "--lr", "-1"], "--lr must be a positive number"),
    "train-strategy": ([*_TRAIN, "--strategy", "Z"], "--strategy Z: unknown strategy"),
    "train-width": ([*_TRAIN, "--strategy", "A", "--width", "0"], "--width must be in (0, 8]"),
    "train-steps": ([*_TRAIN, "--strategy", "A", "--steps", "0"], "--steps must be at least 1"),
    "train-aug": ([*_TRAIN, "--strategy", "A", "--aug", "nosuch"], "--aug nosuch: unknown augmentation"),
    "train-temperature": ([*_TRAIN, "--strategy", "A", "--temperature", "0"], "--temperature must be a positive"),
    "train-batch-size": ([*_TRAIN, "--strategy", "A", "--batch-size", "0"], "--batch-size must be at least 1"),
    "train-ipc": ([*_TRAIN, "--strategy", "A", "--ipc", "0"], "--ipc must be at least 1"),
    "train-res": ([*_TRAIN, "--strategy", "A", "--res", "64"], "--res 64 asks for 64x64 images"),
    "train-b-without-teacher": ([*_TRAIN, "--strategy", "B"], "strategy B needs a teacher"),
    "train-student": ([*_TRAIN, "--strategy", "A", "--student", "nosuch"], "unknown architecture 'nosuch'"),
    "member-strategy": ([*_TRAIN, "--member", "Q"], "--member 'Q': unknown strategy"),
    "member-missing-file": ([*_TRAIN, "--member", "B={tmp}/missing.pt"], "missing.pt does not exist"),
    "member-arch": ([*_TRAIN, "--member", "A", "--arch", "vit_s"], "--arch vit_s does not fuse"),
    "teacher-accuracies": ([*_TEACHER, "--accuracies", "2"], "--accuracies must be fractions in (0, 1)"),
    "teacher-width": ([*_TEACHER, "--accuracies", "0.3", "--width", "0"], "--width must be in (0, 8]"),
    "teacher-tolerance": ([*_TEACHER, "--accuracies", "0.3", "--tolerance", "2"], "--tolerance must be a fraction"),
    "teacher-device": ([*_TEACHER, "--accuracies", "0.3", "--device", "tpu"], "--device must be cpu or cuda"),
    "cache-dtype": ([*_CACHE, "--dtype", "int8"], "--dtype must be one of float16, float32"),
    "cache-top-k": ([*_CACHE, "--top-k", "0"], "--top-k must be at least 1"),
    "cache-temperature": ([*_CACHE, "--temperature", "0"], "--temperature must be positive"),
    "cache-top-k-classes": ([*_CACHE, "--top-k", "10"], "--top-k 10 keeps every one of the 10 classes"),
    "cache-res": ([*_CACHE, "--res", "64"], "--res 64 asks for 64x64 images"),
    "convert-jpeg-quality": (["convert", "cifar10", "--source", "{tmp}", "--out", "{tmp}/out", "--jpeg-quality", "0"],
                             "--jpeg-quality must be in 1..100"),
    "convert-val-fraction": (["convert", "imagefolder", "--source", "{tmp}", "--out", "{tmp}/out",
                              "--val-fraction", "1.5"], "--val-fraction must be in (0, 1)"),
    "sweep-aug": (["sweep", "{tmp}/bad-aug.toml", "--out", "{tmp}/sweep", "--dry-run"], "unknown augmentation 'nosuch'"),
    "sweep-width": (["sweep", "{tmp}/bad-width.toml", "--out", "{tmp}/sweep", "--dry-run"], "[model]: --width must be"),
    "sweep-retries": (["sweep", "{tmp}/bad-aug.toml", "--out", "{tmp}/sweep", "--retries", "-1"], "--retries must be"),
}


@pytest.mark.parametrize("name", FLAG_VALUE_ERRORS)
def test_flag_value_errors_import_no_heavy_library(name, meta_only, tmp_path, record_bad_input):
    (tmp_path / "t.pt").write_bytes(b"a teacher the checks never open")
    (tmp_path / "bad-aug.toml").write_text(_SWEEP_TOML.format(width=1.0, aug="nosuch"))
    (tmp_path / "bad-width.toml").write_text(_SWEEP_TOML.format(width=0, aug="stdaug"))
    args, fragment = FLAG_VALUE_ERRORS[name]
    args = [a.format(data=meta_only, tmp=tmp_path) for a in args]
    code, heavy, err = _probe(*args)
    record_bad_input(f"{args[0]}: a bad flag value, checked before torch is imported", args, code, err, fragment)
    assert heavy == []


@pytest.mark.slow
def test_help_and_a_user_error_take_under_a_second_or_two(tmp_path):
    """Loose: the budget is 1 s; 2.5 s leaves room for a loaded CI machine, torch alone takes longer."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for args in (["--help"], ["inspect", str(tmp_path / "missing")]):
        subprocess.run([sys.executable, "-m", "fasttarget.cli", *args], env=env, capture_output=True)  # .pyc
        best = min(_timed(args, env) for _ in range(3))
        assert best < 2.5, f"`fasttarget {' '.join(args)}` took {best:.2f} s"


def _timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fasttarget.cli", *args], env=env, capture_output=True)
    return time.perf_counter() - start


@pytest.mark.slow
def test_ffcv_import_compilation_is_cached_between_processes(tmp_path):
    """The second process loads numba's typed-dict helpers from the cache instead of compiling them."""
    probe = ("from fasttarget.threads import kept_threads\n"
             "with kept_threads():\n    import ffcv\n"
             "from numba.typed import typeddict\n"
             "print(sum(typeddict._setitem.stats.cache_hits.values()), "
             "sum(typeddict._setitem.stats.cache_misses.values()))")
    env = {**os.environ, "PYTHONPATH": str(SRC), "NUMBA_CACHE_DIR": str(tmp_path)}  # an empty cache to start
    runs = [subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
            for _ in range(2)]
    (first_hits, first_misses), (second_hits, second_misses) = (map(int, r.stdout.split()) for r in runs)
    assert (first_hits, second_misses) == (0, 0) and first_misses > 0 and second_hits > 0
