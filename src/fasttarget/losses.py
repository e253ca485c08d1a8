"""The paper's separation loss and plain knowledge distillation ("coupled").

Section 3.2.2 of the paper trains the backbone φ only through a soft-target head ``g``
and the linear classifier ``h`` only on detached features:

- ``L_B = KL(target ‖ softmax(g(φ(x)) / T))`` — the mapping strategy's target (A: one-hot,
  B: the teacher on this view, C: the teacher on the original; all possibly mixed);
- ``L_H = CE(h(φ(x).detach()), y)`` — with MixUp/CutMix the CE is λ-weighted over both
  labels, which equals a soft cross-entropy against the mixed one-hot labels;
- ``L = L_B + L_H``.

The ``coupled`` loss is the same sum on a student with one head that both terms train
end to end (plain KD: CE + KL). Which of the two applies is a property of the
:class:`~fasttarget.models.Student` (``coupled=True`` shares the head and does not
detach), so one function computes both; :func:`build_student` picks the structure.

The KL term is not multiplied by ``T²``: the paper's Eq. (1) has no such factor, and
AdamW's update is insensitive to a constant loss scale anyway.

Example:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0, 0.0]])
    >>> onehot = torch.tensor([[1.0, 0.0, 0.0]])
    >>> terms = loss_terms(logits, logits, onehot, onehot, temperature=1.0)
    >>> round(terms["loss_b"].item(), 4) == round(terms["loss_h"].item(), 4)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fasttarget.choices import LOSSES
from fasttarget.errors import UserError
from fasttarget.models import ModelConfig, Student



def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``-Σ_k target_k · log softmax(logits)_k``.

    With a one-hot ``target`` this is the ordinary cross-entropy; with the mixed one-hot
    ``λ·e_i + (1-λ)·e_j`` it is ``λ·CE(y_i) + (1-λ)·CE(y_j)``.

    Shape:
        ``logits [B,K]``, ``target [B,K]`` (rows sum to 1) → scalar.
    """
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def kl_to_target(target: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Batch mean of ``KL(target ‖ softmax(logits / T))``.

    Zero target entries contribute nothing (``0·log 0 = 0``), so a one-hot target gives
    exactly ``CE(logits / T, label)``.

    Shape:
        ``target [B,K]`` (rows sum to 1), ``logits [B,K]`` → scalar.
    """
    log_q = F.log_softmax(logits.float() / temperature, dim=1)
    return F.kl_div(log_q, target.float(), reduction="batchmean")


def loss_terms(
    logits_g: torch.Tensor,
    logits_h: torch.Tensor,
    soft_targets: torch.Tensor,
    hard_targets: torch.Tensor,
    temperature: float,
) -> dict[str, torch.Tensor]:
    """The named loss terms of one batch.

    Args:
        logits_g: the soft-target head's output (the single head for ``coupled``).
        logits_h: the classifier's output (computed on detached features for ``separation``).
        soft_targets: the strategy's target probabilities ``[B,K]``.
        hard_targets: the (mixed) one-hot labels ``[B,K]``, see :func:`hard_targets`.
        temperature: ``T`` dividing ``g``'s logits.

    Returns:
        ``{"loss_b": L_B, "loss_h": L_H, "loss": L_B + L_H}`` (float32 scalars).
    """
    loss_b = kl_to_target(soft_targets, logits_g, temperature)
    loss_h = soft_cross_entropy(logits_h, hard_targets)
    return {"loss_b": loss_b, "loss_h": loss_h, "loss": loss_b + loss_h}


def hard_targets(labels: torch.Tensor, num_classes: int, record=None) -> torch.Tensor:
    """One-hot labels, mixed with the batch's λ and permutation when it was mixed.

    Args:
        labels: int64 ``[B]``.
        num_classes: ``K``.
        record: the batch's :class:`~fasttarget.augment.AugRecord` (``None``: no mix).
    """
    onehot = F.one_hot(labels, num_classes).float()
    return onehot if record is None else record.mix(onehot)


def build_student(model: ModelConfig, loss: str) -> Student:
    """A :class:`~fasttarget.models.Student` shaped for ``loss`` (one of :data:`LOSSES`)."""
    if loss not in LOSSES:
        raise UserError(f"unknown loss {loss!r}: choose one of {', '.join(LOSSES)}")
    return Student(model, coupled=loss == "coupled")
