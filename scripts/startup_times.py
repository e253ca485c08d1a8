"""How long ``fasttarget`` commands take from the shell, for one or more source trees side by side.

Each command runs as a fresh subprocess (``python -m fasttarget.cli ...`` with ``PYTHONPATH``
at the tree's ``src``), once untimed to warm the file cache and numba's on-disk cache, then
``--repeats`` times; the runs of the trees alternate, so machine load falls on all of them
alike. The table gives the median wall time (min-max) of each command in each tree.

Rows: ``fasttarget --help``; a one-line user error (``train --data`` a missing directory); a bad
flag value (``train --lr -1`` on a converted dataset);
``inspect`` of a converted dataset; a 1-step ``train`` (Strategy A, a width-0.125 ResNet-18,
one evaluation); and ``import ffcv`` alone and as fasttarget imports it (inside
``fasttarget.threads.kept_threads``, where a tree may cache ffcv's import-time compilation).

Usage (the before/after table of issue 14)::

    git worktree add /tmp/startup-base ffd92ee
    python scripts/startup_times.py --tree before=/tmp/startup-base --tree after=. --repeats 5

Without ``--data`` the shipped CIFAR-10 sample is converted into a temporary directory first.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def command_rows(data: Path, scratch: Path) -> dict[str, tuple[list[str], int]]:
    """Row label -> (the arguments after ``python``, the exit code it must give)."""
    cli = ["-m", "fasttarget.cli"]
    kept_import = ("from fasttarget.threads import kept_threads\n"
                   "with kept_threads():\n    import ffcv")
    return {
        "fasttarget --help": ([*cli, "--help"], 0),
        "user error (train --data missing)": ([*cli, "train", "--data", str(scratch / "missing"), "--strategy", "A",
                                               "--out", str(scratch / "never")], 2),
        "flag-value error (train --lr -1)": ([*cli, "train", "--data", str(data), "--strategy", "A", "--lr", "-1",
                                              "--out", str(scratch / "never")], 2),
        "fasttarget inspect DATA": ([*cli, "inspect", str(data)], 0),
        "train, 1 step (A, width 0.125)": ([
            *cli, "train", "--data", str(data), "--strategy", "A", "--steps", "1", "--eval-every", "1",
            "--width", "0.125", "--batch-size", "32", "--device", "cpu", "--no-progress", "--force",
            "--out", str(scratch / "run")], 0),
        "import ffcv (plain)": (["-c", "import ffcv"], 0),
        "import ffcv (as fasttarget does)": (["-c", kept_import], 0),
    }


def run_once(tree: Path, args: list[str]) -> tuple[float, int]:
    """Wall time and exit code of ``python ARGS`` with ``tree/src`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, cwd=tree, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    return time.perf_counter() - start, done.returncode


def convert_sample(tree: Path, out: Path) -> None:
    """Convert the shipped CIFAR-10 sample with ``tree``'s fasttarget."""
    sample = REPO / "data" / "cifar10-sample"
    subprocess.run([sys.executable, "-m", "fasttarget.cli", "convert", "cifar10", "--source", str(sample),
                    "--out", str(out), "--force", "--no-progress"],
                   env={**os.environ, "PYTHONPATH": str(tree / "src")}, check=True, stdout=subprocess.DEVNULL)


def parse_tree(text: str) -> tuple[str, Path]:
    label, _, path = text.rpartition("=")
    return (label or path), Path(path).resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", type=parse_tree, default=None,
                        help="LABEL=PATH of a fasttarget checkout (repeatable; default: this one)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per command and tree (median)")
    parser.add_argument("--data", type=Path, default=None, help="converted dataset for inspect and train")
    parser.add_argument("--only", action="append", default=None, help="run only rows whose label contains this")
    opts = parser.parse_args()
    trees = opts.tree or [("this tree", REPO)]

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        data = opts.data
        if data is None:
            data = scratch / "data"
            convert_sample(trees[-1][1], data)
        rows = command_rows(data, scratch)
        if opts.only:
            rows = {k: v for k, v in rows.items() if any(o in k for o in opts.only)}
        times: dict[tuple[str, str], list[float]] = {}
        codes: dict[tuple[str, str], int] = {}
        for label, (args, _) in rows.items():
            for name, tree in trees:  # warm-up: file cache, numba's cache, .pyc files
                codes[label, name] = run_once(tree, args)[1]
        for _ in range(opts.repeats):
            for label, (args, _) in rows.items():
                for name, tree in trees:
                    seconds, codes[label, name] = run_once(tree, args)
                    times.setdefault((label, name), []).append(seconds)

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (at the end)")
    print(f"median of {opts.repeats} runs (min-max) after one untimed run; "
          f"`{shlex.join([Path(sys.executable).name, *sys.argv])}`")
    for name, tree in trees:
        commit = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        print(f"  {name}: {tree} at {commit[:60]}{' + uncommitted changes' if dirty else ''}")
    width = max(len(label) for label in rows)
    print(f"| {'command':<{width}} | " + " | ".join(f"{name:>20}" for name, _ in trees) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * 22 for _ in trees) + "|")
    for label in rows:
        cells = []
        for name, _ in trees:
            t = times[label, name]
            exit_note = f" rc={codes[label, name]}!" if codes[label, name] != rows[label][1] else ""
            cells.append(f"{statistics.median(t):6.2f} s ({min(t):.2f}-{max(t):.2f}){exit_note}".rjust(20))
        print(f"| {label:<{width}} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
