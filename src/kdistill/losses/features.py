"""Feature-based distillation terms: pure functions on tapped features (see ``kdistill.taps``).

Two kinds:

- **per-sample** terms (FitNets hints, attention transfer) compare each sample's student feature
  with the same sample's teacher feature, so per-sample values summed over micro-batches give
  exactly the full-batch loss;
- **relational** terms (RKD, PKT) compare how samples relate *to each other* inside a batch. Each
  returns a per-sample share ``r_i`` chosen so that ``sum_i r_i / N`` is the batch formula, which
  is what the engine computes for one batch. They do **not** decompose across micro-batches or
  processes: with gradient accumulation (or DDP) each micro-batch only sees its own pairs, so the
  objective is the size-weighted mean of per-micro-batch losses, not the loss of the large batch.
  That is how every implementation behaves (mdistiller, torchdistill, the authors' code); the
  relational structure is that of the micro-batch, so keep micro-batches large for these terms.

The teacher side is always detached: a loss never trains the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdistill.losses.reduction import Reduction, reduce


def _teacher(teacher: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return teacher.detach().to(like.dtype)


def _same_shape(name: str, student: torch.Tensor, teacher: torch.Tensor, hint: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"{name}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
                         f"features differ in shape: {hint}")


def hint_mse(student: torch.Tensor, teacher: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """FitNets hint (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", eq. 3).

    ``student`` is the student's feature already mapped by its connector (``make_connector``:
    the paper's regressor), ``teacher`` the teacher's feature, both (N, ...). Per sample: the mean
    over feature elements of the squared difference. The paper writes half the *sum*; the mean
    keeps the weight's meaning independent of the feature's size (mdistiller does the same).
    """
    _same_shape("hint", student, teacher, "map the student's feature through a connector first")
    per_sample = (student - _teacher(teacher, student)).pow(2).flatten(1).mean(1)
    return reduce(per_sample, reduction)


def attention_map(feature: torch.Tensor, p: float = 2.0, eps: float = 1e-12) -> torch.Tensor:
    """Spatial attention of a feature (Zagoruyko & Komodakis 2017, eq. 2 with F = mean over
    channels of |f|^p), flattened and L2-normalised per sample: (N, positions).

    (N, C, H, W) gives H*W positions. A vector feature (N, D) is read as D positions of one
    channel: the literal 1x1 reading (D channels at one position) gives the constant map 1 for
    every sample and so a loss that is always zero.
    """
    if feature.dim() == 2:
        feature = feature[:, None, :]
    elif feature.dim() != 4:
        raise ValueError(f"attention transfer needs (N, C, H, W) or (N, D) features, got {tuple(feature.shape)}")
    amap = feature.abs().pow(p).mean(1).flatten(1)
    return amap / amap.norm(dim=1, keepdim=True).clamp_min(eps)


def attention_transfer(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0,
                       reduction: Reduction = "mean") -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention", eq. 2).

    Per sample: ``|| Q_s / ||Q_s|| - Q_t / ||Q_t|| ||_2^2`` with ``Q = attention_map(f, p)``. The
    channel counts may differ (the map averages channels away); the spatial sizes must match. As
    in the authors' code the distance is squared (the paper writes the norm, whose gradient is
    undefined at zero); we sum over positions rather than average, so the value lies in [0, 4]
    whatever the resolution (the authors' ``.pow(2).mean()`` equals ours / (H*W)).
    """
    q_s, q_t = attention_map(student, p), attention_map(_teacher(teacher, student), p)
    if q_s.shape != q_t.shape:
        raise ValueError(f"attention transfer: student {tuple(student.shape)} and teacher "
                         f"{tuple(teacher.shape)} features have different spatial sizes: tap layers "
                         "of the same resolution")
    return reduce((q_s - q_t).pow(2).sum(1), reduction)


def _check_batch(name: str, student: torch.Tensor, teacher: torch.Tensor, minimum: int) -> None:
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{name}: student and teacher features hold {student.shape[0]} and "
                         f"{teacher.shape[0]} samples: they must describe the same batch")
    if student.shape[0] < minimum:
        raise ValueError(f"{name} relates samples within a batch and needs at least {minimum} per "
                         f"(micro-)batch, got {student.shape[0]}")


def _gram(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gram matrix of the centred rows (distances and angles do not move with the origin,
    and centring keeps the float32 cancellation in |a|^2 + |b|^2 - 2<a, b> small) and the squared
    distances it gives, (N, N) each: O(N^2 D) work, never an (N, N, D) tensor of differences."""
    x = x - x.mean(0, keepdim=True)
    gram = x @ x.T
    sq = gram.diagonal()
    return gram, (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0.0)


def _pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """(N, N) Euclidean distances with zero (and zero gradient) on the diagonal."""
    squared = _gram(x)[1]
    off = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return torch.where(off, squared.clamp_min(1e-12).sqrt(), torch.zeros_like(squared))


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """RKD distance-wise loss (Park et al. 2019, "Relational Knowledge Distillation", eq. 4-5).

    Features are flattened to (N, D) (widths may differ). ``psi(i, j) = ||x_i - x_j|| / mu`` with
    mu the mean distance over the batch's distinct pairs, computed for student and teacher alike;
    the loss is the Huber (smooth L1, delta 1) difference of the two, averaged over distinct
    pairs i != j. Sample i's share is the mean over j != i of its pairs, so the mean of the shares
    is the batch loss. (The authors' code averages over all N^2 entries, diagonal zeros included:
    theirs = ours * (N - 1) / N.) Relational: see the module notes on micro-batches.
    """
    _check_batch("rkd distance", student, teacher, 2)
    s, t = student.flatten(1), _teacher(teacher, student).flatten(1)
    n = s.shape[0]
    pairs = n * (n - 1)
    d_s, d_t = _pairwise_distances(s), _pairwise_distances(t)
    d_s, d_t = d_s / (d_s.sum() / pairs), d_t / (d_t.sum() / pairs)
    huber = F.smooth_l1_loss(d_s, d_t, reduction="none")  # zero on the diagonal
    return reduce(huber.sum(1) / (n - 1), reduction)


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor, reduction: Reduction = "mean",
              vertices: int | None = None) -> torch.Tensor:
    """RKD angle-wise loss (Park et al. 2019, eq. 6-7).

    ``psi(i, j, k) = cos of the angle at vertex j = <e_ij, e_kj>`` with ``e_ij`` the unit vector
    from x_j to x_i; the loss is the Huber difference between student and teacher, averaged over
    triplets of distinct samples. Sample j's share is the mean over the triplets whose vertex it
    is. (The authors' code averages over all N^3 triplets, degenerate ones included.) Needs three
    samples per batch. Relational: see the module notes on micro-batches.

    ``vertices`` = m < N takes only the batch's first m samples as vertices (i and k still range
    over the whole batch): O(m N^2) instead of O(N^3) work, the cost that made this term 7x a KD
    step at N = 128. A shuffled training batch's first m samples are a random subset, so the loss
    is an unbiased estimate of the full one; their shares are scaled by N / m (the others' are
    zero), so "sum" and "mean" keep the full loss's scale.
    """
    _check_batch("rkd angle", student, teacher, 3)
    s, t = student.flatten(1), _teacher(teacher, student).flatten(1)
    n = s.shape[0]
    m = n if vertices is None else min(int(vertices), n)
    if m < 1:
        raise ValueError(f"rkd angle: vertices must be >= 1, got {vertices}")

    eye = torch.eye(n, dtype=torch.bool, device=s.device)
    vertex = eye[:m]  # [j, i]: i == j

    def cosines(x: torch.Tensor) -> torch.Tensor:  # [j, i, k] = <e_ij, e_kj>, j among the first m
        # <x_i - x_j, x_k - x_j> = G_ik - G_ji - G_jk + G_jj, over |x_i - x_j| |x_k - x_j|, from the
        # Gram matrix: O(m N^2) work where unit difference vectors took O(m N^2 D)
        gram, squared = _gram(x)
        inner = gram[None, :, :] - gram[:m, :, None] - gram[:m, None, :] + gram.diagonal()[:m, None, None]
        inv = torch.where(vertex, torch.zeros_like(squared[:m]), squared[:m].clamp_min(1e-12).rsqrt())
        return (inner * inv[:, :, None] * inv[:, None, :]).clamp(-1.0, 1.0)  # rounding may pass +-1

    distinct = ~(vertex[:, :, None] | vertex[:, None, :] | eye[None, :, :])  # j != i, j != k, i != k
    huber = F.smooth_l1_loss(cosines(s), cosines(t), reduction="none")
    per_vertex = torch.where(distinct, huber, torch.zeros_like(huber)).sum((1, 2)) / ((n - 1) * (n - 2))
    if m < n:
        per_vertex = torch.cat([per_vertex * (n / m), per_vertex.new_zeros(n - m)])
    return reduce(per_vertex, reduction)


def pkt(student: torch.Tensor, teacher: torch.Tensor, reduction: Reduction = "mean",
        eps: float = 1e-12) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018, "Learning Deep Representations with
    Probabilistic Knowledge Transfer", eq. 8-12, cosine kernel).

    Features are flattened to (N, D) (widths may differ). ``K(a, b) = (cos(a, b) + 1) / 2``;
    ``p_{j|i} = K(x_i, x_j) / sum_{k != i} K(x_i, x_k)`` over the batch's other samples; sample i's
    share is ``KL(p^t_{.|i} || p^s_{.|i})``, and the batch loss the mean of the shares. (The authors'
    code keeps the self-similarity in each row and averages over N^2 entries.) Relational: see the
    module notes on micro-batches.
    """
    _check_batch("pkt", student, teacher, 2)

    def conditional(x: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(x.flatten(1), dim=1, eps=eps)
        kernel = (unit @ unit.T + 1) / 2
        kernel = kernel.masked_fill(torch.eye(x.shape[0], dtype=torch.bool, device=x.device), 0.0)
        return kernel / kernel.sum(1, keepdim=True).clamp_min(eps)

    p_s, p_t = conditional(student), conditional(_teacher(teacher, student))
    per_sample = (torch.xlogy(p_t, p_t) - p_t * torch.log(p_s.clamp_min(eps))).sum(1)
    return reduce(per_sample, reduction)
