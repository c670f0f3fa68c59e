"""Soft-target KL from a teacher's top-k probabilities plus the mass of the rest (the tail).

What a top-k cache keeps per sample, all at temperature 1:

- ``values``: the log-probabilities ``log p_i`` of the teacher's k most likely classes,
- ``indices``: those classes,
- ``log_tail``: ``log tau`` with ``tau = 1 - sum_{i in top-k} p_i``, the mass of the other
  ``m = n - k`` classes (computed from the full distribution, never by renormalising the top-k).

Log-probabilities are logits up to a per-sample shift, so the top-k part is exact at any
temperature T: ``p_T(i) ∝ exp(log p_i / T)``. The tail at temperature T needs
``S_T = sum_{j in tail} p_j^(1/T)``, which the cache does not hold. We take the tail as spread
evenly over its m classes, ``S_T ≈ m (tau/m)^(1/T)``: exact at T = 1 and for an even tail; for
T > 1 it over-estimates the tempered tail (power-mean inequality), for T < 1 it under-estimates it,
and the error vanishes as tau -> 0.

The loss is the KL divergence between teacher and student after merging the tail classes into one
bin (k + 1 bins), times T². It never invents how the tail mass splits between classes: the student
is only asked to put the right total mass on the tail.

Bound against dense KD. By the chain rule of KL, whenever the teacher's tempered tail mass
``tau_T`` is known exactly (always at T = 1; at any T for an even tail)::

    dense = topk + T² · tau_T · KL(teacher's tail shape || student's tail shape)
    0 <= dense - topk <= T² · tau_T · (log m + R / T)

where R is the range (max - min) of the student's logits over the m tail classes: the student's
tempered tail shape gives each tail class at least exp(-R/T) / m, and KL(a || b) <= -log min b.
With k = n there is no tail and the two losses are equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdistill.losses.divergences import kl, tail_bins
from kdistill.losses.reduction import Reduction


@dataclass
class TopKLogits:
    """A teacher's top-k log-probabilities at T = 1 and the log of the remaining mass."""

    values: torch.Tensor  # (batch, k) log p_i, float
    indices: torch.Tensor  # (batch, k) class ids, long
    log_tail: torch.Tensor  # (batch,) log(1 - sum of the top-k probabilities); -inf when k = n
    num_classes: int
    # (num_classes,) log-weights the tail is spread by (a language-model cache's prior); None: evenly
    tail_shape: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """The shape of the dense logits this stands for (the engine checks class counts with it)."""
        return (self.values.shape[0], self.num_classes)

    @property
    def k(self) -> int:
        return self.values.shape[-1]

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int) -> "TopKLogits":
        """Compress dense logits; the tail mass is summed in float64 from the full distribution."""
        n = logits.shape[-1]
        if not 1 <= k <= n:
            raise ValueError(f"k must be between 1 and the number of classes ({n}), got {k}")
        log_p = F.log_softmax(logits.double(), dim=-1)
        values, indices = log_p.topk(k, dim=-1)
        log_tail = log_p.scatter(-1, indices, -math.inf).logsumexp(-1)
        return cls(values.to(logits.dtype), indices, log_tail.to(logits.dtype), n)


def topk_soft_target_kl(
    student_logits: torch.Tensor,
    teacher: TopKLogits,
    temperature: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """T² · KL over the teacher's top-k classes plus one merged tail bin (see the module notes)."""
    if student_logits.shape != teacher.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and the teacher's top-k outputs for "
            f"{teacher.shape} differ: teacher and student must predict the same classes for the same samples"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if teacher.tail_shape is not None:
        raise ValueError("a shaped tail (a language-model cache's) is read by the token losses, not the classifier's")
    t = temperature
    dtype = student_logits.dtype
    log_s = F.log_softmax(student_logits / t, dim=-1)
    log_s_top = log_s.gather(-1, teacher.indices)
    teacher_top = teacher.values.detach().to(dtype) / t
    m = teacher.num_classes - teacher.k
    if m == 0:  # nothing outside the top-k: plain dense KD
        return kl(teacher_top.log_softmax(-1), log_s_top, reduction) * t**2
    # tempered tail mass under an even split of tau over m classes: m * (tau / m)^(1/T)
    teacher_tail = teacher.log_tail.detach().to(dtype) / t + math.log(m) * (1 - 1 / t)
    # a bin with no teacher mass (log_tail = -inf) gets weight exp(-1e4) = 0 and no 0 · inf
    log_q = tail_bins(teacher_top, teacher_tail).clamp(min=-1e4).log_softmax(-1)
    # the student's tail exactly, from its full softmax (a classifier's classes are few)
    log_s_tail = log_s.scatter(-1, teacher.indices, -math.inf).logsumexp(-1)
    return kl(log_q, tail_bins(log_s_top, log_s_tail), reduction) * t**2
