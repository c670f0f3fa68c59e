"""Intermediate-layer distillation terms for transformers (TinyBERT, MiniLM): pure functions.

Both take a padding mask and give one value per sample, averaged over that sample's real tokens,
so a sample counts the same however its batch was padded and ``reduction="sum"`` composes with
the engine's per-step normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdistill.losses.reduction import Reduction, reduce


def hidden_state_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor,
                     weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                     reduction: Reduction = "mean") -> torch.Tensor:
    """Mean squared error between hidden states over real tokens (TinyBERT's hidden loss).

    ``student_hidden`` (B, L, Ds) is first mapped by ``x @ weight.T + bias`` when the widths differ
    (a learned projection, trained with the student); ``teacher_hidden`` is (B, L, Dt) and
    ``mask`` (B, L) marks real tokens. Per sample: the mean over its real tokens of the mean over
    features of the squared difference.
    """
    if weight is not None:
        student_hidden = F.linear(student_hidden, weight, bias)
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(f"hidden states {tuple(student_hidden.shape)} (after projection) and "
                         f"{tuple(teacher_hidden.shape)} differ: a projection must map the student's "
                         "width to the teacher's, and both must see the same tokens")
    mask = mask.to(student_hidden.dtype)
    per_token = (student_hidden - teacher_hidden.detach().to(student_hidden.dtype)).pow(2).mean(-1)
    per_sample = (per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    return reduce(per_sample, reduction)


def attention_kl(student_attention: torch.Tensor, teacher_attention: torch.Tensor, mask: torch.Tensor,
                 reduction: Reduction = "mean", eps: float = 1e-12) -> torch.Tensor:
    """KL(teacher || student) between attention distributions, per head and query (MiniLM).

    Both are (B, H, L, L) probabilities over keys (rows sum to one over real keys); ``mask`` (B, L)
    marks real tokens. Per sample: the mean over heads and real queries of the KL over keys.
    Padded keys carry zero teacher mass and contribute nothing.
    """
    if student_attention.shape != teacher_attention.shape:
        raise ValueError(f"attention maps {tuple(student_attention.shape)} and "
                         f"{tuple(teacher_attention.shape)} differ: teacher and student need the "
                         "same number of heads and the same tokens")
    t = teacher_attention.detach().to(student_attention.dtype)
    keys = mask[:, None, None, :].bool()
    log_ratio = torch.log(t.clamp_min(eps)) - torch.log(student_attention.clamp_min(eps))
    per_query = torch.where(keys & (t > 0), t * log_ratio, torch.zeros_like(t)).sum(-1)  # B, H, L
    queries = mask[:, None, :].to(per_query.dtype)
    heads = student_attention.shape[1]
    per_sample = (per_query * queries).sum((-1, -2)) / (heads * mask.sum(-1).to(per_query.dtype).clamp_min(1.0))
    return reduce(per_sample, reduction)
