"""The fused, chunked output layer + token loss of causal-LM distillation.

``chunked_weighted_loss`` takes the student's final hidden states and its output projection and
computes ``soft * sum(divergence) + hard * sum(cross-entropy)`` over the selected tokens a chunk
at a time, with each chunk's gradients made in the forward pass (in closed form for forward KL,
reverse KL and JSD, and for forward KL from a top-k teacher, its tail binned or shaped by a
prior; by per-chunk autograd otherwise): the (tokens x vocabulary) logits never exist
at once, and no chunk is computed twice. The divergences themselves are in
``kdistill.losses.divergences``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from kdistill.losses.divergences import divergence_from_log_probs, kl, tail_bins, topk_buckets

CPU_CHUNK_BYTES = 24 * 2**20


def default_chunk_tokens(vocab_size: int, device: str | torch.device = "cpu") -> int:
    """Tokens per loss chunk. On a CPU one chunk's fp32 logits stay within 24 MiB: larger fresh
    buffers are mapped from the OS and page-faulted on every allocation (glibc's mmap threshold
    is at most 32 MiB), which costs more than the loss arithmetic itself. Elsewhere 512."""
    if torch.device(device).type != "cpu":
        return 512
    fits = max(1, CPU_CHUNK_BYTES // (4 * vocab_size))
    return min(1024, max(16, 2 ** (fits.bit_length() - 1)))



@dataclass(frozen=True)
class TokenLossSpec:
    """What to compute per token: a divergence to the teacher and/or cross-entropy on labels."""

    kind: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    skew: float = 0.1
    divergence: bool = True
    cross_entropy: bool = True


def _chunk_terms(hidden, weight, bias, teacher, teacher_indices, labels, spec: TokenLossSpec):
    """Per-token (divergence, cross-entropy) of one chunk; either may be None. Each V-wide
    quantity is computed once (at T = 1 the student's log-softmax serves both terms)."""
    logits = hidden if weight is None else F.linear(hidden, weight, bias)
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    t = spec.temperature
    div = ce = log_q1 = None
    if spec.divergence:
        if teacher_indices is None:
            log_q = F.log_softmax(logits if t == 1.0 else logits / t, dim=-1)
            tl = teacher.to(logits.dtype)
            log_p = F.log_softmax(tl if t == 1.0 else tl / t, dim=-1)
            div = divergence_from_log_probs(spec.kind, log_q, log_p, beta=spec.beta, skew=spec.skew)
            if t != 1.0:
                div = div * t**2
            else:
                log_q1 = log_q
        else:  # top-k teachers hold temperature-1 probabilities
            log_q1 = F.log_softmax(logits, dim=-1)
            log_q, log_p = topk_buckets(log_q1, teacher_indices, teacher)
            div = divergence_from_log_probs(spec.kind, log_q, log_p, beta=spec.beta, skew=spec.skew)
    if spec.cross_entropy:
        if log_q1 is None:
            log_q1 = F.log_softmax(logits, dim=-1)
        ce = -log_q1.gather(-1, labels[:, None]).squeeze(-1)
    return div, ce


CLOSED_FORM = ("forward_kl", "reverse_kl", "jsd")  # and forward KL from a top-k teacher


def _topk_kind(spec: TokenLossSpec) -> str:
    return "forward_kl" if spec.kind == "jsd" and spec.beta == 0.0 else spec.kind


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row sum of a * b, without a V-wide temporary. On CPU one BLAS dot per row: 4x faster
    than einsum (which becomes a batched 1 x V by V x 1 matmul) at 128 x 49,152."""
    if a.device.type == "cpu" and a.shape[0] <= 4096:
        return torch.stack([torch.dot(x, y) for x, y in zip(a, b)]) if a.shape[0] else a.new_zeros(0)
    return torch.linalg.vecdot(a, b)


class _Scratch:
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


def _closed_form_chunk(logits, teacher, labels, spec: TokenLossSpec, soft_weight: float,
                       hard_weight: float, scratch: _Scratch):
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


def _topk_forward_kl_chunk(logits, values, indices, labels, spec: TokenLossSpec, soft_weight: float,
                           hard_weight: float, scratch: _Scratch, tail_shape: TailShape | None = None):
    """``_closed_form_chunk`` for a top-k teacher (log-probabilities ``values`` at ``indices``,
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
                       hard_weight: float, scratch: _Scratch, shape: TailShape):
    """``_topk_forward_kl_chunk`` with the teacher's tail spread by ``shape`` (see there)."""
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


def _rows(t: torch.Tensor | None, s: int, e: int) -> torch.Tensor | None:
    return None if t is None else t[s:e]


def _grad_buffers(hidden, weight, bias, needs: tuple[bool, bool, bool]):
    """Zeroed gradients for the inputs that need them, and detached leaf copies of the output
    layer's weight and bias for the per-chunk autograd calls."""
    need_h, need_w, need_b = needs
    return (torch.zeros_like(hidden) if need_h else None,
            torch.zeros_like(weight) if need_w else None,
            torch.zeros_like(bias) if need_b else None,
            weight.detach().requires_grad_(need_w) if weight is not None else None,
            bias.detach().requires_grad_(need_b) if bias is not None else None)


def _add_chunk_grads(got: list, needs: tuple[bool, bool, bool], grad_h, grad_w, grad_b, s: int, e: int) -> None:
    """Place one chunk's gradients (in the order hidden, weight, bias, for those needed): the
    hidden rows s:e are the chunk's own, the weight and bias gradients add up over chunks."""
    need_h, need_w, need_b = needs
    if need_h and (g := got.pop(0)) is not None:
        grad_h[s:e] = g
    if need_w and (g := got.pop(0)) is not None:
        grad_w += g
    if need_b and (g := got.pop(0)) is not None:
        grad_b += g


def _checked(hidden, teacher, labels, spec: TokenLossSpec, weight, chunk_size: int | None):
    """The chunked loss's input checks; returns the detached teacher and the chunk size."""
    if hidden.dim() != 2:
        raise ValueError(f"select the tokens first: hidden must be (tokens, features), got {tuple(hidden.shape)}")
    if spec.divergence and teacher is None:
        raise ValueError("a divergence was requested but no teacher outputs were given")
    if spec.cross_entropy and labels is None:
        raise ValueError("cross-entropy was requested but no labels were given")
    if chunk_size is None:
        chunk_size = default_chunk_tokens(hidden.shape[1] if weight is None else weight.shape[0], hidden.device)
    elif chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    return (None if teacher is None else teacher.detach()), chunk_size


def _weighted(div, ce, soft_weight: float, hard_weight: float, dtype) -> torch.Tensor:
    terms = [wt * t.sum() for wt, t in ((soft_weight, div), (hard_weight, ce)) if t is not None]
    return sum(terms[1:], terms[0]).to(dtype) if terms else torch.zeros((), dtype=dtype)


def _closed_form_chunk_grads(h, w, b, teacher, indices, labels, spec, soft_weight, hard_weight, grads,
                             capacity: int, tail_shape: TailShape | None = None):
    """One chunk's terms, its (hidden, weight, bias) gradients added into ``grads`` in place,
    through the closed-form logit gradient: the output layer's two matmuls are the only work
    beyond the loss itself, and nothing V-wide is allocated (see ``_Scratch``)."""
    grad_h, grad_w, grad_b = grads
    dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        scratch = _Scratch(h.shape[0], h.shape[1] if w is None else w.shape[0], capacity, dtype, h.device)
        logits = scratch.take()
        if w is None:
            logits.copy_(h)
        elif h.dtype == w.dtype == dtype:
            torch.mm(h, w.t(), out=logits) if b is None else torch.addmm(b.to(dtype), h, w.t(), out=logits)
        else:  # lower precision (autocast): the matmul in it, the loss in fp32
            logits.copy_(F.linear(h, w, b))
        chunk_fn = _closed_form_chunk if indices is None else partial(_topk_forward_kl_chunk, indices=indices,
                                                                         tail_shape=tail_shape)
        d, c, g, factor = chunk_fn(logits, teacher, labels=labels, spec=spec, soft_weight=soft_weight,
                                   hard_weight=hard_weight, scratch=scratch)
        if g is None:
            return d, c
        # factor * g is the logits' gradient: scale whichever side of each product is small
        if grad_h is not None:
            grad_h.copy_(g * factor if w is None else (g @ w.to(dtype)).mul_(factor))
        if grad_w is not None:
            hs = h.to(dtype) * factor
            grad_w.addmm_(g.t(), hs) if grad_w.dtype == dtype else grad_w.add_((g.t() @ hs).to(grad_w.dtype))
        if grad_b is not None:
            grad_b.add_(g.sum(0).to(grad_b.dtype), alpha=factor)
    return d, c


class _ChunkedWeightedSum(torch.autograd.Function):
    """Forward computes each chunk's loss *and* its gradients at once (the upstream gradient of a
    scalar is known up to a factor), so no chunk is computed twice; backward only scales."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher, teacher_indices, labels, spec, chunk,
                soft_weight, hard_weight, tail_log_weights):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h, grad_w, grad_b, w, b = _grad_buffers(hidden, weight, bias, (need_h, need_w, need_b))
        sums = torch.zeros(3, dtype=torch.float64 if hidden.dtype == torch.float64 else torch.float32,
                           device=hidden.device)
        closed_form = (not spec.divergence or spec.kind in CLOSED_FORM) if teacher_indices is None else \
            (not spec.divergence or _topk_kind(spec) == "forward_kl")
        shape = None if tail_log_weights is None or not closed_form else TailShape.of(tail_log_weights, sums.dtype)
        for s in range(0, hidden.shape[0], chunk):
            e = min(s + chunk, hidden.shape[0])
            rows = (_rows(teacher, s, e), _rows(teacher_indices, s, e), _rows(labels, s, e))
            if closed_form:
                got = []  # added in place
                d, c = _closed_form_chunk_grads(hidden[s:e].detach(), w, b, rows[0], rows[1], rows[2], spec,
                                                soft_weight, hard_weight,
                                                (_rows(grad_h, s, e), grad_w, grad_b), chunk, shape)
            else:
                with torch.enable_grad():
                    h = hidden[s:e].detach().requires_grad_(need_h)
                    d, c = _chunk_terms(h, w, b, *rows, spec)
                    total = _weighted(d, c, soft_weight, hard_weight, sums.dtype)
                    wrt = [t for t, need in ((h, need_h), (w, need_w), (b, need_b)) if need]
                    got = list(torch.autograd.grad(total, wrt, allow_unused=True)) if wrt and total.requires_grad else []
            total = _weighted(d, c, soft_weight, hard_weight, sums.dtype)
            sums[0] += total.detach()
            sums[1] += d.detach().sum() if d is not None else 0.0
            sums[2] += c.detach().sum() if c is not None else 0.0
            if got:
                _add_chunk_grads(got, (need_h, need_w, need_b), grad_h, grad_w, grad_b, s, e)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.has = (need_h, need_w, need_b)
        div_sum, ce_sum = sums[1].clone(), sums[2].clone()
        ctx.mark_non_differentiable(div_sum, ce_sum)
        return sums[0].clone(), div_sum, ce_sum

    @staticmethod
    def backward(ctx, grad_total, _grad_div, _grad_ce):
        saved = ctx.saved_tensors
        grads = [None if g is None or not need else g * grad_total.to(g.dtype)
                 for g, need in zip(saved, ctx.has)]
        return (*grads, None, None, None, None, None, None, None, None)


def chunked_weighted_loss(hidden: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor | None,
                          spec: TokenLossSpec, *, soft_weight: float, hard_weight: float,
                          weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                          teacher_indices: torch.Tensor | None = None, chunk_size: int | None = None,
                          teacher_tail: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``soft_weight * sum(divergence) + hard_weight * sum(cross-entropy)`` over N selected tokens,
    and the two unweighted sums (for logging; not differentiable).

    ``hidden`` is either the student's logits (N, V) (``weight`` None) or its final hidden states
    (N, H) with the output projection ``weight`` (V, H) (and ``bias``): then the student's logits
    exist one chunk at a time only. ``teacher`` is (N, V) logits, or with ``teacher_indices``
    (N, k) the teacher's top-k log-probabilities; forward KL from them bins the tail (the student
    decides its shape) unless ``teacher_tail`` (V,) gives the tail's log-weights (a cache's prior:
    the tail is then spread in proportion to them; reverse KL and JSD always bin the tail).
    Select the tokens that count *before* calling.
    The gradients are computed chunk by chunk in the forward pass, so each chunk's logits are
    computed once: the loss costs what the unchunked loss costs while its memory stays bounded by
    one chunk. Same values and gradients as all tokens at once (tested); only the total is
    differentiable.
    """
    teacher, chunk_size = _checked(hidden, teacher, labels, spec, weight, chunk_size)
    if teacher_tail is not None and teacher_indices is None:
        raise ValueError("teacher_tail shapes a top-k teacher's tail: give teacher_indices too")
    return _ChunkedWeightedSum.apply(hidden, weight, bias, teacher, teacher_indices, labels, spec,
                                     chunk_size, float(soft_weight), float(hard_weight),
                                     None if teacher_tail is None else teacher_tail.detach())
