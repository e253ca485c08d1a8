"""The paper's tables and figures, and the claim check, from a sweep's results index.

Everything here reads :mod:`fasttarget.results` only, and copes with partial grids: a
table or figure whose runs are missing is replaced by a line saying so.

Axes a table or figure does not show are fixed to one *context* (teacher augmentation,
student augmentation, subset): the one with the most cells filled, ties broken towards
``stdaug`` and the larger subset. Every caption states the context and the number of
seeds. Cells are means over seeds (Table 4: mean ± sample std). When several runs of
one configuration and seed reach a step (different budgets), the shortest one is used.

Tables (paper's numbering): 1 — student top-1 by teacher accuracy × step; 2 — B vs C with
the Gain row C/B at the step budgets; 3 — teacher augmentation × teacher accuracy;
4 — mean ± std over seeds of every configuration. Figures: accuracy vs step with LOWESS
(``fig_acc_vs_step.png``, as Figures 3/4), accuracy vs IPC (``fig_acc_vs_ipc.png``,
Figure 6), augmentation × strategy scaling (``fig_aug_scaling.png``, Figure 7), and soft
targets on ~10 % vs one-hot on the most data at equal budgets (``fig_budget_matched.png``,
Figure 1). Where the sweep measured diagnostics (:mod:`fasttarget.diagnostics`), a table of
target entropy and teacher–student agreement per configuration and ``fig_diagnostics.png``
(agreement and accuracy vs teacher accuracy; the soft − one-hot gap vs target entropy).

Example:
    >>> from fasttarget.report import Stat
    >>> Stat.of([0.5, 0.7]).pm()
    '60.00 ± 14.14'
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from fasttarget.results import CSV_FILE, INDEX_FILE, META_FILE, EvalRow, ResultsIndex, RunRow, read_csv

LOWESS_FRAC = 0.1  # the paper's: 10 % of the points in each local regression
MAX_TABLE_ROWS = 12
CONTEXT_AXES = ("teacher_aug", "student_aug", "ipc", "fraction")
MIX_AUGS = ("mixup", "cutmix")

# -- statistics over seeds -------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of accuracies (fractions) over ``n`` seeds."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        arr = np.asarray(values, dtype=float)
        return cls(float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, int(arr.size))

    def pct(self) -> str:
        return f"{self.mean * 100:.2f}"

    def pm(self) -> str:
        return f"{self.mean * 100:.2f} ± {self.std * 100:.2f}"


def _condition(run: RunRow) -> tuple:
    """Every axis but seed and length: runs that only repeat each other."""
    return (run.strategy, run.teacher_acc, run.teacher_aug, run.student_aug, run.ipc, run.fraction)


class Results:
    """Finished runs and their evaluations, with the queries tables and claims need.

    Args:
        runs: index rows (only ``done`` ones are kept).
        evals: evaluations by run id.
        budgets: the sweep's step budgets (Table 2's rows).
        dataset_ipc: images per class of the full split (puts "full" on IPC axes), if known.
        name: the sweep's name.
    """

    def __init__(self, runs: Iterable[RunRow], evals: dict[str, list[EvalRow]], budgets: Sequence[int] = (),
                 dataset_ipc: int | None = None, name: str = "sweep", class_counts: Sequence[int] | None = None,
                 batch_size: int | None = None):
        runs = list(runs)
        self.runs = [r for r in runs if r.status == "done"]
        self.failed = [r for r in runs if r.status == "failed"]
        self.statuses = dict(Counter(r.status for r in runs))
        self.evals = {rid: {e.step: e.test_acc_h for e in ev} for rid, ev in evals.items()}
        self.images = {rid: {e.step: e.images_seen for e in ev if e.images_seen} for rid, ev in evals.items()}
        self.budgets = tuple(sorted(budgets))
        self.dataset_ipc = dataset_ipc if dataset_ipc is not None else (min(class_counts) if class_counts else None)
        self.name = name
        self.class_counts = tuple(class_counts) if class_counts else None
        self.batch_size = batch_size

    @classmethod
    def load(cls, directory: Path) -> Results:
        """The results of a sweep directory: its ``results.sqlite``, else the committed
        ``results.csv`` and ``meta.json`` that :func:`write_report` exports next to it."""
        directory = Path(directory)
        if (directory / INDEX_FILE).is_file() or not (directory / CSV_FILE).is_file():
            index = ResultsIndex.open_existing(directory)
            try:
                runs, evals, meta = index.runs(), index.all_evals(), index.all_meta()
            finally:
                index.close()
        else:
            runs, evals = read_csv(directory / CSV_FILE)
            meta_file = directory / META_FILE
            meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        config = meta.get("config") or {}
        return cls(runs, evals, meta.get("budgets") or [], meta.get("dataset_ipc"),
                   config.get("name", directory.name), meta.get("class_counts"), config.get("batch_size"))

    # -- selection

    def select(self, runs: Iterable[RunRow] | None = None, **axes: Any) -> list[RunRow]:
        """Runs whose axes equal ``axes``; ``teacher_aug`` does not constrain Strategy A."""
        out = []
        for r in self.runs if runs is None else runs:
            if all(getattr(r, k) == v or (k == "teacher_aug" and r.strategy == "A") for k, v in axes.items()):
                out.append(r)
        return out

    def size(self, ipc: int | None, fraction: float | None) -> float:
        """Images per class of a subset (full = ``dataset_ipc`` or infinity)."""
        if ipc is not None:
            return float(ipc)
        full = float(self.dataset_ipc) if self.dataset_ipc else math.inf
        return full * fraction if fraction is not None else full

    def pick_context(self, runs: list[RunRow], score: Callable[[list[RunRow]], float],
                     axes: Sequence[str] = CONTEXT_AXES) -> dict[str, Any] | None:
        """The context (values of ``axes``) whose runs score highest; ``None`` if all score 0."""
        candidates = {tuple(getattr(r, a) for a in axes) for r in runs if r.strategy != "A"}
        candidates |= {tuple(getattr(r, a) for a in axes) for r in runs if r.strategy == "A"}
        best, best_key = None, None
        for values in candidates:
            ctx = dict(zip(axes, values))
            if "teacher_aug" in ctx and ctx["teacher_aug"] is None and any(r.strategy != "A" for r in runs):
                continue
            s = score(self.select(runs, **ctx))
            key = (s, ctx.get("student_aug") == "stdaug", ctx.get("teacher_aug") == "stdaug",
                   self.size(ctx.get("ipc"), ctx.get("fraction")), str(values))
            if s > 0 and (best_key is None or key > best_key):
                best, best_key = ctx, key
        return best

    # -- accuracies

    def acc_at(self, run: RunRow, step: int) -> float | None:
        acc = self.evals.get(run.run_id, {}).get(step)
        if acc is None and step == run.final_step:
            acc = run.final_acc
        return acc

    def per_seed(self, runs: list[RunRow], step: int | None) -> dict[int, float]:
        """Accuracy at ``step`` by seed (per seed, the shortest run reaching ``step``), seeds sorted."""
        per_seed: dict[int, tuple[int, float]] = {}
        for r in runs:
            acc = None if step is None else self.acc_at(r, step)
            if acc is not None and (r.seed not in per_seed or r.steps < per_seed[r.seed][0]):
                per_seed[r.seed] = (r.steps, acc)
        return {s: per_seed[s][1] for s in sorted(per_seed)}

    def stat(self, runs: list[RunRow], step: int) -> Stat | None:
        """Accuracy at ``step`` over seeds (per seed, the shortest run reaching ``step``)."""
        accs = self.per_seed(runs, step)
        return Stat.of(list(accs.values())) if accs else None

    def subset_images(self, ipc: int | None, fraction: float | None) -> int | None:
        """Training images of a subset, when the split's class counts are known."""
        if not self.class_counts:
            return None
        if ipc is not None:
            return sum(min(ipc, c) for c in self.class_counts)
        return sum(int(fraction * c) for c in self.class_counts) if fraction is not None else sum(self.class_counts)

    def epochs(self, run: RunRow, step: int) -> float | None:
        """Passes over the run's training subset by ``step``: the images it has seen (or step ×
        the sweep's batch, capped at the subset as older sweeps did), over the subset's size."""
        size = self.subset_images(run.ipc, run.fraction)
        seen = self.images.get(run.run_id, {}).get(step)
        if seen is None and self.batch_size and size:
            seen = step * min(self.batch_size, size)
        return seen / size if seen and size else None

    def epochs_per_step(self, runs: list[RunRow]) -> float | None:
        """Epochs of the runs' subset per training step (the first run that knows it)."""
        for r in runs:
            steps = sorted(self.evals.get(r.run_id, {})) or [r.steps]
            ep = self.epochs(r, steps[-1])
            if ep is not None:
                return ep / steps[-1]
        return None

    def when(self, runs: list[RunRow], step: int) -> str:
        """``step 200 = 0.51 epochs`` (the epoch part when it is known)."""
        ep = next((e for e in (self.epochs(r, step) for r in runs) if e is not None), None)
        return f"step {step}" + ("" if ep is None else f" = {ep:.3g} epochs of {subset_name(runs[0].ipc, runs[0].fraction)}")

    def steps_of(self, runs: list[RunRow]) -> list[int]:
        """Evaluation steps present in at least one of ``runs``."""
        return sorted({s for r in runs for s in self.evals.get(r.run_id, {})})

    def common_steps(self, groups: Iterable[list[RunRow]]) -> list[int]:
        """Steps every non-empty group has an evaluation at."""
        sets = [set(self.steps_of(g)) for g in groups if g]
        return sorted(set.intersection(*sets)) if sets else []

    def points(self, runs: list[RunRow]) -> tuple[np.ndarray, np.ndarray]:
        """All ``(step, accuracy)`` evaluations of ``runs``, pooled over seeds."""
        pts = [(s, a) for r in runs for s, a in sorted(self.evals.get(r.run_id, {}).items())]
        arr = np.asarray(pts, dtype=float).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]

    def teachers(self, runs: list[RunRow]) -> list[float]:
        return sorted({r.teacher_acc for r in runs if r.teacher_acc is not None})

    def measured(self, runs: list[RunRow], teacher_acc: float) -> float | None:
        vals = [r.teacher_acc_measured for r in runs if r.teacher_acc == teacher_acc and r.teacher_acc_measured]
        return float(np.mean(vals)) if vals else None


def describe_context(ctx: dict[str, Any] | None) -> str:
    if not ctx:
        return ""
    parts = []
    if ctx.get("teacher_aug"):
        parts.append(f"teacher aug {ctx['teacher_aug']}")
    if "student_aug" in ctx:
        parts.append(f"student aug {ctx['student_aug']}")
    if "ipc" in ctx or "fraction" in ctx:
        ipc, frac = ctx.get("ipc"), ctx.get("fraction")
        parts.append("full training split" if ipc is None and frac is None else
                     f"IPC {ipc}" if ipc is not None else f"{frac:.0%} of the training split")
    return ", ".join(parts)


def teacher_label(acc: float) -> str:
    return f"{acc * 100:g}%"


def subset_name(ipc: int | None, fraction: float | None) -> str:
    return "full" if ipc is None and fraction is None else f"IPC {ipc}" if ipc is not None else f"{fraction:.0%}"


# -- smoothing -----------------------------------------------------------------------------


def lowess_curve(steps: np.ndarray, accs: np.ndarray, frac: float = LOWESS_FRAC) -> tuple[np.ndarray, np.ndarray]:
    """LOWESS (statsmodels) of accuracy over steps, one value per distinct step.

    The paper smooths with 10 % of the points per local regression; with few evaluation
    steps that window would hold a single step (all its seeds), which cannot fit a line,
    so the fraction is widened to span at least three distinct steps.

    Example:
        >>> import numpy as np
        >>> x = np.repeat(np.arange(1, 41) * 10.0, 2); y = np.log(x) + np.tile([-0.1, 0.1], 40)
        >>> xs, ys = lowess_curve(x, y)
        >>> len(xs), bool(np.all(np.abs(ys - np.log(xs)) < 0.1))
        (40, True)
    """
    from statsmodels.nonparametric.smoothers_lowess import lowess

    distinct = np.unique(steps)
    if distinct.size < 3:
        return distinct, np.array([accs[steps == s].mean() for s in distinct])
    frac = max(frac, 3.0 / distinct.size)
    fitted = lowess(accs, steps, frac=frac, it=0, return_sorted=True)
    xs, idx = np.unique(fitted[:, 0], return_index=True)
    return xs, fitted[idx, 1]


# -- tables ------------------------------------------------------------------------------


def _thin(steps: list[int], keep: Iterable[int], limit: int = MAX_TABLE_ROWS) -> list[int]:
    """At most ``limit`` steps, roughly log-spaced, always with ``keep`` and the last one."""
    if len(steps) <= limit:
        return steps
    idx = np.unique(np.round(np.geomspace(1, len(steps), limit)).astype(int) - 1)
    chosen = {steps[i] for i in idx} | ({s for s in keep} & set(steps)) | {steps[-1]}
    return sorted(chosen)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _bold_max(cells: list[Stat | None]) -> list[str]:
    means = [c.mean for c in cells if c is not None]
    top = max(means) if means else None
    return ["–" if c is None else f"**{c.pct()}**" if len(means) > 1 and c.mean == top else c.pct() for c in cells]


@dataclass(frozen=True)
class Section:
    """A titled piece of the report: markdown text, and the context it was computed in."""

    title: str
    body: str
    context: dict[str, Any] | None = None


def _not_covered(title: str, why: str) -> Section:
    return Section(title, f"_Not covered by this sweep: {why}._")


def _seeds_note(stats: Iterable[Stat | None]) -> str:
    ns = sorted({s.n for s in stats if s is not None})
    return "seeds per cell: " + ("–" if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}")


def table1(res: Results) -> list[Section]:
    """Student top-1 by teacher accuracy × step, one table per soft strategy (A as reference)."""
    sections = []
    for strategy in ("B", "C"):
        title = f"Table 1{'' if strategy == 'B' else 'c'}: Strategy {strategy}, student top-1 (%) by teacher accuracy and step"
        soft = res.select(strategy=strategy)
        if not soft:
            continue
        ctx = res.pick_context(soft + res.select(strategy="A"),
                               lambda rs: len(res.teachers([r for r in rs if r.strategy == strategy])))
        runs = res.select(soft, **ctx)
        ref = res.select(res.select(strategy="A"), **ctx)
        teachers = res.teachers(runs)
        groups = [res.select(runs, teacher_acc=t) for t in teachers] + ([ref] if ref else [])
        steps = _thin(res.steps_of(runs + ref), res.budgets)
        header = ["Step"] + [f"T {teacher_label(t)}" for t in teachers] + (["A (one-hot)"] if ref else [])
        rows, stats = [], []
        for step in steps:
            cells = [res.stat(g, step) for g in groups]
            stats += cells
            soft_cells = _bold_max(cells[: len(teachers)])
            rows.append([str(step)] + soft_cells + ([cells[-1].pct() if cells[-1] else "–"] if ref else []))
        caption = (f"{describe_context(ctx)}; mean over seeds ({_seeds_note(stats)}); bold = best teacher "
                   f"per step. Teacher column = preset ladder accuracy"
                   + "".join(f"; {teacher_label(t)} measured {res.measured(runs, t):.1%}"
                             for t in teachers if res.measured(runs, t)) + ".")
        sections.append(Section(title, caption + "\n\n" + _md_table(header, rows), ctx))
    return sections or [_not_covered("Table 1: student top-1 by teacher accuracy and step", "no Strategy B or C runs")]


def _budget_steps(res: Results, runs: list[RunRow]) -> list[int]:
    have = set(res.steps_of(runs))
    budgets = [b for b in res.budgets if b in have]
    return budgets or sorted(have)[-1:]


def table2(res: Results) -> Section:
    """B vs C per teacher at each step budget, with the Gain row C/B."""
    title = "Table 2: Strategy B vs C, student top-1 (%) and Gain = C / B"
    soft = res.select(strategy="B") + res.select(strategy="C")

    def paired(rs: list[RunRow]) -> int:
        return len(set(res.teachers(res.select(rs, strategy="B"))) & set(res.teachers(res.select(rs, strategy="C"))))

    ctx = res.pick_context(soft, paired)
    if ctx is None:
        return _not_covered(title, "no teacher has both Strategy B and C runs")
    runs = res.select(soft, **ctx)
    teachers = [t for t in res.teachers(runs) if res.select(runs, teacher_acc=t, strategy="B")
                and res.select(runs, teacher_acc=t, strategy="C")]
    header = ["Step", "Strategy"] + [teacher_label(t) for t in teachers]
    rows, stats = [], []
    for step in _budget_steps(res, runs):
        b = [res.stat(res.select(runs, strategy="B", teacher_acc=t), step) for t in teachers]
        c = [res.stat(res.select(runs, strategy="C", teacher_acc=t), step) for t in teachers]
        stats += b + c
        gains = []
        for bs, cs in zip(b, c):
            gain = cs.mean / bs.mean if bs and cs and bs.mean > 0 else None
            gains.append("–" if gain is None else f"**{gain:.2f}**" if gain > 1 else f"{gain:.2f}")
        rows += [[str(step), "B"] + [x.pct() if x else "–" for x in b],
                 ["", "C"] + [x.pct() if x else "–" for x in c],
                 ["", "Gain"] + gains]
    caption = f"{describe_context(ctx)}; mean over seeds ({_seeds_note(stats)}); bold Gain > 1 (C ahead)."
    return Section(title, caption + "\n\n" + _md_table(header, rows), ctx)


def table3(res: Results) -> Section:
    """Teacher augmentation × teacher accuracy (Strategy B, or C without B) at the longest budget."""
    title = "Table 3: teacher augmentation × teacher accuracy, student top-1 (%)"
    strategy = "B" if res.select(strategy="B") else "C"
    soft = res.select(strategy=strategy)
    axes = ("student_aug", "ipc", "fraction")
    ctx = res.pick_context(soft, lambda rs: len({(r.teacher_aug, r.teacher_acc) for r in rs}), axes)
    if ctx is None:
        return _not_covered(title, "no Strategy B or C runs")
    runs = res.select(soft, **ctx)
    augs = sorted({r.teacher_aug for r in runs})
    teachers = res.teachers(runs)
    step = max(_budget_steps(res, runs))
    cells = {(a, t): res.stat(res.select(runs, teacher_aug=a, teacher_acc=t), step) for a in augs for t in teachers}
    rows = []
    for a in augs:
        rows.append([a] + [cells[(a, t)].pct() if cells[(a, t)] else "–" for t in teachers])
    for j, t in enumerate(teachers):  # bold the best augmentation per teacher accuracy, as the paper
        col = [cells[(a, t)] for a in augs]
        for i, text in enumerate(_bold_max(col)):
            rows[i][j + 1] = text
    note = "" if len(augs) > 1 else " Only one teacher augmentation was swept, so this compares nothing yet."
    caption = (f"Strategy {strategy} at step {step}; {describe_context(ctx)}; mean over seeds "
               f"({_seeds_note(cells.values())}); bold = best augmentation per column.{note}")
    header = ["Teacher aug"] + [teacher_label(t) for t in teachers]
    return Section(title, caption + "\n\n" + _md_table(header, rows), ctx)


def table4(res: Results) -> Section:
    """Every configuration at its longest evaluated budget: mean ± std over seeds."""
    title = "Table 4: every configuration, mean ± std over seeds, student top-1 (%)"
    if not res.runs:
        return _not_covered(title, "no finished runs")
    groups: dict[tuple, list[RunRow]] = {}
    for r in res.runs:
        groups.setdefault(_condition(r), []).append(r)
    rows = []
    order = sorted(groups, key=lambda c: (c[0], c[2] or "", c[1] or 0, c[3], res.size(c[4], c[5])))
    for cond in order:
        runs = groups[cond]
        step = max(r.steps for r in runs)
        stat = res.stat(runs, step)
        if stat is None:
            continue
        strategy, t_acc, t_aug, s_aug, ipc, frac = cond
        rows.append([strategy, "–" if t_acc is None else teacher_label(t_acc), t_aug or "–", s_aug,
                     subset_name(ipc, frac), str(step), stat.pm(), str(stat.n)])
    header = ["Strategy", "Teacher", "Teacher aug", "Student aug", "Subset", "Step", "Top-1 (%)", "Seeds"]
    return Section(title, _md_table(header, rows))


def _mean_sd(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    stat = Stat.of(values)
    return f"{stat.mean * scale:.{digits}f} ± {stat.std * scale:.{digits}f}"


def diagnosed(res: Results) -> list[RunRow]:
    """Finished runs whose diagnostics were measured (none in sweeps from before them)."""
    return [r for r in res.runs if r.target_entropy is not None]


def table_diagnostics(res: Results) -> Section | None:
    """Per configuration: the teacher's accuracy, the target entropy, the student's agreement with
    the teacher and its final accuracy, mean ± sd over seeds; ``None`` without diagnostics."""
    runs = diagnosed(res)
    if not runs:
        return None
    groups: dict[tuple, list[RunRow]] = {}
    for r in runs:
        groups.setdefault(_condition(r) + (r.steps,), []).append(r)
    rows = []
    for cond in sorted(groups, key=lambda c: (c[0], c[2] or "", c[1] or 0, c[3], res.size(c[4], c[5]), c[6])):
        group = groups[cond]
        strategy, t_acc, t_aug, s_aug, ipc, frac, steps = cond
        measured = [r.teacher_acc_measured for r in group if r.teacher_acc_measured is not None]
        agreements = [r.agreement for r in group if r.agreement is not None]
        compared = sorted({r.agreement_teacher for r in group if r.agreement_teacher})
        rows.append([strategy, "–" if t_acc is None else teacher_label(t_acc), t_aug or "–", s_aug,
                     subset_name(ipc, frac), str(steps), f"{np.mean(measured):.1%}" if measured else "–",
                     _mean_sd([r.target_entropy for r in group], scale=1, digits=3),
                     _mean_sd(agreements) if agreements else "–", ", ".join(compared) or "–",
                     _mean_sd([r.final_acc for r in group if r.final_acc is not None]), str(len(group))])
    header = ["Strategy", "Teacher", "Teacher aug", "Student aug", "Subset", "Steps", "Teacher top-1",
              "Target entropy (nats)", "Agreement (%)", "Agreement with", "Student top-1 (%)", "Seeds"]
    caption = ("Target entropy: mean entropy of the run's targets (A one-hot: 0; B the teacher on un-augmented "
               "training images of the run's subset; C its cache rows), at the sweep's temperature. Agreement: "
               "share of a seeded, class-stratified test subset on which the student's h and the named teacher "
               "predict the same class (A: the strongest teacher of its paired soft runs). Mean ± sd over seeds; "
               "see docs/sweeps.md, \"Diagnostics\".")
    return Section("Target entropy and teacher–student agreement", caption + "\n\n" + _md_table(header, rows))


def soft_gaps(res: Results) -> list[tuple[RunRow, float]]:
    """Each B or C run with its soft − one-hot gap: its final accuracy minus that of the A run paired
    with it (same student augmentation, subset, steps and seed), where both exist."""
    ones = {(r.student_aug, r.ipc, r.fraction, r.steps, r.seed): r for r in res.select(strategy="A")}
    pairs = []
    for r in res.runs:
        a = ones.get((r.student_aug, r.ipc, r.fraction, r.steps, r.seed))
        if r.strategy != "A" and a is not None and r.final_acc is not None and a.final_acc is not None:
            pairs.append((r, r.final_acc - a.final_acc))
    return pairs


def fig_diagnostics(res: Results):
    """Left: agreement and final accuracy vs the teacher's accuracy, per strategy. Right: the
    soft − one-hot gap vs the target entropy, per configuration (seed means, ±1 sd bars)."""
    import matplotlib.pyplot as plt

    runs = [r for r in diagnosed(res) if r.teacher_acc_measured is not None and r.agreement is not None]
    if not runs:
        return None, None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.6))
    colors = {"A": "crimson", "B": "tab:blue", "C": "tab:orange"}
    groups: dict[tuple, list[RunRow]] = {}
    for r in runs:
        groups.setdefault(_condition(r) + (r.steps,), []).append(r)
    for strategy in ("B", "C"):
        conds = sorted((c for c in groups if c[0] == strategy), key=lambda c: c[1])
        for i, cond in enumerate(conds):
            group = groups[cond]
            x = float(np.mean([r.teacher_acc_measured for r in group])) * 100
            for key, marker, what in (("agreement", "o", "agreement with its teacher"),
                                      ("final_acc", "s", "student top-1")):
                stat = Stat.of([getattr(r, key) for r in group])
                left.errorbar(x, stat.mean * 100, stat.std * 100, color=colors[strategy], marker=marker, capsize=3,
                              mfc=colors[strategy] if key == "agreement" else "white", ls="none",
                              label=f"{strategy}: {what}" if i == 0 else None)
    lims = [min(left.get_xlim()[0], left.get_ylim()[0]), max(left.get_xlim()[1], left.get_ylim()[1])]
    left.plot(lims, lims, ":", color="grey", lw=1, label="y = teacher top-1")
    left.set_xlabel("Teacher top-1 accuracy (%), measured")
    left.set_ylabel("%")
    left.set_title("Agreement and accuracy vs teacher accuracy", fontsize=9)
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    gaps: dict[tuple, list[tuple[RunRow, float]]] = {}
    for r, gap in soft_gaps(res):
        if r.target_entropy is not None:
            gaps.setdefault(_condition(r) + (r.steps,), []).append((r, gap))
    for cond, pairs in sorted(gaps.items(), key=lambda kv: str(kv[0])):
        strategy, t_acc, t_aug, s_aug, ipc, frac, _ = cond
        ent = Stat.of([r.target_entropy for r, _ in pairs])
        gap = Stat.of([g for _, g in pairs])
        right.errorbar(ent.mean, gap.mean * 100, gap.std * 100, xerr=ent.std, color=colors[strategy], marker="o",
                       capsize=3, ls="none")
        right.annotate(f"{strategy} {teacher_label(t_acc)} {t_aug}, {s_aug}, {subset_name(ipc, frac)}",
                       (ent.mean, gap.mean * 100), fontsize=6, xytext=(3, 3), textcoords="offset points")
    right.margins(x=0.3)  # room for the labels right of the points
    right.axhline(0, color="grey", lw=1, ls=":")
    right.set_xlabel("Target entropy (nats)")
    right.set_ylabel("Soft − one-hot top-1, paired by seed (points)")
    right.set_title("Soft − one-hot gap vs target entropy", fontsize=9)
    right.grid(alpha=0.3)
    seeds = sorted({len(g) for g in groups.values()})
    fig.suptitle(f"{res.name}: diagnostics, mean ± sd over {seeds[0]}–{seeds[-1]} seeds per point"
                 if len(seeds) > 1 else f"{res.name}: diagnostics, mean ± sd over {seeds[0]} seeds per point",
                 fontsize=10)
    fig.tight_layout()
    return fig, None


# -- figures -------------------------------------------------------------------------------


def _colors(n: int, cmap: str) -> list:
    import matplotlib

    m = matplotlib.colormaps[cmap]
    return [m(0.35 + 0.6 * i / max(1, n - 1)) for i in range(n)]


SMOOTH_FROM_STEPS = 20  # below this many evaluations a LOWESS line through them only hides the data


def _plot_band(ax, res: Results, runs: list[RunRow], label: str, color, style: str = "-") -> None:
    """Mean over seeds at each evaluation with a ±1 sd seed band; with many evaluations the
    line is the paper's LOWESS of every seed's points instead of the raw mean."""
    steps = res.steps_of(runs)
    stats = [(s, res.stat(runs, s)) for s in steps]
    stats = [(s, st) for s, st in stats if st is not None]
    if not stats:
        return
    xs = np.array([s for s, _ in stats], dtype=float)
    mean = np.array([st.mean for _, st in stats]) * 100
    sd = np.array([st.std for _, st in stats]) * 100
    ax.fill_between(xs, mean - sd, mean + sd, color=color, alpha=0.15, linewidth=0)
    if len(xs) >= SMOOTH_FROM_STEPS:
        x, y = res.points(runs)
        xs, ys = lowess_curve(x, y)
        ax.plot(xs, ys * 100, style, color=color, label=label, lw=1.8)
    else:
        ax.plot(xs, mean, style, color=color, label=label, lw=1.8, marker=".", ms=4)


def _epoch_axis(ax, res: Results, runs: list[RunRow], where: str = "top") -> None:
    """A second x axis in epochs of the runs' training subset (when its size is known)."""
    per_step = res.epochs_per_step(runs)
    if per_step:
        sec = ax.secondary_xaxis(where, functions=(lambda x: x * per_step, lambda e: e / per_step))
        sec.set_xlabel(f"Epochs of {subset_name(runs[0].ipc, runs[0].fraction)}", fontsize=8)


def _teacher_lines(ax, res: Results, runs: list[RunRow], colors: dict) -> None:
    """Each teacher's own measured accuracy, dotted in its students' colour."""
    for t, color in colors.items():
        acc = res.measured(runs, t)
        if acc:
            ax.axhline(acc * 100, color=color, ls=":", lw=1)
            ax.annotate(f"teacher {acc:.1%}", (1.0, acc * 100), xycoords=("axes fraction", "data"), fontsize=7,
                        color=color, ha="right", va="bottom")


def fig_acc_vs_step(res: Results):
    """Accuracy vs step: A, B and C per teacher in one panel (Figures 3 and 4), seed bands,
    each teacher's own accuracy as a reference line, epochs on the top axis."""
    import matplotlib.pyplot as plt

    soft = res.select(strategy="B") + res.select(strategy="C")
    if not soft:
        return None, None
    ctx = res.pick_context(soft + res.select(strategy="A"), lambda rs: len({(r.strategy, r.teacher_acc) for r in rs}))
    runs = res.select(soft, **ctx)
    ref = res.select(res.select(strategy="A"), **ctx)
    teachers = res.teachers(runs)
    colors = dict(zip(teachers, _colors(len(teachers), "viridis")))
    fig, ax = plt.subplots(figsize=(7.4, 5.0))
    if ref:
        _plot_band(ax, res, ref, "A (one-hot)", "crimson")
    for s, style in (("B", "-"), ("C", "--")):
        for t in teachers:
            sel = res.select(runs, strategy=s, teacher_acc=t)
            if sel:
                _plot_band(ax, res, sel, f"{s}, teacher {teacher_label(t)}", colors[t], style)
    _teacher_lines(ax, res, runs, colors)
    _epoch_axis(ax, res, runs + ref)
    ax.set_xlabel("Training step")
    ax.set_ylabel("Student top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    seeds = _seeds_note(res.stat(g, res.steps_of(g)[-1]) for g in [ref] + [runs] if g and res.steps_of(g))
    fig.suptitle(f"{res.name}: {describe_context(ctx)}; {seeds}\nlines: mean over seeds; bands: ±1 sd; "
                 "dotted: the teacher's own accuracy", fontsize=9)
    fig.tight_layout()
    return fig, ctx


def _ipc_axis(res: Results, runs: list[RunRow]) -> list[tuple[int | None, float | None]]:
    """Subsets of ``runs`` that have a position on an IPC axis, smallest first."""
    subsets = {(r.ipc, r.fraction) for r in runs if math.isfinite(res.size(r.ipc, r.fraction))}
    return sorted(subsets, key=lambda s: res.size(*s))


def _ipc_runs(res: Results) -> list[RunRow]:
    """Runs with a position on an IPC axis (full-split runs need the dataset's size)."""
    return [r for r in res.runs if math.isfinite(res.size(r.ipc, r.fraction))]


def _scaling_lines(res: Results, runs: list[RunRow], step: int) -> tuple[list[float], list[Stat]]:
    xs, stats = [], []
    for ipc, frac in _ipc_axis(res, runs):
        stat = res.stat(res.select(runs, ipc=ipc, fraction=frac), step)
        if stat is not None:
            xs.append(res.size(ipc, frac))
            stats.append(stat)
    return xs, stats


def _scaling_ax(ax, title: str, res: Results | None = None, runs: list[RunRow] = (), step: int | None = None) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("Images per class (log scale)" + ("; epochs at the step budget below each" if runs else ""))
    if res is not None and step is not None:
        ticks = []
        for ipc, frac in _ipc_axis(res, list(runs)):
            run = res.select(runs, ipc=ipc, fraction=frac)[0]
            ep = res.epochs(run, step)
            ticks.append((res.size(ipc, frac), f"{res.size(ipc, frac):g}" + ("" if ep is None else f"\n{ep:.3g} ep")))
        if ticks:
            ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=7)
            ax.minorticks_off()
    ax.set_ylabel("Student top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def fig_acc_vs_ipc(res: Results):
    """Accuracy vs IPC (log x) per strategy and teacher (Figure 6), each teacher's own accuracy dotted."""
    import matplotlib.pyplot as plt

    pool = _ipc_runs(res)
    ctx = res.pick_context(pool, lambda rs: len(_ipc_axis(res, rs)) if len(_ipc_axis(res, rs)) > 1 else 0,
                           ("teacher_aug", "student_aug"))
    if ctx is None:
        return None, None
    runs = res.select(pool, **ctx)
    step = min(r.steps for r in runs)
    fig, ax = plt.subplots(figsize=(6.6, 4.6))
    ref = res.select(runs, strategy="A")
    if ref:
        xs, stats = _scaling_lines(res, ref, step)
        ax.errorbar(xs, [s.mean * 100 for s in stats], [s.std * 100 for s in stats], color="crimson",
                    marker="o", capsize=3, label="A (one-hot)")
    reference: dict[float, Any] = {}
    for s, cmap, marker in (("B", "Blues", "s"), ("C", "Oranges", "^")):
        sel = res.select(runs, strategy=s)
        teachers = res.teachers(sel)
        for t, color in zip(teachers, _colors(len(teachers), cmap)):
            xs, stats = _scaling_lines(res, res.select(sel, teacher_acc=t), step)
            ax.errorbar(xs, [v.mean * 100 for v in stats], [v.std * 100 for v in stats], color=color,
                        marker=marker, capsize=3, label=f"{s}, teacher {teacher_label(t)}")
            reference.setdefault(t, color)
    _teacher_lines(ax, res, runs, reference)
    _scaling_ax(ax, f"{res.name}: accuracy vs IPC at step {step}\n{describe_context(ctx)}", res, runs, step)
    fig.tight_layout()
    return fig, ctx


def fig_aug_scaling(res: Results):
    """Student augmentation × strategy scaling over IPC (Figure 7), strongest teacher."""
    import matplotlib.pyplot as plt

    runs = _ipc_runs(res)
    augs = sorted({r.student_aug for r in runs})
    if len(augs) < 2:
        return None, None
    ctx = res.pick_context(runs, lambda rs: len({(r.strategy, r.student_aug) for r in rs}), ("teacher_aug",))
    runs = res.select(runs, **ctx) if ctx else runs
    strategies = [s for s in ("A", "B", "C") if res.select(runs, strategy=s)]
    teachers = res.teachers(runs)
    top = teachers[-1] if teachers else None
    step = min(r.steps for r in runs)
    colors = dict(zip(augs, _colors(len(augs), "tab10")))
    fig, axes = plt.subplots(1, len(strategies), figsize=(5.2 * len(strategies), 4.4), squeeze=False, sharey=True)
    for ax, s in zip(axes[0], strategies):
        sel = res.select(runs, strategy=s) if s == "A" else res.select(runs, strategy=s, teacher_acc=top)
        for aug in augs:
            xs, stats = _scaling_lines(res, res.select(sel, student_aug=aug), step)
            if xs:
                ax.errorbar(xs, [v.mean * 100 for v in stats], [v.std * 100 for v in stats], marker="o",
                            capsize=3, color=colors[aug], label=f"student {aug}")
        _scaling_ax(ax, f"Strategy {s}" + ("" if s == "A" else f" (teacher {teacher_label(top)})"), res, sel, step)
    fig.suptitle(f"{res.name}: augmentation × strategy scaling at step {step}", fontsize=10)
    fig.tight_layout()
    return fig, ctx


def budget_matched(res: Results) -> dict[str, Any] | None:
    """Figure 1's comparison: soft targets on ~10 % of the data vs one-hot on the most data.

    The one-hot side is Strategy A on the largest subset; the soft side is B and C with
    the strongest teacher on the subset closest to a tenth of it (log distance), both in
    one student augmentation, compared at every budget both reached. Strategy A on the
    small subset (``A_small``) is the control: what the small subset gives without soft targets.
    """
    ones = res.select(strategy="A")
    if not ones:
        return None
    big = max({(r.ipc, r.fraction) for r in ones}, key=lambda s: res.size(*s))
    soft = [r for r in res.runs if r.strategy != "A" and res.size(r.ipc, r.fraction) < res.size(*big)]
    if not soft:
        return None
    target = res.size(*big) / 10
    small = min({(r.ipc, r.fraction) for r in soft},
                key=lambda s: abs(math.log(res.size(*s) / target)) if math.isfinite(target) else -res.size(*s))
    ctx = res.pick_context(soft, lambda rs: len(res.select(rs, ipc=small[0], fraction=small[1])),
                           ("teacher_aug", "student_aug"))
    a_runs = res.select(ones, ipc=big[0], fraction=big[1], student_aug=ctx["student_aug"])
    soft = res.select(soft, ipc=small[0], fraction=small[1], **ctx)
    top = res.teachers(soft)[-1]
    bars = {"A": a_runs, "A_small": res.select(ones, ipc=small[0], fraction=small[1], student_aug=ctx["student_aug"])}
    bars.update({s: res.select(soft, strategy=s, teacher_acc=top) for s in ("B", "C")})
    bars = {k: v for k, v in bars.items() if v}
    steps = [s for s in _budget_steps(res, sum(bars.values(), []))
             if all(res.stat(v, s) for v in bars.values())]
    if not a_runs or len(bars) < 2 or not steps:
        return None
    return {"big": big, "small": small, "teacher": top, "context": ctx, "steps": steps,
            "values": {k: [res.stat(v, s) for s in steps] for k, v in bars.items()}}


def _share(res: Results, subset: tuple[int | None, float | None]) -> str:
    """`` (10% of the data)`` when the full split's size is known, else nothing."""
    full = res.size(None, None)
    if not math.isfinite(full) or subset == (None, None):
        return ""
    return f" ({res.size(*subset) / full:.0%} of the data)"


def fig_budget_matched(res: Results):
    import matplotlib.pyplot as plt

    data = budget_matched(res)
    if data is None:
        return None, None
    steps, values = data["steps"], data["values"]
    big, small = (subset_name(*sub) + _share(res, sub) for sub in (data["big"], data["small"]))
    labels = {"A": f"one-hot (A) on {big}", "A_small": f"one-hot (A) on {small} (control)",
              "B": f"soft (B) on {small}", "C": f"soft (C) on {small}"}
    colors = {"A": "crimson", "A_small": "lightcoral", "B": "tab:blue", "C": "tab:orange"}
    fig, ax = plt.subplots(figsize=(max(6.4, 1.8 * len(steps) + 2), 4.6))
    width = 0.8 / len(values)
    for i, (k, stats) in enumerate(values.items()):
        pos = np.arange(len(steps)) + (i - (len(values) - 1) / 2) * width
        bars = ax.bar(pos, [s.mean * 100 for s in stats], width, yerr=[s.std * 100 for s in stats], capsize=3,
                      color=colors[k], label=labels[k])
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    subsets = {"big": data["big"], "small": data["small"]}
    per = {k: res.epochs_per_step(res.select(ipc=v[0], fraction=v[1])) for k, v in subsets.items()}
    ax.set_xticks(np.arange(len(steps)), [f"{s} steps" + "".join(
        f"\n{s * per[k]:.3g} ep of {subset_name(*subsets[k])}" for k in ("big", "small") if per[k]) for s in steps],
        fontsize=8)
    ax.set_xlabel("Training budget (same number of steps for every bar)")
    ax.set_ylabel("Student top-1 accuracy (%)")
    ax.set_title(f"{res.name}: soft targets on less data vs one-hot on more\n"
                 f"teacher {teacher_label(data['teacher'])}, student aug {data['context']['student_aug']}", fontsize=10)
    top = max(s.mean + s.std for stats in values.values() for s in stats) * 100
    ax.set_ylim(0, top * 1.3)  # headroom for the legend above the bars
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig, data["context"]


FIGURES = {
    "fig_acc_vs_step.png": ("Accuracy vs training step (Figures 3 and 4)", fig_acc_vs_step),
    "fig_acc_vs_ipc.png": ("Accuracy vs images per class (Figure 6)", fig_acc_vs_ipc),
    "fig_aug_scaling.png": ("Augmentation × strategy scaling (Figure 7)", fig_aug_scaling),
    "fig_budget_matched.png": ("Budget-matched soft targets on less data vs one-hot on more (Figure 1)",
                               fig_budget_matched),
}

DIAGNOSTICS_FIGURES = {
    "fig_diagnostics.png": ("Teacher–student agreement and target entropy", fig_diagnostics),
}


# -- the report -------------------------------------------------------------------------


def wall_time(res: Results) -> tuple[float, float | None]:
    """(seconds of student training summed over runs, hours from the first run's end to the
    last's — the sweep's span, ``None`` when the runs carry no timestamps)."""
    from datetime import datetime

    total = sum(r.wall_s or 0.0 for r in res.runs)
    stamps = sorted(datetime.fromisoformat(r.updated_at) for r in res.runs if r.updated_at)
    span = (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else None
    return total, span


def closing_lines(res: Results, claims: list) -> list[str]:
    """The six verdicts with their decisive intervals, and the time the runs took."""
    from fasttarget.claims import summary

    total, span = wall_time(res)
    lines = [f"- ({c.key}) **{c.verdict}** {summary(c)}" + (f" ({c.pairs} seed pairs)" if c.pairs else "")
             for c in claims]
    lines.append(f"- Student training: {total / 3600:.2f} h summed over {len(res.runs)} runs"
                 + ("" if span is None else f"; {span / 3600:.2f} h from the first run's end to the last's "
                    "(ladders, caches and the first runs come before)") + ".")
    return lines


def write_report(directory: Path, out: Path | None = None) -> list[Path]:
    """Write ``report.md``, ``claims.md``, ``claims.json``, the figures and ``results.csv``.

    Args:
        directory: the sweep directory (its ``results.sqlite``).
        out: where to write (default ``directory``).

    Returns:
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fasttarget.claims import check_claims, claims_markdown

    directory = Path(directory)
    out = Path(out or directory)
    out.mkdir(parents=True, exist_ok=True)
    res = Results.load(directory)
    if (directory / INDEX_FILE).is_file():
        index = ResultsIndex.open_existing(directory)
        try:
            index.write_csv(out / CSV_FILE)
        finally:
            index.close()
    elif out.resolve() != directory.resolve():  # a report redone from the committed CSV
        for name in (CSV_FILE, META_FILE):
            if (directory / name).is_file():
                shutil.copyfile(directory / name, out / name)
    written = [out / CSV_FILE] if (directory / INDEX_FILE).is_file() or out.resolve() != directory.resolve() else []

    claims = check_claims(res)
    claims_md = claims_markdown(claims)
    (out / "claims.md").write_text(f"# Claim check: {res.name}\n\n{claims_md}\n")
    (out / "claims.json").write_text(json.dumps([c.to_json() for c in claims], indent=1) + "\n")
    written += [out / "claims.md", out / "claims.json"]

    lines = [f"# Sweep report: {res.name}", "",
             f"Runs: {', '.join(f'{n} {s}' for s, n in sorted(res.statuses.items()))}. "
             f"Accuracies are the linear classifier h's top-1 on the test split, in %.", "",
             "## Claim check (the paper's findings a–f)", "", claims_md, ""]
    sections = table1(res) + [table2(res), table3(res), table4(res), table_diagnostics(res)]
    for section in filter(None, sections):
        lines += [f"## {section.title}", "", section.body, ""]
    lines += ["## Figures", ""]
    # The diagnostics figure only where they were measured: older sweeps' reports stay as they were.
    figures = {**FIGURES, **(DIAGNOSTICS_FIGURES if diagnosed(res) else {})}
    for name, (title, make) in figures.items():
        fig, ctx = make(res)
        if fig is None:
            lines += [f"### {title}", "", "_Not covered by this sweep: the runs it needs are missing._", ""]
            continue
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    if res.failed:
        lines += ["## Failed runs", "", _md_table(["Run", "Error"], [[r.run_id, r.error or ""] for r in res.failed]),
                  ""]
    lines += ["## Summary", "", *closing_lines(res, claims), ""]
    (out / "report.md").write_text("\n".join(lines))
    written.insert(0, out / "report.md")
    return written
