"""Closed-form value and logit gradient of one chunk of token losses, for ``losses.fused``.

Each function takes a chunk's logits (in a reusable buffer it may overwrite) and returns the
per-token divergence and cross-entropy with the gradient of their weighted sum, computed in the
forward pass without an autograd graph: forward KL, reverse KL and JSD against a dense teacher,
and forward KL against a top-k teacher whose tail is binned or shaped by a prior.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch

from kdistill.losses.divergences import kl, tail_bins


@dataclass(frozen=True)
class TokenLossSpec:
    """What to compute per token: a divergence to the teacher and/or cross-entropy on labels."""

    kind: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    skew: float = 0.1
    divergence: bool = True
    cross_entropy: bool = True


CLOSED_FORM = ("forward_kl", "reverse_kl", "jsd")  # and forward KL from a top-k teacher


def topk_kind(spec: TokenLossSpec) -> str:
    return "forward_kl" if spec.kind == "jsd" and spec.beta == 0.0 else spec.kind


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row sum of a * b, without a V-wide temporary. On CPU one BLAS dot per row: 4x faster
    than einsum (which becomes a batched 1 x V by V x 1 matmul) at 128 x 49,152."""
    if a.device.type == "cpu" and a.shape[0] <= 4096:
        return torch.stack([torch.dot(x, y) for x, y in zip(a, b)]) if a.shape[0] else a.new_zeros(0)
    return torch.linalg.vecdot(a, b)


class Scratch:
    """Reusable (rows x V) buffers for the closed-form chunks, handed out one per quantity.

    On CPU a fresh 24 MiB tensor is page-faulted at every allocation, which costs about as much
    as the arithmetic (one JSD chunk of 128 x 49,152: 84 ms with fresh tensors, 39 ms in reused
    ones), so each thread keeps one set of buffers (one shape and dtype; a new one replaces it)
    across chunks and calls. Elsewhere (CUDA's caching allocator already reuses memory) the
    buffers live for one call.
    """

    _local = threading.local()

    def __init__(self, rows: int, cols: int, capacity: int, dtype: torch.dtype, device: torch.device):
        key = (max(rows, capacity), cols, dtype, device)
        if device.type != "cpu":
            pool = []
        else:
            if getattr(self._local, "key", None) != key:
                self._local.key, self._local.pool = key, []
            pool = self._local.pool
        self.pool, self.key, self.rows, self.used = pool, key, rows, set()

    def take(self) -> torch.Tensor:
        free = [i for i in range(len(self.pool)) if i not in self.used]
        if not free:
            capacity, cols, dtype, device = self.key
            self.pool.append(torch.empty(capacity, cols, dtype=dtype, device=device))
            free = [len(self.pool) - 1]
        self.used.add(free[0])
        return self.pool[free[0]][: self.rows]

    def give(self, *bufs: torch.Tensor) -> None:
        for buf in bufs:
            self.used.discard(next(i for i, b in enumerate(self.pool) if b.data_ptr() == buf.data_ptr()))


def closed_form_chunk(logits, teacher, labels, spec: TokenLossSpec, soft_weight: float,
                       hard_weight: float, scratch: Scratch):
    """Per-token (divergence, cross-entropy) of one chunk and the gradient of
    ``soft_weight * sum(divergence) + hard_weight * sum(cross-entropy)`` with respect to the
    logits, in closed form: no autograd graph, and each V-wide quantity made once, in
    ``scratch`` buffers (``logits`` is one of them, and is overwritten). The gradient comes as
    ``(g, factor)`` with gradient = factor * g (g is a scratch buffer: use it before the next
    chunk): the caller scales the small matmul inputs and outputs instead of paying one more
    pass over the vocabulary.

    With s = z / T and Q = softmax(s), d(T^2 D)/dz = T * dD/ds, and for D = sum_j Q_j g_j-type
    divergences dD/ds_j = Q_j (g_j - sum_k Q_k g_k) where g = dD/dQ:
    forward KL  g = -P / Q  ->  dD/ds = Q - P;
    reverse KL  g = log Q - log P (+1);
    JSD(beta)   g = (1 - beta) (log Q - log M) (+const), M = beta P + (1 - beta) Q.
    """
    t, take = spec.temperature, scratch.take
    div = ce = grad = log_q = q = q1 = None
    if spec.cross_entropy:  # first, from the logits at T = 1; the student's probabilities in q1
        log_q1 = torch.log_softmax(logits, -1, out=take())
        ce = -log_q1.gather(-1, labels[:, None]).squeeze(-1)
        if spec.divergence and t == 1.0:
            log_q, q1 = log_q1, None  # shared with the divergence
        else:
            q1 = log_q1.exp_()
    if spec.divergence:
        if log_q is None:
            log_q = torch.log_softmax(logits.div_(t) if t != 1.0 else logits, -1, out=take())
        q = torch.exp(log_q, out=logits)  # the logits are no longer needed
        if spec.cross_entropy and t == 1.0:
            q1 = q
    hard = hard_weight if spec.cross_entropy else 0.0
    factor = hard
    if spec.divergence:
        kind, beta, scale = spec.kind, spec.beta, soft_weight * t
        if kind == "jsd" and beta in (0.0, 1.0):
            kind = "forward_kl" if beta == 0.0 else "reverse_kl"
        if kind == "jsd":
            scale *= 1.0 - beta
        tl = teacher
        if t != 1.0 or teacher.dtype != logits.dtype:
            tl = torch.div(teacher, t, out=take()) if t != 1.0 else take().copy_(teacher)
        log_p = torch.log_softmax(tl, -1, out=take())
        if tl is not teacher:
            scratch.give(tl)
        folded = q1 is q and scale != 0.0  # the CE term (hard * Q) joins the divergence's buffer
        ratio = hard / scale if folded else 0.0
        if kind == "forward_kl":  # scale * (Q - P) + hard * Q = scale (1 + ratio) (Q - P / (1 + ratio))
            p = torch.exp(log_p, out=take())
            div = _row_dot(p, log_p.sub_(log_q))
            grad, factor = torch.sub(q, p, alpha=1.0 / (1.0 + ratio), out=log_p), scale * (1.0 + ratio)
        else:
            if kind == "reverse_kl":
                g = torch.sub(log_q, log_p, out=log_p)
                div = _row_dot(q, g)
                centre = div
            else:  # jsd, 0 < beta < 1, through M' = M / (1 - beta) = Q + beta / (1 - beta) P
                p = torch.exp(log_p, out=take())
                log_m = torch.add(q, p, alpha=beta / (1.0 - beta), out=take())
                log_m.clamp_min_(torch.finfo(q.dtype).tiny).log_()
                g = log_q.sub_(log_m)  # log(Q / M) + log(1 - beta): constants cancel in the gradient
                centre = _row_dot(q, g)
                div = (beta * _row_dot(p, log_p.sub_(log_m)) + (1.0 - beta) * centre
                       - math.log1p(-beta))  # beta KL(P || M) + (1 - beta) KL(Q || M)
            # scale Q (g - centre) + hard Q = scale Q (g - (centre - ratio))
            grad, factor = g.sub_((centre - ratio)[:, None]).mul_(q), scale
        div = div * t**2
        if scale == 0.0:
            grad, factor = None, hard
        elif folded:
            q1 = None
    if q1 is not None:  # not folded: add hard * Q1 relative to the factor
        grad = q1 if grad is None else grad.add_(q1, alpha=hard / factor)
    if spec.cross_entropy and grad is not None and factor != 0.0:
        grad.scatter_add_(-1, labels[:, None], grad.new_full((labels.shape[0], 1), -hard / factor))
    if grad is None or factor == 0.0:
        return div, ce, None, 0.0
    return div, ce, grad, factor


@dataclass(frozen=True)
class TailShape:
    """A top-k teacher's tail spread in proportion to ``exp(log_weights)`` over the tokens outside
    each row's k (a cache's stored prior), prepared once per loss call: the weights with their
    maximum at 1, their sum and their sum of w log w (float64, so W minus a row's kept weights
    does not cancel)."""

    w: torch.Tensor
    log_w: torch.Tensor
    total: float
    entropy_sum: float

    @classmethod
    def of(cls, log_weights: torch.Tensor, dtype: torch.dtype) -> "TailShape":
        lw = log_weights.double() - log_weights.double().max()
        w = lw.exp()
        return cls(w.to(dtype), lw.to(dtype), float(w.sum()), float((w * lw).sum()))


def topk_forward_kl_chunk(logits, values, indices, labels, spec: TokenLossSpec, soft_weight: float,
                           hard_weight: float, scratch: Scratch, tail_shape: TailShape | None = None):
    """``closed_form_chunk`` for a top-k teacher (log-probabilities ``values`` at ``indices``,
    temperature 1) and forward KL over the (k kept tokens, tail bin) buckets. With P_tail the
    mass the teacher's k leave and Q_tail the student's, the gradient of that KL with respect to
    the logits is Q - P~, where P~ is the teacher's P on its k tokens and the tail spread in
    proportion to the student elsewhere (P~_i = Q_i P_tail / Q_tail): one V-wide scaling of Q and
    a k-wide scatter, never the teacher's dense distribution. Q_tail is summed over the tokens
    outside the k (not 1 - their complement, which rounds to 0 once the student puts all but
    ~1e-7 of its mass on them), so P~ stays bounded by P_tail.

    With a ``tail_shape`` the teacher's tail is no longer left to the student: it is
    P_tail w_j / Z (Z the weights outside the row's k) and the divergence is the full-vocabulary
    KL to that rebuilt distribution, still without a V-wide teacher array (one matrix-vector
    product with w, and w's outer product in the gradient)."""
    if tail_shape is not None:
        return _topk_shaped_chunk(logits, values, indices, labels, spec, soft_weight, hard_weight, scratch, tail_shape)
    log_q = torch.log_softmax(logits, -1, out=scratch.take())
    ce = -log_q.gather(-1, labels[:, None]).squeeze(-1) if spec.cross_entropy else None
    log_q_top = log_q.gather(-1, indices)
    q = torch.exp(log_q, out=logits).scatter_(-1, indices, 0.0)  # the student's mass outside the k
    q_tail = q.sum(-1).clamp_min_(torch.finfo(q.dtype).tiny)
    log_pb = tail_bins(values.to(q.dtype))
    div = kl(log_pb, tail_bins(log_q_top, q_tail.log())) if spec.divergence else None
    hard = hard_weight if spec.cross_entropy else 0.0
    soft = soft_weight if spec.divergence else 0.0
    scratch.give(log_q)
    if soft == 0.0 and hard == 0.0:
        return div, ce, None, 0.0
    # off the k: soft (Q - P~) + hard Q = Q (soft (1 - P_tail / Q_tail) + hard); on them soft (Q - P) + hard Q
    grad = q.mul_((soft * (1.0 - log_pb[:, -1].exp() / q_tail) + hard)[:, None])
    grad.scatter_(-1, indices, log_q_top.exp().mul_(soft + hard).sub_(log_pb[:, :-1].exp(), alpha=soft))
    if hard:
        grad.scatter_add_(-1, labels[:, None], grad.new_full((labels.shape[0], 1), -hard))
    return div, ce, grad, 1.0


def _topk_shaped_chunk(logits, values, indices, labels, spec: TokenLossSpec, soft_weight: float,
                       hard_weight: float, scratch: Scratch, shape: TailShape):
    """``topk_forward_kl_chunk`` with the teacher's tail spread by ``shape`` (see there)."""
    log_q = torch.log_softmax(logits, -1, out=scratch.take())
    ce = -log_q.gather(-1, labels[:, None]).squeeze(-1) if spec.cross_entropy else None
    log_q_top = log_q.gather(-1, indices)
    log_pb = tail_bins(values.to(log_q.dtype))
    p_top, p_tail = log_pb[:, :-1].exp(), log_pb[:, -1].exp()
    w_top, lw_top = shape.w[indices], shape.log_w[indices]
    z = (shape.total - w_top.double().sum(-1)).clamp_min_(torch.finfo(torch.float64).tiny)
    hard = hard_weight if spec.cross_entropy else 0.0
    soft = soft_weight if spec.divergence else 0.0
    div = None
    if spec.divergence:  # sum_k P (log P - log Q) + P_tail (log P_tail + E_tail[log(w / Z)] - E_tail[log Q])
        cross = ((log_q @ shape.w).double() - (w_top * log_q_top).sum(-1).double()) / z
        entropy = (shape.entropy_sum - (w_top * lw_top).sum(-1).double()) / z - z.log()
        top = (p_top * (log_pb[:, :-1] - log_q_top)).sum(-1)
        div = top + (torch.special.xlogy(p_tail, p_tail).double() + p_tail.double() * (entropy - cross)).to(top.dtype)
    if soft == 0.0 and hard == 0.0:
        scratch.give(log_q)
        return div, ce, None, 0.0
    # soft (Q - P~) + hard Q: Q (soft + hard) minus soft P_tail w / Z off the k, minus soft P on them
    q = torch.exp(log_q, out=logits)
    scratch.give(log_q)
    q_top = log_q_top.exp()
    grad = q.mul_(soft + hard).addr_((p_tail.double() / z).to(q.dtype), shape.w, alpha=-soft)
    grad.scatter_(-1, indices, q_top.mul_(soft + hard).sub_(p_top, alpha=soft))
    if hard:
        grad.scatter_add_(-1, labels[:, None], grad.new_full((labels.shape[0], 1), -hard))
    return div, ce, grad, 1.0
