"""Temperatures that adapt: per sample from the teacher's confidence, and learned (CTKD).

Both feed ``tempered_soft_target_kl``, Hinton's soft term with a temperature per sample (or one
tensor temperature), each sample's KL scaled by its own T^2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.losses.classification import _check_logits
from kdistill.losses.reduction import Reduction, reduce


def tempered_soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                            temperatures: torch.Tensor | float, reduction: Reduction = "mean") -> torch.Tensor:
    """``T_i^2 * KL(softmax(t_i / T_i) || softmax(s_i / T_i))`` per sample (Hinton et al. 2015).

    ``temperatures`` is (N,) (one per sample), a scalar tensor (e.g. a learned temperature, whose
    gradient flows) or a float. With one constant T it equals ``soft_target_kl``.
    """
    _check_logits(student_logits, teacher_logits)
    temps = torch.as_tensor(temperatures, dtype=student_logits.dtype, device=student_logits.device)
    if temps.dim() > 1 or (temps.dim() == 1 and temps.shape[0] != student_logits.shape[0]):
        raise ValueError(f"temperatures must be a scalar or one per sample ({student_logits.shape[0]}), "
                         f"got shape {tuple(temps.shape)}")
    if bool((temps <= 0).any()):
        raise ValueError("every temperature must be > 0")
    column = temps.reshape(-1, 1) if temps.dim() else temps
    log_p_s = F.log_softmax(student_logits / column, -1)
    log_p_t = F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / column, -1)
    per_sample = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)
    return reduce(per_sample * temps**2, reduction)


def confidence_temperatures(teacher_logits: torch.Tensor, t_min: float = 1.0, t_max: float = 8.0) -> torch.Tensor:
    """One temperature per sample from the teacher's confidence, (N,), no gradient.

    ``T_i = t_max - (t_max - t_min) * H(p_i) / log C`` with ``p_i`` the teacher's distribution at
    T = 1 and H its entropy. The rule: a confident teacher (low entropy) hides its dark knowledge
    in tiny probabilities, so it is softened most (T near t_max); an unsure teacher is already
    soft, and a high T would flatten it to uniform, so it stays near t_min. The opposite rule
    (hot when unsure) only blurs the samples whose targets are already the least informative.
    """
    if not 0 < t_min <= t_max:
        raise ValueError(f"need 0 < t_min <= t_max, got t_min={t_min}, t_max={t_max}")
    classes = teacher_logits.shape[-1]
    if classes < 2:
        raise ValueError("per-sample temperatures need at least 2 classes")
    log_p = F.log_softmax(teacher_logits.detach().float(), -1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    normalised = (entropy / math.log(classes)).clamp(0.0, 1.0)
    return (t_max - (t_max - t_min) * normalised).to(teacher_logits.dtype)


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.strength * grad, None


def gradient_reversal(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Identity forward; the backward multiplies the gradient by ``-strength`` (Ganin & Lempitsky
    2015): what follows is minimised while what precedes is pushed to maximise it."""
    return _GradientReversal.apply(x, float(strength))


def ctkd_strength(epoch: float, loops: float = 10.0, start: float = 0.0, end: float = 1.0) -> float:
    """CTKD's curriculum for the reversal strength (Li et al. 2023, eq. 8): a cosine ramp
    ``start + (end - start) * (1 + cos((1 + min(epoch, loops) / loops) * pi)) / 2``, from ``start``
    at epoch 0 to ``end`` after ``loops`` epochs: easy (the temperature barely fights) to hard."""
    if loops <= 0:
        return end
    progress = min(max(epoch, 0.0), loops) / loops
    return start + (end - start) * (1 + math.cos((1 + progress) * math.pi)) / 2


class LearnedTemperature(nn.Module):
    """CTKD's global temperature (Li et al. 2023, "Curriculum Temperature for Knowledge
    Distillation"): one learnable scalar, trained with the student but *adversarially*.

    ``forward(strength)`` returns ``t_min + (t_max - t_min) * sigmoid(gradient_reversal(raw))``:
    bounded to (t_min, t_max) whatever the optimiser does, and, through the reversal, moved to
    *increase* the KD loss the student minimises, i.e. towards the temperature that is hardest for
    the student at its current state; ``strength`` (``ctkd_strength(epoch)``) grows that pressure
    along the curriculum. Its parameter goes in the student's optimizer and checkpoint; it is not
    part of the exported model. The authors' default is (1, 21) starting at T = 1 + 20 * 0.5 = 11.
    """

    def __init__(self, t_min: float = 1.0, t_max: float = 21.0, initial: float | None = None):
        super().__init__()
        if not 0 < t_min < t_max:
            raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
        initial = (t_min + t_max) / 2 if initial is None else initial
        if not t_min < initial < t_max:
            raise ValueError(f"the initial temperature {initial} must lie strictly inside ({t_min}, {t_max})")
        self.t_min, self.t_max = t_min, t_max
        fraction = (initial - t_min) / (t_max - t_min)
        self.raw = nn.Parameter(torch.tensor(math.log(fraction / (1 - fraction))))

    def forward(self, strength: float) -> torch.Tensor:
        return self.t_min + (self.t_max - self.t_min) * torch.sigmoid(gradient_reversal(self.raw, strength))

    def extra_repr(self) -> str:
        return f"t_min={self.t_min}, t_max={self.t_max}"
