"""Claim checker on synthetic result tables built to support, contradict, leave open or not cover each finding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_report import make_run, results

from fasttarget.claims import (
    CONTRADICTED,
    INCONCLUSIVE,
    MIN_PAIRS,
    NOT_COVERED,
    SUPPORTED,
    TOO_FEW,
    Contrast,
    check_claims,
    claim_a,
    claim_b,
    claim_c,
    claim_d,
    claim_e,
    claim_f,
    claims_markdown,
)

SEEDS = (0, 1, 2, 3, 4)
# A seed moves every run it trains (same init, order, subset): a shared offset of several
# points, far larger than the effects. Only pairing by seed sees through it.
OFFSET = {s: o for s, o in zip(range(10), (0.03, -0.025, 0.01, -0.035, 0.02, 0.0, 0.015, -0.01, 0.025, -0.02))}
JITTER = {(s, k): j for (s, k), j in np.ndenumerate(np.random.default_rng(7).normal(0, 0.002, (10, 40)))}


def at(value: float, seed: int, k: int = 0, jitter: float = 1.0):
    """A constant curve ``value`` moved by the seed's offset and a small condition-specific jitter."""
    v = value + OFFSET[seed] + jitter * JITTER[(seed, k)]
    return lambda s: v


def saturating(start: float, ceiling: float, rate: float, seed: int, k: int):
    off = OFFSET[seed] + JITTER[(seed, k)]
    return lambda s: ceiling - (ceiling - start) * math.exp(-s / rate) + off


def curves(a_ceiling: float, seeds=SEEDS):
    """A slow one-hot curve to ``a_ceiling``, faster soft curves capped near their teacher."""
    pairs = []
    for seed in seeds:
        pairs.append(make_run("A", seed, saturating(0.10, a_ceiling, 60, seed, 0)))
        pairs.append(make_run("B", seed, saturating(0.35, 0.40, 10, seed, 1), teacher=0.3))
        pairs.append(make_run("B", seed, saturating(0.25, 0.60, 25, seed, 2), teacher=0.5))
        pairs.append(make_run("B", seed, saturating(0.15, 0.65, 40, seed, 3), teacher=0.7))
    return pairs


def test_t_interval_is_the_textbook_one():
    c = Contrast("x", diffs=(0.01, 0.02, 0.03), seeds=(0, 1, 2))
    half = 4.302653 * 0.01 / math.sqrt(3)  # t(0.975, 2) · sd / √n
    assert c.interval == pytest.approx((0.02 - half, 0.02 + half), abs=1e-7)
    assert c.verdict == INCONCLUSIVE  # +2 ± 2.5 points: three pairs are not enough for this spread
    assert Contrast("x", (0.02, 0.025, 0.03), (0, 1, 2)).verdict == SUPPORTED
    assert Contrast("x", (-0.02, -0.025, -0.03), (0, 1, 2)).verdict == CONTRADICTED
    assert Contrast("x", (0.05, 0.06), (0, 1)).verdict == TOO_FEW and MIN_PAIRS == 3


def test_pairing_by_seed_sees_a_small_effect_through_large_seed_offsets():
    # B is 1 point above A on every seed; the seeds spread both by ±3.5 points.
    pairs = [p for seed in SEEDS for p in (make_run("A", seed, at(0.50, seed, 0, jitter=0)),
                                           make_run("B", seed, at(0.51, seed, 1, jitter=0.5), teacher=0.5))]
    res = results(pairs)
    a, b = res.stat(res.select(strategy="A"), 10), res.stat(res.select(strategy="B"), 10)
    assert abs(b.mean - a.mean) < min(a.std, b.std) / 2  # unpaired, the effect drowns in seed noise
    early = claim_a(res).contrasts[0]
    assert early.mean == pytest.approx(0.01, abs=0.001) and early.verdict == SUPPORTED
    assert early.seeds == SEEDS


def test_a_supported_when_soft_leads_early_and_one_hot_wins_at_the_end():
    claim = claim_a(results(curves(a_ceiling=0.9)))
    assert claim.verdict == SUPPORTED, claims_markdown([claim])
    early, final = claim.contrasts
    assert early.label.startswith("B (teacher 70%) − A at step 10") and early.n == 5
    assert final.label.startswith("A − B (teacher 70%) at step 100") and final.mean > 0.1


def test_a_contradicted_when_one_hot_ends_below_the_soft_student():
    claim = claim_a(results(curves(a_ceiling=0.5)))
    assert claim.verdict == CONTRADICTED
    assert claim.contrasts[0].verdict == SUPPORTED and claim.contrasts[1].verdict == CONTRADICTED


def test_a_inconclusive_when_the_final_gap_is_within_seed_noise():
    pairs = []
    for seed in SEEDS:  # same ceiling; the end difference is the ±2-point jitter alone
        pairs.append(make_run("A", seed, lambda s, seed=seed: 0.1 + 0.5 * s / 100 + OFFSET[seed]
                              + 0.02 * (-1) ** seed))
        pairs.append(make_run("B", seed, lambda s, seed=seed: 0.3 + 0.3 * s / 100 + OFFSET[seed], teacher=0.7))
    claim = claim_a(results(pairs))
    assert claim.contrasts[1].verdict == INCONCLUSIVE and claim.verdict == INCONCLUSIVE


def test_too_few_seeds_says_so_instead_of_a_verdict():
    claims = check_claims(results(curves(a_ceiling=0.9, seeds=(0, 1))))
    assert claims[0].verdict == TOO_FEW and claims[1].verdict == TOO_FEW
    text = claims_markdown(claims)
    assert "**too few seeds**" in text and "2 pairs → too few seeds" in text


def test_b_supported_strong_teacher_final_weak_teacher_early():
    claim = claim_b(results(curves(a_ceiling=0.9)))
    assert claim.verdict == SUPPORTED, claims_markdown([claim])
    assert claim.contrasts[0].label.startswith("B teacher 70% − teacher 30% at step 100")
    assert "mean over step 10–20" in claim.contrasts[1].label


def test_b_contradicted_when_the_strongest_teacher_also_leads_early():
    pairs = [make_run("B", s, lambda x, t=t, s=s: t * (0.5 + x / 200) + OFFSET[s] + JITTER[(s, int(t * 10))],
                      teacher=t) for s in SEEDS for t in (0.3, 0.7)]
    claim = claim_b(results(pairs))
    assert claim.verdict == CONTRADICTED and claim.contrasts[1].verdict == CONTRADICTED


def bc(ipc, b_c_by_teacher, seeds=SEEDS):
    return [p for seed in seeds for k, (t, b, c) in enumerate(b_c_by_teacher) for p in (
        make_run("B", seed, at(b, seed, 2 * k), teacher=t, ipc=ipc),
        make_run("C", seed, at(c, seed, 2 * k + 1), teacher=t, ipc=ipc))]


def test_c_supported_on_the_full_split():
    claim = claim_c(results(bc(None, [(0.3, 0.35, 0.40), (0.7, 0.70, 0.71)]) + bc(10, [(0.7, 0.5, 0.3)]),
                            dataset_ipc=5000))
    assert claim.verdict == SUPPORTED and "full training split" in claim.context
    assert claim.contrasts[0].mean == pytest.approx(0.03, abs=0.002)  # mean of +5 and +1 points


def test_c_contradicted_and_not_covered_without_sufficient_data():
    assert claim_c(results(bc(None, [(0.7, 0.70, 0.65)]), dataset_ipc=5000)).verdict == CONTRADICTED
    small = claim_c(results(bc(10, [(0.7, 0.3, 0.4)])))
    assert small.verdict == NOT_COVERED and "largest it has is IPC 10" in small.notes[0]


def ipc_grid(a_large: float, sizes=((10, 0.15, 0.35), (50, 0.25, 0.42), (500, None, 0.48))):
    pairs = []
    for seed in SEEDS:
        for k, (ipc, a, b) in enumerate(sizes):
            pairs.append(make_run("A", seed, at(a if a is not None else a_large, seed, 2 * k), ipc=ipc, steps=50))
            pairs.append(make_run("B", seed, at(b, seed, 2 * k + 1), teacher=0.5, ipc=ipc, steps=50))
    return pairs


def test_e_supported_as_a_trend_across_ipc():
    claim = claim_e(results(ipc_grid(a_large=0.55)))
    assert claim.verdict == SUPPORTED, claims_markdown([claim])
    small, slope, large = claim.contrasts
    # gaps +20, +17, −7 points over log10 IPC 1, 1.7, 2.7: least-squares slope ≈ −15.1 per decade
    x = np.log10([10, 50, 500])
    assert slope.mean == pytest.approx(-np.polyfit(x, [0.20, 0.17, -0.07], 1)[0], abs=0.003)
    assert "IPC 10 +20" in claim.notes[0]


def test_e_inconclusive_when_the_gap_only_shrinks():
    claim = claim_e(results(ipc_grid(a_large=0.48)))
    assert claim.verdict == INCONCLUSIVE
    assert [c.verdict for c in claim.contrasts] == [SUPPORTED, SUPPORTED, INCONCLUSIVE]


def test_e_contradicted_when_one_hot_wins_with_little_data():
    claim = claim_e(results(ipc_grid(a_large=0.55, sizes=((10, 0.40, 0.30), (50, 0.45, 0.40), (500, None, 0.48)))))
    assert claim.verdict == CONTRADICTED


def test_e_two_subsets_have_no_trend_contrast():
    claim = claim_e(results(ipc_grid(a_large=0.55, sizes=((10, 0.15, 0.35), (500, None, 0.48)))))
    assert len(claim.contrasts) == 2 and "no trend contrast" in claim.notes[-1]


def aug_grid(mix_gain: float):
    pairs = []
    for seed in SEEDS:
        for k, (t, std) in enumerate(((0.3, 0.40), (0.5, 0.55))):
            pairs.append(make_run("B", seed, at(std, seed, 4 * k), teacher=t, taug="stdaug"))
            pairs.append(make_run("B", seed, at(std + mix_gain, seed, 4 * k + 1), teacher=t, taug="mixup"))
        for k, (aug, a, b) in enumerate((("crop", 0.50, 0.44), ("mixup", 0.40, 0.52), ("stdaug", 0.45, 0.48))):
            pairs.append(make_run("A", seed, at(a, seed, 10 + k), saug=aug, ipc=50))
            pairs.append(make_run("B", seed, at(b, seed, 20 + k), teacher=0.5, taug="stdaug", saug=aug, ipc=50))
    return pairs


def test_d_supported_and_f_supported_from_augmentation_axes():
    res = results(aug_grid(mix_gain=-0.005))
    d = claim_d(res)
    assert d.verdict == SUPPORTED, claims_markdown([d])
    assert d.contrasts[0].no_gain and "mixup-trained teacher − of a stdaug-trained" in d.contrasts[0].label
    assert d.contrasts[1].label.startswith("(2) B student with stdaug − with crop")
    f = claim_f(res)
    assert f.verdict == SUPPORTED, claims_markdown([f])
    assert "A with crop − with stdaug" in f.contrasts[0].label
    assert "with mixup − with stdaug" in f.contrasts[1].label


def test_d_contradicted_when_mix_teachers_consistently_help():
    d = claim_d(results(aug_grid(mix_gain=0.03)))
    assert d.verdict == CONTRADICTED and d.contrasts[0].verdict == CONTRADICTED


def test_d_inconclusive_when_the_mix_gain_may_exceed_the_margin():
    pairs = aug_grid(mix_gain=0.0)
    noisy = [(r, [e.__class__(e.run_id, e.step, e.test_acc_h + (0.02 if r.seed % 2 else -0.01)) for e in ev])
             if r.teacher_aug == "mixup" else (r, ev) for r, ev in pairs]
    noisy = [(r.__class__(**{**r.__dict__, "final_acc": None}), ev) for r, ev in noisy]
    assert claim_d(results(noisy)).contrasts[0].verdict == INCONCLUSIVE


def test_half_covered_findings_are_never_supported():
    only_a = [p for p in aug_grid(0.0) if p[0].strategy == "A"]
    f = claim_f(results(only_a))
    assert f.verdict == INCONCLUSIVE and "soft half" in f.notes[0]


def test_everything_not_covered_without_soft_targets_names_what_is_needed():
    claims = check_claims(results([make_run("A", s, at(0.5, s)) for s in SEEDS]))
    assert [c.verdict for c in claims] == [NOT_COVERED] * 6
    assert all("would need" in " ".join(c.notes) for c in claims)


@pytest.mark.parametrize("check", [claim_a, claim_b, claim_c, claim_d, claim_e, claim_f])
def test_empty_results_are_not_covered(check):
    assert check(results([])).verdict == NOT_COVERED


def test_markdown_shows_every_interval():
    claims = check_claims(results(curves(a_ceiling=0.9) + ipc_grid(0.55) + aug_grid(-0.005), dataset_ipc=5000))
    text = claims_markdown(claims)
    for c in claims:
        for x in c.contrasts:
            lo, hi = x.interval
            assert f"[{lo * 100:+.2f}, {hi * 100:+.2f}]" in text
    assert "95 % t interval" in text
