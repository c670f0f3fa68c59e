"""The fused, chunked output layer + token loss of causal-LM distillation.

``chunked_weighted_loss`` takes the student's final hidden states and its output projection and
computes ``soft * sum(divergence) + hard * sum(cross-entropy)`` over the selected tokens a chunk
at a time, with each chunk's gradients made in the forward pass (in closed form for forward KL,
reverse KL and JSD, and for forward KL from a top-k teacher, its tail binned or shaped by a
prior; by per-chunk autograd otherwise): the (tokens x vocabulary) logits never exist
at once, and no chunk is computed twice. The closed-form chunks are in
``kdistill.losses.token_grads``, the divergences themselves in ``kdistill.losses.divergences``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from kdistill.losses.divergences import divergence_from_log_probs, topk_buckets
from kdistill.losses.token_grads import (CLOSED_FORM, Scratch, TailShape, TokenLossSpec, closed_form_chunk,
                                        topk_forward_kl_chunk, topk_kind)

CPU_CHUNK_BYTES = 24 * 2**20


def default_chunk_tokens(vocab_size: int, device: str | torch.device = "cpu") -> int:
    """Tokens per loss chunk. On a CPU one chunk's fp32 logits stay within 24 MiB: larger fresh
    buffers are mapped from the OS and page-faulted on every allocation (glibc's mmap threshold
    is at most 32 MiB), which costs more than the loss arithmetic itself. Elsewhere 512."""
    if torch.device(device).type != "cpu":
        return 512
    fits = max(1, CPU_CHUNK_BYTES // (4 * vocab_size))
    return min(1024, max(16, 2 ** (fits.bit_length() - 1)))


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
    beyond the loss itself, and nothing V-wide is allocated (see ``Scratch``)."""
    grad_h, grad_w, grad_b = grads
    dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        scratch = Scratch(h.shape[0], h.shape[1] if w is None else w.shape[0], capacity, dtype, h.device)
        logits = scratch.take()
        if w is None:
            logits.copy_(h)
        elif h.dtype == w.dtype == dtype:
            torch.mm(h, w.t(), out=logits) if b is None else torch.addmm(b.to(dtype), h, w.t(), out=logits)
        else:  # lower precision (autocast): the matmul in it, the loss in fp32
            logits.copy_(F.linear(h, w, b))
        chunk_fn = closed_form_chunk if indices is None else partial(topk_forward_kl_chunk, indices=indices,
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
            (not spec.divergence or topk_kind(spec) == "forward_kl")
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
