"""The printed table: rows with their goals' verdicts, and the machine they were measured on."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from fasttarget.bench.goals import GOALS
from fasttarget.bench.timing import Row


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU model, cores, torch, GPU (``None`` without CUDA)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:  # not Linux: keep platform's answer
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cores": usable,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": gpu,
        "platform": platform.platform(),
    }


def missed_goals(rows: list[Row], on_cuda: bool) -> list[str]:
    """One line for each row that misses its goal in :data:`GOALS` (CUDA goals count on CUDA runs only).

    Example:
        >>> row = Row("augment stdaug b256", 150, "img/s", "kornia chain", 100, 1.5, 5, 140, 160)
        >>> missed_goals([row], on_cuda=False)
        ['augment stdaug b256 vs kornia chain: ratio 1.50, 150 img/s (n=5): goal ≥ 2× Kornia chain']
    """
    missed = []
    for row in rows:
        goal = GOALS.get((row.name, row.baseline))
        if goal is not None and (on_cuda or not goal.cuda_only) and not goal.met(row):
            missed.append(f"{row.name} vs {row.baseline}: ratio {row.ratio:.2f}, {_num(row.value)} {row.unit} "
                          f"(n={row.repeats}): goal {goal.text}")
    return missed


def format_table(rows: list[Row], machine: dict[str, Any] | None = None) -> str:
    """Render rows as one aligned text table, goals marked, the machine underneath."""
    header = ("measurement", "value", "baseline", "ratio", "min–max", "goal")
    on_cuda = bool(machine and machine.get("gpu"))
    lines = []
    for row in rows:
        goal = GOALS.get((row.name, row.baseline))
        verdict = ""
        if goal is not None:
            met = "(CUDA goal)" if goal.cuda_only and not on_cuda else ("met" if goal.met(row) else "MISSED")
            verdict = f"{goal.text}: {met}"
        lines.append((
            row.name,
            f"{_num(row.value)} {row.unit}",
            f"{row.baseline}: {_num(row.baseline_value)}",
            f"{row.ratio:.2f}×",
            f"{_num(row.min)}–{_num(row.max)} (n={row.repeats})",
            verdict,
        ))
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *lines]]
    out.insert(1, "  ".join("-" * w for w in widths))
    if machine:
        gpu = machine.get("gpu") or "none"
        out.append(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, GPU: {gpu}")
    return "\n".join(out)


def _num(x: float) -> str:
    """Three significant digits, no exponent below a billion (the table is read by eye)."""
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"
