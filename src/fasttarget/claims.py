"""Check a sweep's results against the paper's six findings (a)–(f).

Each finding becomes a rule over means across seeds (:class:`fasttarget.report.Results`);
the verdict is ``supported``, ``not supported`` or ``not covered by this sweep`` (the runs
the rule needs are missing), with the numbers compared and the number of seeds. A
difference smaller than the larger of the two seed standard deviations is flagged
"within seed noise": the direction is reported, but it is weak evidence.

The rules (contexts are chosen as in :mod:`fasttarget.report`):

(a) Soft targets expedite early training, one-hot wins at the end: at the first shared
    evaluation step the best Strategy B student is ahead of A, and at the last shared
    step A is ahead of every B teacher.
(b) Stronger teachers win in the long run, weaker ones help early: among B students, the
    strongest teacher's has the best final accuracy, and a weaker teacher's has the best
    mean accuracy over the early window (evaluations in the first quarter of training).
(c) With enough data Strategy C beats B at the end: on the largest subset, C's final
    accuracy exceeds B's for more than half of the teachers.
(d) MixUp-trained teachers do not consistently help, student RandomResizedCrop hurts:
    (1) for some teacher accuracy, the B student of a mix-trained teacher is not better
    than that of a teacher trained otherwise; (2) a B student trained with ``crop``
    scores below the best other student augmentation (teachers not trained with crop).
(e) Soft targets help with little data, one-hot with more: the best soft student beats A
    on the smallest subset, the soft advantage shrinks with size for every teacher, and
    A beats soft for at least one teacher on the largest subset.
(f) Crop suits one-hot targets, mixes suit soft targets: averaged over subsets, A's best
    student augmentation is ``crop`` and B/C's best is a mix (``mixup``/``cutmix``).

Example:
    >>> from fasttarget.claims import FINDINGS
    >>> FINDINGS["a"]
    'Soft targets expedite early-stage training, but one-hot targets yield superior final accuracy.'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fasttarget.report import (
    MIX_AUGS,
    Results,
    Stat,
    describe_context,
    subset_name,
    teacher_label,
)
from fasttarget.results import RunRow

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
NOT_COVERED = "not covered by this sweep"

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


@dataclass(frozen=True)
class Claim:
    """The verdict on one finding, with the numbers behind it."""

    key: str
    verdict: str
    evidence: tuple[str, ...] = ()
    seeds: int | None = None
    context: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def finding(self) -> str:
        return FINDINGS[self.key]

    def to_json(self) -> dict[str, Any]:
        return {"finding": self.key, "text": self.finding, "verdict": self.verdict, "seeds": self.seeds,
                "context": self.context, "evidence": list(self.evidence), "notes": list(self.notes)}


def _noise(x: Stat, y: Stat) -> str:
    return " (within seed noise)" if abs(x.mean - y.mean) < max(x.std, y.std) else ""


def _cmp(name_x: str, x: Stat, name_y: str, y: Stat) -> str:
    sign = ">" if x.mean > y.mean else "≤"
    return f"{name_x} {x.pct()} {sign} {name_y} {y.pct()}{_noise(x, y)}"


def _min_seeds(stats: list[Stat | None]) -> int | None:
    ns = [s.n for s in stats if s is not None]
    return min(ns) if ns else None


def _uncovered(key: str, why: str) -> Claim:
    return Claim(key, NOT_COVERED, notes=(why,))


def _verdict(ok: bool) -> str:
    return SUPPORTED if ok else NOT_SUPPORTED


def _a_vs_b_context(res: Results) -> tuple[dict[str, Any] | None, list[RunRow], list[RunRow]]:
    pool = res.select(strategy="A") + res.select(strategy="B")
    ctx = res.pick_context(pool, lambda rs: len(res.teachers(rs)) if res.select(rs, strategy="A") else 0)
    if ctx is None:
        return None, [], []
    return ctx, res.select(pool, strategy="A", **ctx), res.select(pool, strategy="B", **ctx)


def claim_a(res: Results) -> Claim:
    ctx, a_runs, b_runs = _a_vs_b_context(res)
    if ctx is None:
        return _uncovered("a", "needs Strategy A and B runs in one setting")
    teachers = res.teachers(b_runs)
    groups = [a_runs] + [res.select(b_runs, teacher_acc=t) for t in teachers]
    steps = res.common_steps(groups)
    if len(steps) < 2:
        return _uncovered("a", "needs at least two shared evaluation steps for A and B")
    early, final = steps[0], steps[-1]
    a_early, a_final = res.stat(a_runs, early), res.stat(a_runs, final)
    b = {t: (res.stat(res.select(b_runs, teacher_acc=t), early), res.stat(res.select(b_runs, teacher_acc=t), final))
         for t in teachers}
    best = max(teachers, key=lambda t: b[t][0].mean)
    soft_faster = b[best][0].mean > a_early.mean
    onehot_final = all(a_final.mean > b[t][1].mean for t in teachers)
    evidence = [f"step {early}: " + _cmp(f"B (teacher {teacher_label(best)})", b[best][0], "A", a_early)]
    evidence += [f"step {final}: " + _cmp("A", a_final, f"B (teacher {teacher_label(t)})", b[t][1]) for t in teachers]
    stats = [a_early, a_final] + [s for pair in b.values() for s in pair]
    notes = []
    if soft_faster and not onehot_final:
        notes.append(f"soft targets lead early, but A has not overtaken every teacher by step {final}")
    return Claim("a", _verdict(soft_faster and onehot_final), tuple(evidence), _min_seeds(stats),
                 describe_context(ctx), tuple(notes))


def claim_b(res: Results) -> Claim:
    b_all = res.select(strategy="B")
    ctx = res.pick_context(b_all, lambda rs: len(res.teachers(rs)) if len(res.teachers(rs)) > 1 else 0)
    if ctx is None:
        return _uncovered("b", "needs Strategy B runs with at least two teacher accuracies")
    runs = res.select(b_all, **ctx)
    teachers = res.teachers(runs)
    groups = {t: res.select(runs, teacher_acc=t) for t in teachers}
    steps = res.common_steps(groups.values())
    if len(steps) < 2:
        return _uncovered("b", "needs at least two shared evaluation steps")
    final = steps[-1]
    window = [s for s in steps if s <= final / 4] or steps[:1]
    finals = {t: res.stat(g, final) for t, g in groups.items()}
    early = {t: Stat.of([res.stat(g, s).mean for s in window]) for t, g in groups.items()}
    strongest = teachers[-1]
    best_final = max(teachers, key=lambda t: finals[t].mean)
    best_early = max(teachers, key=lambda t: early[t].mean)
    evidence = [f"final (step {final}): " + ", ".join(f"teacher {teacher_label(t)} → {finals[t].pct()}"
                                                      for t in teachers),
                f"early (mean over step{'s' if len(window) > 1 else ''} "
                f"{window[0]}{f'–{window[-1]}' if len(window) > 1 else ''}): "
                + ", ".join(f"teacher {teacher_label(t)} → {early[t].pct()}" for t in teachers)]
    notes = [f"best final: teacher {teacher_label(best_final)}; best early: teacher {teacher_label(best_early)}"]
    ok = best_final == strongest and best_early != strongest
    return Claim("b", _verdict(ok), tuple(evidence), _min_seeds(list(finals.values())), describe_context(ctx),
                 tuple(notes))


def claim_c(res: Results) -> Claim:
    soft = res.select(strategy="B") + res.select(strategy="C")

    def paired(rs: list[RunRow]) -> int:
        return len(set(res.teachers(res.select(rs, strategy="B"))) & set(res.teachers(res.select(rs, strategy="C"))))

    # "Sufficient data": prefer the largest subset among contexts with B and C pairs.
    ctx = res.pick_context(soft, lambda rs: res.size(rs[0].ipc, rs[0].fraction) if paired(rs) else 0)
    if ctx is None:
        return _uncovered("c", "needs Strategy B and C runs with the same teacher")
    runs = res.select(soft, **ctx)
    teachers = [t for t in res.teachers(runs)
                if res.select(runs, strategy="B", teacher_acc=t) and res.select(runs, strategy="C", teacher_acc=t)]
    evidence, stats, wins = [], [], 0
    for t in teachers:
        b, c = res.select(runs, strategy="B", teacher_acc=t), res.select(runs, strategy="C", teacher_acc=t)
        step = res.common_steps([b, c])[-1]
        sb, sc = res.stat(b, step), res.stat(c, step)
        stats += [sb, sc]
        wins += sc.mean > sb.mean
        evidence.append(f"teacher {teacher_label(t)}, step {step}: " + _cmp("C", sc, "B", sb)
                        + f", gain {sc.mean / sb.mean:.2f}")
    return Claim("c", _verdict(wins * 2 > len(teachers)), tuple(evidence), _min_seeds(stats),
                 describe_context(ctx), (f"C ahead for {wins} of {len(teachers)} teachers",))


def _is_mix(aug: str | None) -> bool:
    return aug is not None and any(m in aug for m in MIX_AUGS)


def _final_stat(res: Results, runs: list[RunRow]) -> Stat | None:
    return res.stat(runs, min(r.steps for r in runs)) if runs else None


def _best(by_aug: dict[str, Stat], augs: list[str]) -> str:
    return max(augs, key=lambda a: by_aug[a].mean)


def _d_mix_teachers(res: Results) -> tuple[bool | None, list[str], list[Stat], str]:
    """(1): is a mix-trained teacher's B student not better, at some accuracy, than another's?"""
    b_all = res.select(strategy="B")
    ctx = res.pick_context(b_all, lambda rs: len({r.teacher_aug for r in rs if _is_mix(r.teacher_aug)})
                           * len({r.teacher_aug for r in rs if not _is_mix(r.teacher_aug)}),
                           ("student_aug", "ipc", "fraction"))
    runs = res.select(b_all, **ctx) if ctx else []
    evidence, stats, not_better = [], [], []
    for t in res.teachers(runs):
        sel = res.select(runs, teacher_acc=t)
        by_aug = {a: _final_stat(res, res.select(sel, teacher_aug=a)) for a in {r.teacher_aug for r in sel}}
        mixes, others = [a for a in by_aug if _is_mix(a)], [a for a in by_aug if not _is_mix(a)]
        if not mixes or not others:
            continue
        mix, other = _best(by_aug, mixes), _best(by_aug, others)
        stats += [by_aug[mix], by_aug[other]]
        not_better.append(by_aug[mix].mean <= by_aug[other].mean)
        evidence.append(f"teacher {teacher_label(t)}: "
                        + _cmp(f"{mix}-trained teacher", by_aug[mix], f"{other}-trained", by_aug[other]))
    if not not_better:
        return None, [], [], "(1) not covered: needs B runs with mix-trained and other teachers of equal accuracy"
    return (any(not_better), evidence, stats,
            f"(1) mix-trained teacher not better at {sum(not_better)} of {len(not_better)} accuracies")


def _d_student_crop(res: Results) -> tuple[bool | None, list[str], list[Stat], str]:
    """(2): is a B student trained with crop below the best other student augmentation?"""
    pool = [r for r in res.select(strategy="B") if r.teacher_aug != "crop"]
    ctx = res.pick_context(pool, lambda rs: ("crop" in {r.student_aug for r in rs})
                           * (len({r.student_aug for r in rs}) - 1), ("teacher_aug", "ipc", "fraction"))
    runs = res.select(pool, **ctx) if ctx else []
    evidence, stats, hurt = [], [], []
    for t in res.teachers(runs):
        sel = res.select(runs, teacher_acc=t)
        by_aug = {a: _final_stat(res, res.select(sel, student_aug=a)) for a in {r.student_aug for r in sel}}
        if "crop" not in by_aug or len(by_aug) < 2:
            continue
        other = _best(by_aug, [a for a in by_aug if a != "crop"])
        stats += [by_aug["crop"], by_aug[other]]
        hurt.append(by_aug["crop"].mean < by_aug[other].mean)
        evidence.append(f"teacher {teacher_label(t)}: "
                        + _cmp(f"student {other}", by_aug[other], "student crop", by_aug["crop"]))
    if not hurt:
        return None, [], [], "(2) not covered: needs B runs with student aug crop and another student aug"
    return all(hurt), evidence, stats, f"(2) student crop worse at {sum(hurt)} of {len(hurt)} teacher accuracies"


def claim_d(res: Results) -> Claim:
    parts = [_d_mix_teachers(res), _d_student_crop(res)]
    notes = tuple(note for _, _, _, note in parts)
    covered = [ok for ok, _, _, _ in parts if ok is not None]
    if not covered:
        return Claim("d", NOT_COVERED, notes=notes)
    evidence = tuple(e for _, ev, _, _ in parts for e in ev)
    return Claim("d", _verdict(all(covered)), evidence, _min_seeds([s for _, _, st, _ in parts for s in st]),
                 "", notes)


def claim_e(res: Results) -> Claim:
    pool = [r for r in res.runs if res.size(r.ipc, r.fraction) != float("inf")]

    def score(rs: list[RunRow]) -> int:
        a_sizes = {(r.ipc, r.fraction) for r in rs if r.strategy == "A"}
        soft_sizes = {(r.ipc, r.fraction) for r in rs if r.strategy != "A"}
        n = len(a_sizes & soft_sizes)
        return n if n > 1 else 0

    ctx = res.pick_context(pool, score, ("teacher_aug", "student_aug"))
    if ctx is None:
        return _uncovered("e", "needs Strategy A and B/C runs on at least two subset sizes")
    runs = res.select(pool, **ctx)
    a_runs = res.select(runs, strategy="A")
    subsets = sorted({(r.ipc, r.fraction) for r in a_runs} & {(r.ipc, r.fraction) for r in runs if r.strategy != "A"},
                     key=lambda s: res.size(*s))
    small, large = subsets[0], subsets[-1]
    step = min(r.steps for r in runs)
    softs = [(s, t) for s in ("B", "C") for t in res.teachers(res.select(runs, strategy=s))]
    gaps, evidence, stats = {}, [], []
    for sub in (small, large):
        a = res.stat(res.select(a_runs, ipc=sub[0], fraction=sub[1]), step)
        stats.append(a)
        for s, t in softs:
            soft = res.stat(res.select(runs, strategy=s, teacher_acc=t, ipc=sub[0], fraction=sub[1]), step)
            if a is None or soft is None:
                continue
            stats.append(soft)
            gaps[(s, t, sub)] = soft.mean - a.mean
            evidence.append(f"{subset_name(*sub)}, step {step}: "
                            + _cmp(f"{s} (teacher {teacher_label(t)})", soft, "A", a))
    pairs = [(s, t) for s, t in softs if (s, t, small) in gaps and (s, t, large) in gaps]
    if not pairs:
        return _uncovered("e", "no soft strategy was run on both the smallest and the largest subset")
    soft_helps_small = max(gaps[(s, t, small)] for s, t in pairs) > 0
    shrinks = all(gaps[(s, t, large)] < gaps[(s, t, small)] for s, t in pairs)
    onehot_large = any(gaps[(s, t, large)] < 0 for s, t in pairs)
    notes = [f"soft − one-hot gap, {subset_name(*small)} → {subset_name(*large)}: "
             + ", ".join(f"{s}/{teacher_label(t)} {gaps[(s, t, small)] * 100:+.1f} → {gaps[(s, t, large)] * 100:+.1f}"
                         for s, t in pairs)]
    if soft_helps_small and shrinks and not onehot_large:
        notes.append(f"the soft advantage shrinks but one-hot has not overtaken by {subset_name(*large)}")
    return Claim("e", _verdict(soft_helps_small and shrinks and onehot_large), tuple(evidence), _min_seeds(stats),
                 describe_context(ctx), tuple(notes))


def claim_f(res: Results) -> Claim:
    augs = {r.student_aug for r in res.runs}
    if "crop" not in augs or not any(_is_mix(a) for a in augs):
        return _uncovered("f", "needs student augmentations crop and mixup or cutmix")
    evidence, stats, verdicts = [], [], {}
    for s in ("A", "B", "C"):
        sel = res.select(strategy=s)
        if s != "A" and sel:
            ctx = res.pick_context(sel, lambda rs: len({r.student_aug for r in rs}), ("teacher_aug",))
            sel = res.select(sel, teacher_acc=res.teachers(sel)[-1], **ctx)
        # Subsets where crop and a mix were both run; augmentations compared over all of them.
        subsets = [sub for sub in {(r.ipc, r.fraction) for r in sel}
                   if {"crop"} <= (a := {r.student_aug for r in res.select(sel, ipc=sub[0], fraction=sub[1])})
                   and any(_is_mix(x) for x in a)]
        if not subsets:
            continue
        per_aug: dict[str, list[Stat]] = {}
        for ipc, frac in subsets:
            group = res.select(sel, ipc=ipc, fraction=frac)
            for aug in {r.student_aug for r in group}:
                per_aug.setdefault(aug, []).append(_final_stat(res, res.select(group, student_aug=aug)))
        means = {a: sum(x.mean for x in v) / len(v) for a, v in per_aug.items() if len(v) == len(subsets)}
        best = max(means, key=means.get)
        stats += [x for v in per_aug.values() for x in v]
        verdicts[s] = best == "crop" if s == "A" else _is_mix(best)
        evidence.append(f"Strategy {s}: " + ", ".join(f"{a} {m * 100:.2f}" for a, m in
                                                      sorted(means.items(), key=lambda kv: -kv[1]))
                        + f" (mean over {len(subsets)} subset(s); best {best})")
    if "A" not in verdicts or len(verdicts) < 2:
        return _uncovered("f", "needs crop and mix student augmentations for A and for B or C")
    return Claim("f", _verdict(all(verdicts.values())), tuple(evidence), _min_seeds(stats))


CHECKS = {"a": claim_a, "b": claim_b, "c": claim_c, "d": claim_d, "e": claim_e, "f": claim_f}


def check_claims(res: Results) -> list[Claim]:
    """Verdicts on findings (a)–(f), in order."""
    return [check(res) for check in CHECKS.values()]


def claims_markdown(claims: list[Claim]) -> str:
    """A summary table then, per finding, the rule's numbers."""
    rows = ["| Finding | Verdict | Seeds |", "|---|---|---|"]
    rows += [f"| ({c.key}) {c.finding} | **{c.verdict}** | {c.seeds if c.seeds is not None else '–'} |"
             for c in claims]
    details = []
    for c in claims:
        details.append(f"**({c.key}) {c.verdict}.**" + (f" Context: {c.context}." if c.context else ""))
        details += [f"- {e}" for e in c.evidence] + [f"- _{n}_" for n in c.notes]
        details.append("")
    return "\n".join(rows) + "\n\nNumbers are mean top-1 (%) over seeds.\n\n" + "\n".join(details)
