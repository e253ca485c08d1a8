"""Timing a fasttarget callable against its baseline: :class:`Comparison`, :func:`measure`, :class:`Row`.

Each repetition times both sides back to back, alternating which goes first; the ratio is the
median of the pairs' ratios, oriented so that above 1 means fasttarget is faster.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from fasttarget.errors import UserError


@dataclass(frozen=True)
class Row:
    """One measured line of a benchmark table (the JSON schema of ``fasttarget bench --json``).

    Args:
        name: what was measured, e.g. ``"loader resident b128"``.
        value: median throughput of the fasttarget code, in ``unit``.
        unit: ``img/s``, ``batches/s``, ``rows/s``...
        baseline: what it is compared with, e.g. ``"bare gather"``.
        baseline_value: median throughput of the baseline, in ``unit``.
        ratio: how many times faster fasttarget is: the median over repetitions of
            ``ours / theirs`` measured back to back (above 1 means fasttarget is faster).
            On a quiet machine it is close to ``value / baseline_value``; on a machine whose
            speed drifts it is the steadier number, because each pair shares the same moment.
        repeats: timed repetitions behind each median.
        min, max: the fasttarget throughput's range over the repetitions.
    """

    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    ratio: float
    repeats: int
    min: float
    max: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """A fasttarget callable and its baseline, each doing a known amount of work per call.

    Args:
        name: the Row's name.
        unit: throughput unit, ``<work>/s``.
        work: units of work one call of ``run`` does (images, batches, rows).
        run: the fasttarget code; its return value is ignored.
        baseline: the Row's baseline name.
        baseline_run: the code a user would write instead, doing the same work per call.
        prepare: called, untimed, before every call of either side (warm-up included), e.g.
            to drop a file from the page cache so that every timed call reads it cold.
    """

    name: str
    unit: str
    work: float
    run: Callable[[], object]
    baseline: str
    baseline_run: Callable[[], object]
    prepare: Callable[[], object] | None = None


def elapsed(fn: Callable[[], object], device: str | torch.device = "cpu") -> float:
    """Seconds one call of ``fn`` takes; on CUDA timed with events around the queued work."""
    if torch.device(device).type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(comp: Comparison, repeats: int = 5, warmup: int = 1, device: str | torch.device = "cpu") -> Row:
    """Time ``comp.run`` and ``comp.baseline_run`` in pairs and summarize them as a :class:`Row`.

    Each repetition times both sides back to back, in alternating order (ours first, then
    theirs first), so drift of a shared machine and any first-or-second position effect fall
    on both sides equally; the ratio is the median of the per-pair ratios. Warm-up calls (JIT,
    compile, caches) are not timed.

    Example:
        >>> import time
        >>> comp = Comparison("fast", "call/s", 1, lambda: None, "slow", lambda: time.sleep(0.001))
        >>> measure(comp, repeats=3, warmup=0).ratio > 1
        True
    """
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {repeats}")

    def rate(fn: Callable[[], object]) -> float:
        if comp.prepare is not None:
            comp.prepare()
        return comp.work / elapsed(fn, device)

    for _ in range(warmup):
        rate(comp.run)
        rate(comp.baseline_run)
    ours, theirs = [], []
    for i in range(repeats):
        if i % 2 == 0:
            ours.append(rate(comp.run))
            theirs.append(rate(comp.baseline_run))
        else:
            theirs.append(rate(comp.baseline_run))
            ours.append(rate(comp.run))
    value, base = statistics.median(ours), statistics.median(theirs)
    return Row(
        name=comp.name, value=value, unit=comp.unit, baseline=comp.baseline, baseline_value=base,
        ratio=statistics.median(o / t for o, t in zip(ours, theirs)), repeats=repeats, min=min(ours), max=max(ours),
    )


def fastest(candidates: dict[str, Callable[[], object]], device: str | torch.device = "cpu",
            calls: int = 3) -> tuple[str, dict[str, float]]:
    """Which of several ways to write one baseline is fastest here: the best of ``calls`` timed
    calls of each, after one untimed call.

    A strongest-fair baseline is the faster of the obvious ways to write it (``np.take`` or
    ``torch.index_select``), and which one wins depends on the machine, so it is raced rather
    than assumed.

    Returns:
        The winner's name and the seconds per call of every candidate.

    Example:
        >>> import time
        >>> fastest({"slow": lambda: time.sleep(0.004), "fast": lambda: None}, calls=1)[0]
        'fast'
    """
    seconds = {}
    for name, fn in candidates.items():
        fn()
        seconds[name] = min(elapsed(fn, device) for _ in range(calls))
    return min(seconds, key=seconds.__getitem__), seconds


def race_note(what: str, winner: str, seconds: dict[str, float]) -> str:
    """A table note naming the kernel a raced baseline uses and what the others took."""
    others = ", ".join(f"{name} {seconds[name] * 1e3:.3g} ms" for name in seconds if name != winner)
    return f"{what} is {winner} ({seconds[winner] * 1e3:.3g} ms per call; {others or 'no other candidate here'})"
