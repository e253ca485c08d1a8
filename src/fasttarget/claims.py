"""Check a sweep's results against the paper's six findings (a)–(f), with paired statistics.

Runs of one sweep are paired by seed: the seed fixes the initialization, data order,
subset and augmentation parameters, and nothing else does (:mod:`fasttarget.sweep.plan`).
So every finding is tested on **per-seed differences** between two conditions, never on
two means with their own spreads. Each finding is one or more *contrasts*; a contrast is
the per-seed differences (in accuracy points) oriented so that the finding predicts a
positive mean, their mean, and a 95 % **t interval over seeds**
(``mean ± t(0.975, n − 1) · sd / √n``).

Why a t interval and not a bootstrap: sweeps have 3–5 seeds. A percentile bootstrap over
n = 5 differences can only resample 5 values, its interval is systematically too narrow
(it ignores that sd itself is estimated from 5 numbers), and it says "significant" too
often. The t interval widens with the t quantile exactly for that (12.7 at n = 2, 4.3 at
n = 3, 2.8 at n = 5); it assumes roughly normal per-seed differences, which the sweep's
differences of two accuracies averaged over 10k test images are.

Verdicts of a contrast: ``supported`` (the interval excludes 0 in the predicted
direction), ``contradicted`` (it excludes 0 the other way), ``inconclusive`` (it contains
0). A finding is *supported* when all of its contrasts are, *contradicted* when any is,
else *inconclusive*; with fewer than :data:`MIN_PAIRS` seed pairs in any contrast it says
``too few seeds`` instead of a verdict; ``not covered`` names the runs the sweep would
need. (d)(1) is a "no consistent gain" claim: it is supported when the interval's upper end
stays below :data:`NO_GAIN_MARGIN` (an improvement, if any, smaller than one point) and
contradicted when the interval lies above 0.

The contrasts, each in the condition the finding states (a context is chosen among the
sweep's runs as in :mod:`fasttarget.report`; "strongest teacher" = highest preset accuracy):

(a) on the largest subset with A and B: B (strongest teacher) − A at the first shared
    evaluation (soft targets are faster early), and A − B at the last (one-hot ends higher).
(b) among B students: strongest − weakest teacher at the last evaluation, and weakest −
    strongest averaged over the early window (evaluations in the first quarter of training).
(c) C − B at the last evaluation, averaged over the teachers both ran with, on the largest
    subset, which must hold at least :data:`SUFFICIENT_IPC` images per class.
(d) (1) B student of a MixUp/CutMix-trained teacher − that of a StdAug (else NoAug) teacher
    of the same preset accuracy, averaged over the accuracies: no consistent gain;
    (2) B student with StdAug − with RandomResizedCrop (``crop``), teachers not trained
    with crop, averaged over teachers: student crop hurts.
(e) the soft − one-hot gap (B, strongest teacher shared by every subset, minus A, at each
    subset's last evaluation): > 0 on the smallest subset; its least-squares slope against
    log10(images per class), negated, > 0 (the gap shrinks with data); and A − B > 0 on the
    largest subset (one-hot wins with more data).
(f) one-hot: A with crop − A with the best other student augmentation; soft: B (strongest
    teacher) with the best mix (``mixup``/``cutmix``) − with the best non-mix augmentation.

Example:
    >>> c = Contrast("B − A", diffs=(0.02, 0.03, 0.025), seeds=(0, 1, 2))
    >>> c.verdict, round(c.mean * 100, 2), [round(x * 100, 2) for x in c.interval]
    ('supported', 2.5, [1.26, 3.74])
    >>> Contrast("B − A", diffs=(0.02, -0.03, 0.01), seeds=(0, 1, 2)).verdict
    'inconclusive'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from fasttarget.report import MIX_AUGS, Results, describe_context, subset_name, teacher_label
from fasttarget.results import RunRow

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
NOT_COVERED = "not covered"
TOO_FEW = "too few seeds"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_COVERED, TOO_FEW)

MIN_PAIRS = 3  # at 2 pairs the t quantile is 12.7: no interval says anything
CONFIDENCE = 0.95
NO_GAIN_MARGIN = 0.01  # (d)(1): a gain below one accuracy point is "no consistent gain"
SUFFICIENT_IPC = 500  # (c): "with sufficient training data"; the paper's C gain shows on the full split

FINDINGS = {
    "a": "Soft targets expedite early-stage training, but one-hot targets yield superior final accuracy.",
    "b": "Stronger teacher models enhance final performance, but weak ones aid early learning.",
    "c": "With sufficient training data, noise in soft targets can be reduced by Strategy C, "
         "improving final accuracy.",
    "d": "Teacher models trained with augmentations like MixUp do not consistently improve student "
         "performance, while RandomResizedCrop adversely affects student training.",
    "e": "With limited data, soft targets provide advantages, but larger sample sizes favor one-hot targets.",
    "f": "RandomResizedCrop is most effective for one-hot targets, while Mixed-based augmentation excels "
         "with soft targets.",
}

PerSeed = dict[int, float]


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided t quantile of a mean over ``n`` values (``n − 1`` degrees of freedom).

    Example:
        >>> round(t_quantile(5), 3)
        2.776
    """
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, n - 1))


@dataclass(frozen=True)
class Contrast:
    """Per-seed differences (fractions) oriented so the finding predicts a positive mean.

    Args:
        label: what is subtracted from what, and where.
        diffs, seeds: one difference per seed pair.
        no_gain: a "does not consistently improve" contrast (see the module docstring).
    """

    label: str
    diffs: tuple[float, ...]
    seeds: tuple[int, ...]
    no_gain: bool = False

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return float(np.mean(self.diffs)) if self.diffs else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """The 95 % t interval of the mean difference (NaN below two pairs)."""
        if self.n < 2:
            return math.nan, math.nan
        half = t_quantile(self.n) * float(np.std(self.diffs, ddof=1)) / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def verdict(self) -> str:
        if self.n < MIN_PAIRS:
            return TOO_FEW
        lo, hi = self.interval
        if self.no_gain:
            return CONTRADICTED if lo > 0 else SUPPORTED if hi < NO_GAIN_MARGIN else INCONCLUSIVE
        return SUPPORTED if lo > 0 else CONTRADICTED if hi < 0 else INCONCLUSIVE

    def text(self) -> str:
        """``label: +2.50 points [+1.26, +3.74], 3 pairs → supported``."""
        lo, hi = self.interval
        ci = "no interval" if math.isnan(lo) else f"[{lo * 100:+.2f}, {hi * 100:+.2f}]"
        bound = f"; supported below +{NO_GAIN_MARGIN * 100:g}" if self.no_gain else ""
        return f"{self.label}: {self.mean * 100:+.2f} points {ci}{bound}, {self.n} pairs → {self.verdict}"

    def to_json(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {"label": self.label, "verdict": self.verdict, "mean": self.mean, "ci95": [lo, hi],
                "pairs": self.n, "seeds": list(self.seeds), "diffs": list(self.diffs), "no_gain": self.no_gain}


@dataclass(frozen=True)
class Claim:
    """The verdict on one finding and the contrasts behind it."""

    key: str
    verdict: str
    contrasts: tuple[Contrast, ...] = ()
    context: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def finding(self) -> str:
        return FINDINGS[self.key]

    @property
    def pairs(self) -> int | None:
        return min(c.n for c in self.contrasts) if self.contrasts else None

    def to_json(self) -> dict[str, Any]:
        return {"finding": self.key, "text": self.finding, "verdict": self.verdict, "pairs": self.pairs,
                "context": self.context, "contrasts": [c.to_json() for c in self.contrasts],
                "notes": list(self.notes)}


def combine(contrasts: Iterable[Contrast]) -> str:
    """A finding's verdict from its contrasts' (see the module docstring)."""
    verdicts = [c.verdict for c in contrasts]
    if not verdicts:
        return NOT_COVERED
    if TOO_FEW in verdicts:
        return TOO_FEW
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return SUPPORTED if all(v == SUPPORTED for v in verdicts) else INCONCLUSIVE


def half_verdict(half: Contrast) -> str:
    """The verdict on a two-part finding of which one part was run: it can be contradicted
    by that part, never supported by it alone."""
    return half.verdict if half.verdict in (TOO_FEW, CONTRADICTED) else INCONCLUSIVE


def _claim(key: str, contrasts: list[Contrast], ctx: dict[str, Any] | None, notes: Iterable[str] = ()) -> Claim:
    return Claim(key, combine(contrasts), tuple(contrasts), describe_context(ctx), tuple(notes))


def _uncovered(key: str, needs: str) -> Claim:
    return Claim(key, NOT_COVERED, notes=(f"the sweep would need {needs}",))


# -- per-seed values --------------------------------------------------------------------


def _minus(x: PerSeed, y: PerSeed) -> PerSeed:
    return {s: x[s] - y[s] for s in sorted(x.keys() & y.keys())}


def _average(parts: list[PerSeed]) -> PerSeed:
    """Per seed, the mean over ``parts`` (seeds present in every part)."""
    if not parts:
        return {}
    seeds = set.intersection(*(set(p) for p in parts))
    return {s: float(np.mean([p[s] for p in parts])) for s in sorted(seeds)}


def contrast(label: str, diffs: PerSeed, no_gain: bool = False) -> Contrast:
    return Contrast(label, tuple(diffs.values()), tuple(diffs), no_gain)


def _final_step(res: Results, *groups: list[RunRow]) -> int | None:
    steps = res.common_steps(groups)
    return steps[-1] if steps else None


def _at_final(res: Results, *groups: list[RunRow]) -> tuple[list[PerSeed], int | None]:
    """Each group's per-seed accuracy at the last evaluation all groups share."""
    step = _final_step(res, *groups)
    return ([res.per_seed(g, step) for g in groups] if step is not None else [{} for _ in groups]), step


def _early(res: Results, runs: list[RunRow], window: list[int]) -> PerSeed:
    """Per seed, the mean accuracy over the ``window`` steps."""
    return _average([res.per_seed(runs, s) for s in window])


# -- the findings ------------------------------------------------------------------------


def claim_a(res: Results) -> Claim:
    pool = res.select(strategy="A") + res.select(strategy="B")
    ctx = res.pick_context(pool, lambda rs: len(res.teachers(rs)) if res.select(rs, strategy="A") else 0)
    if ctx is None:
        return _uncovered("a", "Strategy A and B runs with the same student augmentation and subset")
    runs = res.select(pool, **ctx)
    a = res.select(runs, strategy="A")
    top = res.teachers(runs)[-1]
    b = res.select(runs, strategy="B", teacher_acc=top)
    steps = res.common_steps([a, b])
    if len(steps) < 2:
        return _uncovered("a", "A and B runs evaluated at two or more shared steps")
    early, final = steps[0], steps[-1]
    t = teacher_label(top)
    return _claim("a", [
        contrast(f"B (teacher {t}) − A at step {early} (first evaluation)", _minus(res.per_seed(b, early),
                                                                                   res.per_seed(a, early))),
        contrast(f"A − B (teacher {t}) at step {final} (last)", _minus(res.per_seed(a, final), res.per_seed(b, final))),
    ], ctx, [res.when(runs, early), res.when(runs, final)])


def claim_b(res: Results) -> Claim:
    b_all = res.select(strategy="B")
    ctx = res.pick_context(b_all, lambda rs: len(res.teachers(rs)) if len(res.teachers(rs)) > 1 else 0)
    if ctx is None:
        return _uncovered("b", "Strategy B runs with two or more teacher accuracies")
    runs = res.select(b_all, **ctx)
    teachers = res.teachers(runs)
    weak, strong = res.select(runs, teacher_acc=teachers[0]), res.select(runs, teacher_acc=teachers[-1])
    steps = res.common_steps([weak, strong])
    if len(steps) < 2:
        return _uncovered("b", "B runs of the weakest and strongest teacher evaluated at two or more shared steps")
    final = steps[-1]
    window = [s for s in steps if s <= final / 4] or steps[:1]
    w, s = teacher_label(teachers[0]), teacher_label(teachers[-1])
    span = f"step {window[0]}" + (f"–{window[-1]}" if len(window) > 1 else "")
    return _claim("b", [
        contrast(f"B teacher {s} − teacher {w} at step {final} (last)",
                 _minus(res.per_seed(strong, final), res.per_seed(weak, final))),
        contrast(f"B teacher {w} − teacher {s}, mean over {span} (first quarter)",
                 _minus(_early(res, weak, window), _early(res, strong, window))),
    ], ctx, [res.when(runs, window[-1]), res.when(runs, final)])


def claim_c(res: Results) -> Claim:
    soft = res.select(strategy="B") + res.select(strategy="C")

    def shared(rs: list[RunRow]) -> list[float]:
        return sorted(set(res.teachers(res.select(rs, strategy="B"))) & set(res.teachers(res.select(rs, strategy="C"))))

    ctx = res.pick_context(soft, lambda rs: res.size(rs[0].ipc, rs[0].fraction) if shared(rs) else 0)
    needs = f"Strategy B and C runs with the same teachers on the full split or ≥ {SUFFICIENT_IPC} images per class"
    if ctx is None or res.size(ctx["ipc"], ctx["fraction"]) < SUFFICIENT_IPC:
        return _uncovered("c", needs + ("" if ctx is None else f" (the largest it has is {subset_name(ctx['ipc'], ctx['fraction'])})"))
    runs = res.select(soft, **ctx)
    diffs, step = [], None
    for t in shared(runs):
        (c, b), step = _at_final(res, res.select(runs, strategy="C", teacher_acc=t),
                                 res.select(runs, strategy="B", teacher_acc=t))
        diffs.append(_minus(c, b))
    label = ", ".join(teacher_label(t) for t in shared(runs))
    return _claim("c", [contrast(f"C − B at the last evaluation, mean over teachers {label}", _average(diffs))],
                  ctx, [res.when(runs, step)] if step else [])


def _is_mix(aug: str | None) -> bool:
    return aug is not None and any(m in aug for m in MIX_AUGS)


def _baseline(augs: Iterable[str | None]) -> str | None:
    have = set(augs)
    return next((a for a in ("stdaug", "noaug") if a in have), None)


def _d_mix_teachers(res: Results) -> tuple[Contrast | None, dict[str, Any] | None]:
    b_all = res.select(strategy="B")

    def matched(rs: list[RunRow]) -> list[float]:
        base = _baseline(r.teacher_aug for r in rs)
        return [t for t in res.teachers(rs)
                if base and any(_is_mix(r.teacher_aug) for r in res.select(rs, teacher_acc=t))
                and res.select(rs, teacher_acc=t, teacher_aug=base)]

    ctx = res.pick_context(b_all, lambda rs: len(matched(rs)), ("student_aug", "ipc", "fraction"))
    if ctx is None:
        return None, None
    runs = res.select(b_all, **ctx)
    base = _baseline(r.teacher_aug for r in runs)
    diffs, mixes = [], set()
    for t in matched(runs):
        sel = res.select(runs, teacher_acc=t)
        for mix in sorted({r.teacher_aug for r in sel if _is_mix(r.teacher_aug)}):
            (m, b), _ = _at_final(res, res.select(sel, teacher_aug=mix), res.select(sel, teacher_aug=base))
            diffs.append(_minus(m, b))
            mixes.add(mix)
    accs = ", ".join(teacher_label(t) for t in matched(runs))
    return contrast(f"(1) B student of a {'/'.join(sorted(mixes))}-trained teacher − of a {base}-trained one, "
                    f"mean over teacher accuracies {accs}", _average(diffs), no_gain=True), ctx


def _d_student_crop(res: Results) -> tuple[Contrast | None, dict[str, Any] | None]:
    pool = [r for r in res.select(strategy="B") if r.teacher_aug != "crop"]

    def has(rs: list[RunRow]) -> bool:
        augs = {r.student_aug for r in rs}
        return "crop" in augs and _baseline(augs) is not None

    ctx = res.pick_context(pool, lambda rs: len(res.teachers(rs)) if has(rs) else 0, ("teacher_aug", "ipc", "fraction"))
    if ctx is None:
        return None, None
    runs = res.select(pool, **ctx)
    base = _baseline(r.student_aug for r in runs)
    diffs = []
    for t in res.teachers(runs):
        sel = res.select(runs, teacher_acc=t)
        (b, c), _ = _at_final(res, res.select(sel, student_aug=base), res.select(sel, student_aug="crop"))
        diffs.append(_minus(b, c))
    return contrast(f"(2) B student with {base} − with crop (teacher {ctx['teacher_aug']}), mean over teachers",
                    _average([d for d in diffs if d])), ctx


def claim_d(res: Results) -> Claim:
    (mix, mix_ctx), (crop, crop_ctx) = _d_mix_teachers(res), _d_student_crop(res)
    notes = []
    if mix is None:
        notes.append("(1) the sweep would need B runs whose teachers were trained with mixup (or cutmix) and with "
                     "stdaug or noaug, at the same preset accuracies")
    if crop is None:
        notes.append("(2) the sweep would need B runs with student augmentations crop and stdaug (or noaug), "
                     "teachers not trained with crop")
    contrasts = [c for c in (mix, crop) if c is not None]
    if not contrasts:
        return Claim("d", NOT_COVERED, notes=tuple(notes))
    ctx_text = "; ".join(f"{n}: {describe_context(c)}" for n, c in (("(1)", mix_ctx), ("(2)", crop_ctx)) if c)
    verdict = combine(contrasts) if len(contrasts) == 2 else half_verdict(contrasts[0])
    return Claim("d", verdict, tuple(contrasts), ctx_text, tuple(notes))


def claim_e(res: Results) -> Claim:
    pool = [r for r in res.select(strategy="A") + res.select(strategy="B")
            if math.isfinite(res.size(r.ipc, r.fraction))]

    def subsets(rs: list[RunRow]) -> list[tuple[int | None, float | None]]:
        a = {(r.ipc, r.fraction) for r in rs if r.strategy == "A"}
        b = {(r.ipc, r.fraction) for r in rs if r.strategy == "B"}
        return sorted(a & b, key=lambda s: res.size(*s))

    ctx = res.pick_context(pool, lambda rs: len(subsets(rs)) if len(subsets(rs)) > 1 else 0,
                           ("teacher_aug", "student_aug"))
    if ctx is None:
        return _uncovered("e", "Strategy A and B runs on two or more subset sizes (three for a trend), with the "
                               "dataset's images per class known for the full split")
    runs = res.select(pool, **ctx)
    subs = subsets(runs)
    common = [t for t in res.teachers(runs) if all(res.select(runs, teacher_acc=t, ipc=i, fraction=f) for i, f in subs)]
    if not common:
        return _uncovered("e", "one teacher accuracy run with Strategy B on every subset")
    top = common[-1]
    gaps: dict[tuple, PerSeed] = {}
    for ipc, frac in subs:
        sel = res.select(runs, ipc=ipc, fraction=frac)
        (b, a), _ = _at_final(res, res.select(sel, strategy="B", teacher_acc=top), res.select(sel, strategy="A"))
        gaps[(ipc, frac)] = _minus(b, a)
    small, large = subs[0], subs[-1]
    x = np.log10([res.size(*s) for s in subs])
    seeds = sorted(set.intersection(*(set(g) for g in gaps.values())))
    slopes = {s: -float(np.polyfit(x, [gaps[sub][s] for sub in subs], 1)[0]) for s in seeds} if len(subs) > 2 else {}
    t = teacher_label(top)
    contrasts = [contrast(f"B (teacher {t}) − A on {subset_name(*small)}", gaps[small])]
    if slopes:
        contrasts.append(contrast(f"−slope of the B − A gap per decade of images per class over "
                                  f"{', '.join(subset_name(*s) for s in subs)}", slopes))
    contrasts.append(contrast(f"A − B (teacher {t}) on {subset_name(*large)}", {s: -v for s, v in gaps[large].items()}))
    notes = ["gap B − A by subset (mean points): " + ", ".join(
        f"{subset_name(*s)} {np.mean(list(gaps[s].values())) * 100:+.2f}" for s in subs if gaps[s])]
    if not slopes:
        notes.append("two subsets only: no trend contrast (needs three or more subset sizes)")
    return _claim("e", contrasts, ctx, notes)


def _best_by_mean(res: Results, runs: list[RunRow], augs: Iterable[str]) -> str:
    step = _final_step(res, *[res.select(runs, student_aug=a) for a in augs])
    return max(augs, key=lambda a: np.mean(list(res.per_seed(res.select(runs, student_aug=a), step).values()) or [-1]))


def _aug_contrast(res: Results, runs: list[RunRow], mine: list[str], others: list[str], what: str) -> Contrast:
    a, b = _best_by_mean(res, runs, mine), _best_by_mean(res, runs, others)
    (x, y), step = _at_final(res, res.select(runs, student_aug=a), res.select(runs, student_aug=b))
    return contrast(f"{what} with {a} − with {b} (the best other) at step {step}", _minus(x, y))


def claim_f(res: Results) -> Claim:
    def augs(rs: list[RunRow]) -> set[str]:
        return {r.student_aug for r in rs}

    contrasts, ctxs, notes = [], [], []
    a_all = res.select(strategy="A")
    a_ctx = res.pick_context(a_all, lambda rs: len(augs(rs)) if "crop" in augs(rs) and len(augs(rs)) > 1 else 0,
                             ("ipc", "fraction"))
    if a_ctx:
        runs = res.select(a_all, **a_ctx)
        contrasts.append(_aug_contrast(res, runs, ["crop"], sorted(augs(runs) - {"crop"}), "A"))
        ctxs.append(f"A: {describe_context(a_ctx)}")
    else:
        notes.append("one-hot half: the sweep would need Strategy A runs with student crop and another augmentation")
    b_all = res.select(strategy="B")

    def mixed(rs: list[RunRow]) -> int:
        top = res.select(rs, teacher_acc=max(res.teachers(rs), default=None))
        m = {a for a in augs(top) if _is_mix(a)}
        return len(augs(top)) if m and augs(top) - m else 0

    b_ctx = res.pick_context(b_all, mixed, ("teacher_aug", "ipc", "fraction"))
    if b_ctx:
        runs = res.select(b_all, **b_ctx)
        top = res.teachers(runs)[-1]
        runs = res.select(runs, teacher_acc=top)
        mixes = sorted(a for a in augs(runs) if _is_mix(a))
        contrasts.append(_aug_contrast(res, runs, mixes, sorted(augs(runs) - set(mixes)),
                                       f"B (teacher {teacher_label(top)})"))
        ctxs.append(f"B: {describe_context(b_ctx)}")
    else:
        notes.append("soft half: the sweep would need Strategy B runs with a mix student augmentation "
                     "(mixup/cutmix) and a non-mix one")
    if not contrasts:
        return Claim("f", NOT_COVERED, notes=tuple(notes))
    verdict = combine(contrasts) if len(contrasts) == 2 else half_verdict(contrasts[0])
    return Claim("f", verdict, tuple(contrasts), "; ".join(ctxs), tuple(notes))


CHECKS = {"a": claim_a, "b": claim_b, "c": claim_c, "d": claim_d, "e": claim_e, "f": claim_f}


def check_claims(res: Results) -> list[Claim]:
    """Verdicts on findings (a)–(f), in order."""
    return [check(res) for check in CHECKS.values()]


def summary(c: Claim) -> str:
    """The decisive contrast of a finding in one cell: the first one not supported, else the first."""
    if not c.contrasts:
        return "–"
    worst = next((x for x in c.contrasts if x.verdict != SUPPORTED), c.contrasts[0])
    lo, hi = worst.interval
    ci = "" if math.isnan(lo) else f" [{lo * 100:+.2f}, {hi * 100:+.2f}]"
    return f"{worst.mean * 100:+.2f}{ci}"


def claims_markdown(claims: list[Claim]) -> str:
    """A summary table then, per finding, every contrast with its interval and verdict."""
    rows = ["| Finding | Verdict | Mean difference, points [95 % CI] | Seed pairs |", "|---|---|---|---|"]
    rows += [f"| ({c.key}) {c.finding} | **{c.verdict}** | {summary(c)} | {c.pairs if c.pairs else '–'} |"
             for c in claims]
    details = []
    for c in claims:
        details.append(f"**({c.key}) {c.verdict}.**" + (f" Context: {c.context}." if c.context else ""))
        details += [f"- {x.text()}" for x in c.contrasts] + [f"- _{n}_" for n in c.notes]
        details.append("")
    how = (f"Each contrast is a per-seed difference of top-1 accuracy (points), oriented so that the finding "
           f"predicts a positive value; the interval is a 95 % t interval over seed pairs (n − 1 degrees of "
           f"freedom). supported: the interval lies above 0; contradicted: below 0; inconclusive: it contains 0; "
           f"a finding is supported when all of its contrasts are, contradicted when any is. Fewer than "
           f"{MIN_PAIRS} seed pairs: too few seeds, no verdict. The table shows the decisive contrast (the first "
           f"not supported, else the first).")
    return "\n".join(rows) + "\n\n" + how + "\n\n" + "\n".join(details)
