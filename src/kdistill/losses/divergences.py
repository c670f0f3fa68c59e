"""Divergences between a teacher's and a student's next-token distributions.

Every function is pure and returns one value per token (the leading dimensions of the logits),
so a task sums them over the tokens that count and the engine divides by the step's token count.
P is the teacher's distribution, Q the student's, both at temperature T; each divergence is
multiplied by T^2 as in Hinton et al. (2015), so a weight means the same at every temperature.

- forward KL  KL(P || Q): mass-covering; the classic distillation loss.
- reverse KL  KL(Q || P): mode-seeking (MiniLLM).
- generalized JSD(beta) as in GKD (Agarwal et al. 2024):
  beta * KL(P || M) + (1 - beta) * KL(Q || M) with M = beta P + (1 - beta) Q.
  It tends to 0 at both ends, but JSD/beta -> KL(P || Q) as beta -> 0 and JSD/(1-beta) ->
  KL(Q || P) as beta -> 1; so, like GKD and TRL, beta = 0 and beta = 1 *are* forward and
  reverse KL.
- skew KL (DistiLLM, Ko et al. 2024): KL(P || a P + (1-a) Q) (forward) or KL(Q || a Q + (1-a) P)
  (reverse); a = 0 gives the plain KL, and a > 0 keeps it finite where Q underflows.
- total variation 0.5 * sum |P - Q|.

The ``*_from_log_probs`` core works on any normalised log-probabilities, so the same code scores
full vocabularies and the (top-k + tail) buckets of a compressed teacher.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from kdistill.losses.reduction import Reduction

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tv"]
DIVERGENCES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl",
                                "skew_reverse_kl", "tv")


def kl(log_p: torch.Tensor, log_q: torch.Tensor, reduction: Reduction = "none") -> torch.Tensor:
    """KL(P || Q) over the last dimension, from finite log-probabilities (an underflowed p
    contributes 0 * finite = 0): per row, or summed / averaged over the rows.

    The one KL of the package (the classifier, top-k and token losses all call it). F.kl_div
    computes sum p (log p - log q) with one fused backward (fewer autograd nodes); "sum" adds all
    elements at once."""
    if reduction == "none":
        return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    summed = F.kl_div(log_q, log_p, reduction="sum", log_target=True)
    return summed if reduction == "sum" else summed / max(1, log_p[..., 0].numel())


def _log_mix(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(w P + (1 - w) Q), computed stably in log space."""
    return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))


def divergence_from_log_probs(kind: str, student_log_probs: torch.Tensor,
                              teacher_log_probs: torch.Tensor, *, beta: float = 0.5,
                              skew: float = 0.1) -> torch.Tensor:
    """A divergence between two normalised log-distributions, per row (no temperature here)."""
    log_q, log_p = student_log_probs, teacher_log_probs
    if kind == "forward_kl":
        return kl(log_p, log_q)
    if kind == "reverse_kl":
        return kl(log_q, log_p)
    if kind == "jsd":
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
        if beta == 0.0:
            return kl(log_p, log_q)
        if beta == 1.0:
            return kl(log_q, log_p)
        log_m = _log_mix(log_p, log_q, beta)
        return beta * kl(log_p, log_m) + (1.0 - beta) * kl(log_q, log_m)
    if kind in ("skew_forward_kl", "skew_reverse_kl"):
        if not 0.0 <= skew < 1.0:
            raise ValueError(f"skew must be in [0, 1), got {skew}")
        if kind == "skew_forward_kl":
            return kl(log_p, log_q if skew == 0 else _log_mix(log_p, log_q, skew))
        return kl(log_q, log_p if skew == 0 else _log_mix(log_q, log_p, skew))
    if kind == "tv":
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    raise ValueError(f"unknown divergence {kind!r}; choose one of {', '.join(DIVERGENCES)}")


def token_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     kind: str = "forward_kl", *, temperature: float = 1.0, beta: float = 0.5,
                     skew: float = 0.1) -> torch.Tensor:
    """Per-token divergence between full-vocabulary logits (..., V) -> (...), times T^2."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: align the vocabularies first "
                         "(kdistill.models.hf.check_vocabularies)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / temperature, dim=-1)
    return divergence_from_log_probs(kind, log_q, log_p, beta=beta, skew=skew) * temperature**2


def forward_kl(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    return token_divergence(student_logits, teacher_logits, "forward_kl", temperature=temperature)


def reverse_kl(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    return token_divergence(student_logits, teacher_logits, "reverse_kl", temperature=temperature)


def generalized_jsd(student_logits, teacher_logits, beta: float = 0.5,
                    temperature: float = 1.0) -> torch.Tensor:
    return token_divergence(student_logits, teacher_logits, "jsd", temperature=temperature, beta=beta)


def skew_kl(student_logits, teacher_logits, skew: float = 0.1, reverse: bool = False,
            temperature: float = 1.0) -> torch.Tensor:
    kind = "skew_reverse_kl" if reverse else "skew_forward_kl"
    return token_divergence(student_logits, teacher_logits, kind, temperature=temperature, skew=skew)


def total_variation(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    return token_divergence(student_logits, teacher_logits, "tv", temperature=temperature)


# ---------------------------------------------------------------- compressed (top-k) teachers
def log_rest(log_probs: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(log_probs))): the log of the mass outside the given tokens (no V-wide work)."""
    rest = torch.logsumexp(log_probs, -1, keepdim=True).expm1().neg()
    return rest.clamp_min(torch.finfo(log_probs.dtype).tiny).log()


def tail_bins(log_top: torch.Tensor, log_tail: torch.Tensor | None = None) -> torch.Tensor:
    """A distribution coarse-grained to (k kept classes, one tail bin): the k log-probabilities
    and the tail's, which is ``log_tail`` (batch,) where the caller knows it, else what the k leave.

    The one tail-bin construction of the package: the classifier's top-k KD and the token losses'
    top-k teachers both bin through it."""
    tail = log_rest(log_top) if log_tail is None else log_tail.unsqueeze(-1)
    return torch.cat([log_top, tail], -1)


def topk_bucket_log_probs(student_logits: torch.Tensor, teacher_indices: torch.Tensor,
                          teacher_log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both distributions coarse-grained to (the teacher's top-k tokens, everything else).

    ``teacher_log_probs`` are the teacher's full-softmax log-probabilities at its top-k tokens
    (never renormalised): the tail bucket keeps the mass they leave. Any divergence between the
    bucketed distributions is a lower bound of the full-vocabulary one (data processing).
    """
    return topk_buckets(F.log_softmax(student_logits, dim=-1), teacher_indices, teacher_log_probs)


def topk_buckets(student_log_probs: torch.Tensor, teacher_indices: torch.Tensor,
                 teacher_log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``topk_bucket_log_probs`` from the student's log-probabilities (the fused kernel has them)."""
    log_q_top = student_log_probs.gather(-1, teacher_indices)
    return tail_bins(log_q_top), tail_bins(teacher_log_probs.to(log_q_top.dtype))
