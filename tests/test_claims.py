"""Claim checker on synthetic results built to support, contradict or not cover each finding."""

from __future__ import annotations

import math

import pytest
from test_report import const, make_run, results

from fasttarget.claims import NOT_COVERED, NOT_SUPPORTED, SUPPORTED, check_claims, claim_a, claim_b, claim_c
from fasttarget.claims import claim_d, claim_e, claim_f


def saturating(start: float, ceiling: float, rate: float):
    """Accuracy rising from ``start`` towards ``ceiling``."""
    return lambda s: ceiling - (ceiling - start) * math.exp(-s / rate)


SEEDS = (0, 1, 2)


def steps_grid(a_ceiling: float):
    """A slow one-hot curve to ``a_ceiling`` and fast soft curves capped near the teacher."""
    pairs = []
    for seed in SEEDS:
        j = seed / 1000
        pairs.append(make_run("A", seed, lambda s: saturating(0.1, a_ceiling, 60)(s) + j))
        pairs.append(make_run("B", seed, lambda s: saturating(0.35, 0.40, 10)(s) + j, teacher=0.3))
        pairs.append(make_run("B", seed, lambda s: saturating(0.25, 0.60, 25)(s) + j, teacher=0.5))
        pairs.append(make_run("B", seed, lambda s: saturating(0.15, 0.65, 40)(s) + j, teacher=0.7))
    return pairs


def test_a_supported_when_soft_leads_early_and_one_hot_wins_at_the_end():
    claim = claim_a(results(steps_grid(a_ceiling=0.9)))
    assert claim.verdict == SUPPORTED and claim.seeds == 3
    assert claim.evidence[0].startswith("step 10: B (teacher 30%)")
    assert any(e.startswith("step 100: A ") for e in claim.evidence)


def test_a_not_supported_when_one_hot_never_catches_up():
    claim = claim_a(results(steps_grid(a_ceiling=0.5)))
    assert claim.verdict == NOT_SUPPORTED
    assert "has not overtaken" in claim.notes[0]


def test_b_supported_strong_teacher_final_weak_teacher_early():
    claim = claim_b(results(steps_grid(a_ceiling=0.9)))
    assert claim.verdict == SUPPORTED, claim
    assert "best final: teacher 70%; best early: teacher 50%" in claim.notes[0]  # a medium teacher, as Table 1


def test_b_not_supported_when_the_strongest_teacher_also_leads_early():
    pairs = [make_run("B", s, lambda x, t=t: t * (0.5 + x / 200), teacher=t) for s in SEEDS for t in (0.3, 0.7)]
    assert claim_b(results(pairs)).verdict == NOT_SUPPORTED


def test_c_counts_teachers_where_c_beats_b():
    pairs = []
    for seed in SEEDS:
        for t, b, c in ((0.3, 0.35, 0.45), (0.5, 0.50, 0.56), (0.7, 0.70, 0.68)):
            pairs.append(make_run("B", seed, const(b + seed / 1000), teacher=t))
            pairs.append(make_run("C", seed, const(c + seed / 1000), teacher=t))
    claim = claim_c(results(pairs))
    assert claim.verdict == SUPPORTED and claim.notes == ("C ahead for 2 of 3 teachers",)
    assert "gain 1.28" in claim.evidence[0]  # 45.1 / 35.1


def ipc_grid(a_large: float):
    pairs = []
    for seed in SEEDS:
        for ipc, a, b in ((10, 0.15, 0.35), (50, 0.25, 0.42), (500, a_large, 0.48)):
            pairs.append(make_run("A", seed, const(a), ipc=ipc, steps=50))
            pairs.append(make_run("B", seed, const(b), teacher=0.5, ipc=ipc, steps=50))
    return pairs


def test_e_supported_when_one_hot_overtakes_with_more_data():
    claim = claim_e(results(ipc_grid(a_large=0.55)))
    assert claim.verdict == SUPPORTED and claim.seeds == 3
    assert "+20.0 → -7.0" in claim.notes[0]


def test_e_not_supported_when_the_soft_advantage_only_shrinks():
    claim = claim_e(results(ipc_grid(a_large=0.45)))
    assert claim.verdict == NOT_SUPPORTED
    assert "has not overtaken by IPC 500" in claim.notes[1]


def test_d_and_f_from_augmentation_axes():
    pairs = []
    for seed in SEEDS:
        for t, std, mix in ((0.3, 0.40, 0.36), (0.5, 0.55, 0.58)):
            pairs.append(make_run("B", seed, const(std), teacher=t, taug="stdaug"))
            pairs.append(make_run("B", seed, const(mix), teacher=t, taug="mixup"))
        for aug, a, b in (("crop", 0.50, 0.44), ("mixup", 0.40, 0.52), ("stdaug", 0.45, 0.48)):
            pairs.append(make_run("A", seed, const(a), saug=aug, ipc=50))
            pairs.append(make_run("B", seed, const(b), teacher=0.5, taug="stdaug", saug=aug, ipc=50))
    res = results(pairs)
    d = claim_d(res)
    assert d.verdict == SUPPORTED, d
    assert d.notes == ("(1) mix-trained teacher not better at 1 of 2 accuracies",
                       "(2) student crop worse at 1 of 1 teacher accuracies")
    f = claim_f(res)
    assert f.verdict == SUPPORTED
    assert f.evidence[0].startswith("Strategy A: crop 50.00") and "best mixup" in f.evidence[1]


def test_everything_not_covered_without_soft_targets():
    claims = check_claims(results([make_run("A", s, const(0.5)) for s in SEEDS]))
    assert [c.verdict for c in claims] == [NOT_COVERED] * 6
    assert all(c.notes for c in claims)


@pytest.mark.parametrize("check", [claim_a, claim_b, claim_c, claim_d, claim_e, claim_f])
def test_empty_results_are_not_covered(check):
    assert check(results([])).verdict == NOT_COVERED
