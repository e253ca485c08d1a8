"""Loss math against hand-computed values, and the separation of h from φ."""

import math

import pytest
import torch
import torch.nn.functional as F

from fasttarget.errors import UserError
from fasttarget.losses import build_student, hard_targets, kl_to_target, loss_terms, soft_cross_entropy
from fasttarget.models import ModelConfig


class _Record:
    """The contract's AugRecord.mix for a known permutation and λ."""

    def __init__(self, perm, lam):
        self.mix_perm, self.mix_lam = perm, lam

    def mix(self, t):
        return self.mix_lam[:, None] * t + (1 - self.mix_lam[:, None]) * t[self.mix_perm]


def test_kl_matches_hand_computed_value():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    target = torch.tensor([[0.5, 0.25, 0.25]])
    T = 2.0
    z = [0.5, 0.0, -0.5]
    norm = sum(math.exp(v) for v in z)
    q = [math.exp(v) / norm for v in z]
    expected = sum(p * math.log(p / qi) for p, qi in zip([0.5, 0.25, 0.25], q))
    assert kl_to_target(target, logits, T).item() == pytest.approx(expected, rel=1e-6)


def test_kl_is_a_batch_mean_and_zero_at_the_target():
    logits = torch.randn(4, 10)
    target = F.softmax(logits / 2.0, dim=1)
    assert kl_to_target(target, logits, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    other = F.softmax(torch.randn(4, 10), dim=1)
    per_row = [kl_to_target(other[i : i + 1], logits[i : i + 1], 2.0).item() for i in range(4)]
    assert kl_to_target(other, logits, 2.0).item() == pytest.approx(sum(per_row) / 4, rel=1e-5)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kl_with_one_hot_target_equals_cross_entropy(T):
    torch.manual_seed(0)
    logits = torch.randn(16, 10) * 3
    labels = torch.randint(0, 10, (16,))
    onehot = F.one_hot(labels, 10).float()
    assert kl_to_target(onehot, logits, T).item() == pytest.approx(F.cross_entropy(logits / T, labels).item(), rel=1e-6)


def test_soft_cross_entropy_with_mixed_labels_is_lambda_weighted_ce():
    torch.manual_seed(1)
    logits = torch.randn(6, 5)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    lam = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    mixed = hard_targets(labels, 5, _Record(perm, lam))
    expected = (
        lam * F.cross_entropy(logits, labels, reduction="none")
        + (1 - lam) * F.cross_entropy(logits, labels[perm], reduction="none")
    ).mean()
    assert soft_cross_entropy(logits, mixed).item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(hard_targets(labels, 5), F.one_hot(labels, 5).float())


def test_loss_terms_names_and_sum():
    logits_g = torch.tensor([[0.0, 2.0]])
    logits_h = torch.tensor([[1.0, 0.0]])
    soft = torch.tensor([[0.2, 0.8]])
    hard = torch.tensor([[0.0, 1.0]])
    terms = loss_terms(logits_g, logits_h, soft, hard, temperature=2.0)
    q1 = math.exp(1.0) / (1 + math.exp(1.0))  # softmax([0, 1])[1]
    loss_b = 0.2 * math.log(0.2 / (1 - q1)) + 0.8 * math.log(0.8 / q1)
    loss_h = math.log(1 + math.exp(1.0))  # -log softmax([1, 0])[1]
    assert terms["loss_b"].item() == pytest.approx(loss_b, rel=1e-6)
    assert terms["loss_h"].item() == pytest.approx(loss_h, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(loss_b + loss_h, rel=1e-6)


def _backbone_grads(net):
    return [p.grad for p in net.backbone.parameters()]


def test_classifier_loss_sends_no_gradient_into_the_backbone():
    torch.manual_seed(0)
    net = build_student(ModelConfig(width=0.125), "separation")
    x = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 3])
    g, h = net(x)
    terms = loss_terms(g, h, F.softmax(torch.randn(4, 10), 1), hard_targets(labels, 10), 2.0)
    terms["loss_h"].backward()
    assert all(grad is None for grad in _backbone_grads(net))
    assert net.g.weight.grad is None
    assert net.h.weight.grad is not None and net.h.weight.grad.abs().sum() > 0

    net.zero_grad(set_to_none=True)
    g, h = net(x)
    terms = loss_terms(g, h, F.softmax(torch.randn(4, 10), 1), hard_targets(labels, 10), 2.0)
    terms["loss_b"].backward()
    assert net.h.weight.grad is None
    assert sum(grad.abs().sum() for grad in _backbone_grads(net)) > 0


def test_coupled_student_has_one_head_trained_end_to_end():
    torch.manual_seed(0)
    net = build_student(ModelConfig(width=0.125), "coupled")
    assert net.g is None
    g, h = net(torch.randn(4, 3, 32, 32))
    assert g is h
    soft_cross_entropy(h, hard_targets(torch.tensor([0, 1, 2, 3]), 10)).backward()
    assert sum(grad.abs().sum() for grad in _backbone_grads(net)) > 0


def test_unknown_loss_is_a_user_error():
    with pytest.raises(UserError, match="unknown loss"):
        build_student(ModelConfig(width=0.125), "dkd")
