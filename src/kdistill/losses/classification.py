"""Hinton's soft-target loss, hard cross-entropy and their weighted sum."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdistill.losses.divergences import kl
from kdistill.losses.reduction import Reduction
from kdistill.losses.topk import TopKLogits, topk_soft_target_kl


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape: teacher and student must predict the "
            "same classes for the same samples"
        )


def soft_target_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2 over the last dimension.

    The T^2 factor keeps the gradient magnitude of the soft term roughly independent of T
    (Hinton et al. 2015, section 2), so its weight means the same thing at T=2 and at T=20.
    """
    _check_logits(student_logits, teacher_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / temperature, dim=-1)
    return kl(log_p_teacher, log_p_student, reduction) * temperature**2


def hard_cross_entropy(
    student_logits: torch.Tensor, labels: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Cross-entropy on the true labels at temperature 1. A label of -100 (an unlabelled
    transfer-set sample) adds nothing, so a sum over a mixed batch counts only the labelled ones."""
    return F.cross_entropy(student_logits, labels, reduction=reduction)


def kd_objective(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    *,
    temperature: float,
    soft_weight: float,
    hard_weight: float,
    reduction: Reduction = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """w_soft * soft_target_kl + w_hard * hard_cross_entropy.

    ``teacher_logits`` is a dense tensor or a ``TopKLogits`` (a top-k cache): the soft term is then
    ``topk_soft_target_kl``, so every teacher source goes through this one call.

    Returns the total and the unweighted terms (for logging: a soft term 1000x smaller than the
    hard one makes its weight meaningless, and only logging each term shows it). A term whose
    weight is zero, or whose input is missing, is not computed.
    """
    terms: dict[str, torch.Tensor] = {}
    weighted: list[torch.Tensor] = []  # no zeros to add to and no multiply by 1: fewer autograd nodes
    if soft_weight != 0.0:
        if teacher_logits is None:
            raise ValueError("soft_weight is non-zero but no teacher logits were given")
        soft = topk_soft_target_kl if isinstance(teacher_logits, TopKLogits) else soft_target_kl
        terms["soft"] = soft(student_logits, teacher_logits, temperature, reduction)
        weighted.append(terms["soft"] if soft_weight == 1.0 else soft_weight * terms["soft"])
    if hard_weight != 0.0:
        if labels is None:
            raise ValueError("hard_weight is non-zero but no labels were given")
        terms["hard"] = hard_cross_entropy(student_logits, labels, reduction)
        weighted.append(terms["hard"] if hard_weight == 1.0 else hard_weight * terms["hard"])
    if not weighted:
        return student_logits.new_zeros(() if reduction != "none" else student_logits.shape[:1]), terms
    return (weighted[0] if len(weighted) == 1 else weighted[0] + weighted[1]), terms
