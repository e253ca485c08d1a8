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
