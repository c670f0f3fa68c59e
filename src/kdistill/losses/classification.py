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


# torch's CPU log-softmax over a last dimension shorter than its vector width (16 floats) takes
# a scalar path, 4x slower at 10 classes than the same reduction over rows of a (classes, batch)
# copy (measured, torch 2.13): the fused node works in that layout there
_FEW_CLASSES = 16


class _SummedKD(torch.autograd.Function):
    """w_soft * T^2 KL(p_T || q_T) + w_hard * CE, summed over rows, with its gradient in closed
    form: w_soft * T * (q_T - p_T) + w_hard * (q_1 - onehot). One node instead of the dozen a
    composed loss records: on a small student this step's loss cost as much as its layers.
    Also returns the soft and hard sums and the teacher's summed entropy at T (from the same
    log-probabilities), none of them differentiable."""

    @staticmethod
    def forward(ctx, student, teacher, labels, temperature: float, soft_weight: float, hard_weight: float):
        ctx.transposed = student.device.type == "cpu" and student.shape[-1] < _FEW_CLASSES
        if ctx.transposed:  # (classes, rows); a label row index is then (1, rows)
            student, teacher, dim = student.t().contiguous(), teacher.t().contiguous(), 0
        else:
            dim = 1
        hot = temperature != 1.0
        log_q = (student * (1.0 / temperature) if hot else student).log_softmax(dim)
        log_p = (teacher * (1.0 / temperature) if hot else teacher).log_softmax(dim)
        p = log_p.exp()
        neg_entropy = torch.vdot(p.view(-1), log_p.view(-1))  # an underflowed p adds 0 * finite
        soft = (neg_entropy - torch.vdot(p.view(-1), log_q.view(-1))) * temperature**2
        loss, hard = soft * soft_weight, student.new_zeros(())
        if hard_weight:  # at T = 1 the soft term's log-probabilities serve
            log_q1 = student.log_softmax(dim) if hot else log_q.clone()
            kept = labels.ne(-100).to(student.dtype).unsqueeze(dim)  # a label of -100 adds nothing
            rows = labels.clamp(min=0).unsqueeze(dim)
            hard = -(log_q1.gather(dim, rows) * kept).sum()
            loss = loss + hard_weight * hard
        grad = log_q.exp_().sub_(p).mul_(soft_weight * temperature)
        if hard_weight:
            grad.add_(log_q1.exp_().mul_(kept), alpha=hard_weight)
            grad.scatter_add_(dim, rows, kept.mul_(-hard_weight))
        ctx.save_for_backward(grad)
        entropy = neg_entropy.neg()
        ctx.mark_non_differentiable(soft, hard, entropy)
        return loss, soft, hard, entropy

    @staticmethod
    def backward(ctx, grad_loss, *_):
        (grad,) = ctx.saved_tensors
        grad = grad * grad_loss
        return grad.t() if ctx.transposed else grad, None, None, None, None, None


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
    weight is zero, or whose input is missing, is not computed. With dense teacher logits and
    ``reduction="sum"`` (what the classification task asks) the loss is one fused node
    (``_SummedKD``; the same values and gradient, tested), and the terms add the teacher's
    summed soft-target entropy.
    """
    if reduction == "sum" and soft_weight != 0.0 and isinstance(teacher_logits, torch.Tensor):
        _check_logits(student_logits, teacher_logits)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if hard_weight != 0.0 and labels is None:
            raise ValueError("hard_weight is non-zero but no labels were given")
        loss, soft, hard, entropy = _SummedKD.apply(
            student_logits, teacher_logits.detach().to(student_logits.dtype), labels, float(temperature),
            float(soft_weight), float(hard_weight))
        return loss, {"soft": soft, **({"hard": hard} if hard_weight != 0.0 else {}), "teacher_entropy": entropy}
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
