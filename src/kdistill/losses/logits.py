"""Logit-based methods beyond Hinton's soft targets: DKD, DIST and logit standardisation.

Pure functions on (N, C) logits with one value per sample, like ``soft_target_kl``; the teacher
side is detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdistill.losses.classification import _check_logits
from kdistill.losses.reduction import Reduction, reduce

IGNORE_INDEX = -100  # an unlabelled transfer-set sample, as in hard_cross_entropy


def dkd_warmup(epoch: float, warmup_epochs: float) -> float:
    """DKD's warm-up factor ``min(epoch / warmup_epochs, 1)`` (Zhao et al. 2022 use 20 epochs):
    the large NCKD weight destabilises the first epochs otherwise. ``epoch`` may be fractional."""
    if warmup_epochs <= 0:
        return 1.0
    return min(max(epoch, 0.0) / warmup_epochs, 1.0)


def dkd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
        alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: float = 1.0,
        reduction: Reduction = "mean") -> torch.Tensor:
    """Decoupled KD (Zhao et al. 2022, "Decoupled Knowledge Distillation", eq. 7):
    ``warmup * (alpha * TCKD + beta * NCKD)``, each term times T^2.

    TCKD is the KL between the binary (target, rest) distributions of teacher and student at T;
    NCKD the KL between their distributions over the non-target classes only (renormalised).
    Both are computed in log space (``log(1 - p_target)`` as a logsumexp over the other classes),
    so a confident teacher does not produce ``log(0)``. ``warmup`` is ``dkd_warmup(epoch, ...)``.
    A sample labelled -100 (unlabelled) has no target class and adds zero. The hard
    cross-entropy is not included: add it as its own term.
    """
    _check_logits(student_logits, teacher_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    labelled = labels != IGNORE_INDEX
    target = F.one_hot(labels.clamp_min(0), student_logits.shape[-1]).bool()

    def parts(logits: torch.Tensor):
        z = logits / temperature
        log_all = torch.logsumexp(z, -1)
        log_rest = torch.logsumexp(z.masked_fill(target, float("-inf")), -1)
        log_binary = torch.stack([z[target] - log_all, log_rest - log_all], -1)  # log (p_t, 1 - p_t)
        log_non_target = z.masked_fill(target, float("-inf")) - log_rest[:, None]
        return log_binary, log_non_target

    s_bin, s_non = parts(student_logits)
    t_bin, t_non = parts(_teacher(teacher_logits, student_logits))
    tckd = (t_bin.exp() * (t_bin - s_bin)).sum(-1)
    non_target = ~target
    nckd = torch.where(non_target, t_non.exp() * (t_non - s_non), torch.zeros_like(t_non)).sum(-1)
    per_sample = warmup * temperature**2 * (alpha * tckd + beta * nckd)
    return reduce(torch.where(labelled, per_sample, torch.zeros_like(per_sample)), reduction)


def _teacher(teacher_logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return teacher_logits.detach().to(like.dtype)


def _pearson(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """Pearson correlation along ``dim`` (DIST's: cosine of the centred vectors, with eps)."""
    return F.cosine_similarity(a - a.mean(dim, keepdim=True), b - b.mean(dim, keepdim=True), dim=dim, eps=eps)


def dist(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, beta: float = 1.0,
         gamma: float = 1.0, temperature: float = 1.0, reduction: Reduction = "mean",
         eps: float = 1e-8) -> torch.Tensor:
    """DIST (Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher", eq. 9):
    ``T^2 * (beta * inter + gamma * intra)`` on the probabilities at temperature T.

    inter-class: per sample, ``1 - pearson`` between the student's and teacher's class
    probabilities (each sample's own share). intra-class: per class, ``1 - pearson`` between the
    student's and teacher's probabilities of that class *across the batch*, averaged over classes.
    That term is relational: every sample carries the batch's value, so the mean of the shares is
    the batch formula, but it does not decompose over micro-batches (each correlates only its own
    samples) and needs at least 2 samples. The paper uses beta = gamma = 1, T = 1 on ImageNet and
    beta = gamma = 2, T = 4 on CIFAR-100.
    """
    _check_logits(student_logits, teacher_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if gamma and student_logits.shape[0] < 2:
        raise ValueError("dist's intra-class term correlates samples within a batch and needs at "
                         f"least 2 per (micro-)batch, got {student_logits.shape[0]}")
    p_s = F.softmax(student_logits / temperature, -1)
    p_t = F.softmax(_teacher(teacher_logits, student_logits) / temperature, -1)
    per_sample = beta * (1 - _pearson(p_s, p_t, 1, eps))
    if gamma:
        intra = (1 - _pearson(p_s, p_t, 0, eps)).mean()
        per_sample = per_sample + gamma * intra
    return reduce(temperature**2 * per_sample, reduction)


def standardize_logits(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Logit standardisation (Sun et al. 2024, "Logit Standardization in Knowledge Distillation",
    alg. 1): ``(z - mean(z)) / (std(z) + eps)`` over classes, per sample.

    Apply it to both student and teacher logits before the soft term's softmax (the hard term keeps
    the raw logits): the student then has to match the teacher's logit *shape*, not its scale, and
    KD on standardised logits does not change when the teacher's logits are shifted or scaled by a
    positive factor. As in the authors' code, std is the unbiased (N - 1) estimate; their base
    temperature is the soft term's temperature.
    """
    mean = logits.mean(-1, keepdim=True)
    return (logits - mean) / (logits.std(-1, keepdim=True) + eps)
