"""Token-level divergences between a teacher's and a student's next-token distributions.

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
import threading
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tv"]
DIVERGENCES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl",
                                "skew_reverse_kl", "tv")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) over the last dimension, from finite log-probabilities (an underflowed p
    contributes 0 * finite = 0)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _log_mix(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(w P + (1 - w) Q), computed stably in log space."""
    return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))


def divergence_from_log_probs(kind: str, student_log_probs: torch.Tensor,
                              teacher_log_probs: torch.Tensor, *, beta: float = 0.5,
                              skew: float = 0.1) -> torch.Tensor:
    """A divergence between two normalised log-distributions, per row (no temperature here)."""
    log_q, log_p = student_log_probs, teacher_log_probs
    if kind == "forward_kl":
        return _kl(log_p, log_q)
    if kind == "reverse_kl":
        return _kl(log_q, log_p)
    if kind == "jsd":
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"jsd beta must be in [0, 1], got {beta}")
        if beta == 0.0:
            return _kl(log_p, log_q)
        if beta == 1.0:
            return _kl(log_q, log_p)
        log_m = _log_mix(log_p, log_q, beta)
        return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    if kind in ("skew_forward_kl", "skew_reverse_kl"):
        if not 0.0 <= skew < 1.0:
            raise ValueError(f"skew must be in [0, 1), got {skew}")
        if kind == "skew_forward_kl":
            return _kl(log_p, log_q if skew == 0 else _log_mix(log_p, log_q, skew))
        return _kl(log_q, log_p if skew == 0 else _log_mix(log_q, log_p, skew))
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
def topk_bucket_log_probs(student_logits: torch.Tensor, teacher_indices: torch.Tensor,
                          teacher_log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both distributions coarse-grained to (the teacher's top-k tokens, everything else).

    ``teacher_log_probs`` are the teacher's full-softmax log-probabilities at its top-k tokens
    (never renormalised): the tail bucket keeps the mass they leave. Any divergence between the
    bucketed distributions is a lower bound of the full-vocabulary one (data processing).
    """
    return _buckets(F.log_softmax(student_logits, dim=-1), teacher_indices, teacher_log_probs)


def _buckets(student_log_probs, teacher_indices, teacher_log_probs):
    log_q_top = student_log_probs.gather(-1, teacher_indices)
    tp = teacher_log_probs.to(log_q_top.dtype)
    return torch.cat([log_q_top, _log_rest(log_q_top)], -1), torch.cat([tp, _log_rest(tp)], -1)


def _log_rest(log_probs: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(log_probs))): the log of the mass outside the given tokens."""
    rest = torch.logsumexp(log_probs, -1, keepdim=True).expm1().neg()
    return rest.clamp_min(torch.finfo(log_probs.dtype).tiny).log()


# ---------------------------------------------------------------- chunked, memory-bounded
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
            log_q, log_p = _buckets(log_q1, teacher_indices, teacher)
            div = divergence_from_log_probs(spec.kind, log_q, log_p, beta=spec.beta, skew=spec.skew)
    if spec.cross_entropy:
        if log_q1 is None:
            log_q1 = F.log_softmax(logits, dim=-1)
        ce = -log_q1.gather(-1, labels[:, None]).squeeze(-1)
    return div, ce


CLOSED_FORM = ("forward_kl", "reverse_kl", "jsd")


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


class _ChunkedTokenLoss(torch.autograd.Function):
    """Forward: per-chunk values under no_grad (nothing V-wide is kept). Backward: recompute each
    chunk with autograd and accumulate the input gradients, so the backward's peak is one chunk's
    activations plus the gradient buffers, never a (tokens x V) graph."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher, teacher_indices, labels, spec, chunk):
        n = hidden.shape[0]
        dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        div, ce = hidden.new_zeros(n, dtype=dtype), hidden.new_zeros(n, dtype=dtype)
        with torch.no_grad():
            for s in range(0, n, chunk):
                e = min(s + chunk, n)
                d, c = _chunk_terms(hidden[s:e], weight, bias, _rows(teacher, s, e),
                                    _rows(teacher_indices, s, e), _rows(labels, s, e), spec)
                if d is not None:
                    div[s:e] = d
                if c is not None:
                    ce[s:e] = c
        ctx.save_for_backward(hidden, weight, bias, teacher, teacher_indices, labels)
        ctx.spec, ctx.chunk = spec, chunk
        return div, ce

    @staticmethod
    def backward(ctx, grad_div, grad_ce):
        hidden, weight, bias, teacher, teacher_indices, labels = ctx.saved_tensors
        spec, chunk = ctx.spec, ctx.chunk
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h, grad_w, grad_b, w, b = _grad_buffers(hidden, weight, bias, (need_h, need_w, need_b))
        for s in range(0, hidden.shape[0], chunk):
            e = min(s + chunk, hidden.shape[0])
            with torch.enable_grad():
                h = hidden[s:e].detach().requires_grad_(need_h)
                d, c = _chunk_terms(h, w, b, _rows(teacher, s, e), _rows(teacher_indices, s, e),
                                    _rows(labels, s, e), spec)
                outputs, grads = [], []
                if d is not None:
                    outputs.append(d)
                    grads.append(grad_div[s:e])
                if c is not None:
                    outputs.append(c)
                    grads.append(grad_ce[s:e])
                wrt = [t for t, need in ((h, need_h), (w, need_w), (b, need_b)) if need]
                got = list(torch.autograd.grad(outputs, wrt, grads, allow_unused=True))
            _add_chunk_grads(got, (need_h, need_w, need_b), grad_h, grad_w, grad_b, s, e)
        return grad_h, grad_w, grad_b, None, None, None, None, None


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
    """The chunked losses' input checks; returns the detached teacher and the chunk size."""
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


def chunked_token_losses(hidden: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor | None,
                         spec: TokenLossSpec, *, weight: torch.Tensor | None = None,
                         bias: torch.Tensor | None = None, teacher_indices: torch.Tensor | None = None,
                         chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token divergence and cross-entropy over N selected tokens, ``chunk_size`` at a time.

    ``hidden`` is either the student's logits (N, V) (``weight`` None) or its final hidden states
    (N, H) with the output projection ``weight`` (V, H) (and ``bias``): then the student's logits
    exist one chunk at a time only. ``teacher`` is (N, V) logits, or with ``teacher_indices``
    (N, k) the teacher's top-k log-probabilities. Same values and gradients as computing all
    tokens at once (tested); select the tokens that count *before* calling this.
    """
    teacher, chunk_size = _checked(hidden, teacher, labels, spec, weight, chunk_size)
    return _ChunkedTokenLoss.apply(hidden, weight, bias, teacher, teacher_indices, labels, spec,
                                   chunk_size)


def _weighted(div, ce, soft_weight: float, hard_weight: float, dtype) -> torch.Tensor:
    terms = [wt * t.sum() for wt, t in ((soft_weight, div), (hard_weight, ce)) if t is not None]
    return sum(terms[1:], terms[0]).to(dtype) if terms else torch.zeros((), dtype=dtype)


def _closed_form_chunk_grads(h, w, b, teacher, labels, spec, soft_weight, hard_weight, grads, capacity: int):
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
        d, c, g, factor = _closed_form_chunk(logits, teacher, labels, spec, soft_weight, hard_weight, scratch)
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
                soft_weight, hard_weight):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h, grad_w, grad_b, w, b = _grad_buffers(hidden, weight, bias, (need_h, need_w, need_b))
        sums = torch.zeros(3, dtype=torch.float64 if hidden.dtype == torch.float64 else torch.float32,
                           device=hidden.device)
        closed_form = teacher_indices is None and (not spec.divergence or spec.kind in CLOSED_FORM)
        for s in range(0, hidden.shape[0], chunk):
            e = min(s + chunk, hidden.shape[0])
            rows = (_rows(teacher, s, e), _rows(teacher_indices, s, e), _rows(labels, s, e))
            if closed_form:
                got = []  # added in place
                d, c = _closed_form_chunk_grads(hidden[s:e].detach(), w, b, rows[0], rows[2], spec,
                                                soft_weight, hard_weight,
                                                (_rows(grad_h, s, e), grad_w, grad_b), chunk)
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
        return (*grads, None, None, None, None, None, None, None)


def chunked_weighted_loss(hidden: torch.Tensor, teacher: torch.Tensor | None, labels: torch.Tensor | None,
                          spec: TokenLossSpec, *, soft_weight: float, hard_weight: float,
                          weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                          teacher_indices: torch.Tensor | None = None, chunk_size: int | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``soft_weight * sum(divergence) + hard_weight * sum(cross-entropy)`` over N selected tokens,
    and the two unweighted sums (for logging; not differentiable).

    Same inputs as ``chunked_token_losses``, but the gradients are computed chunk by chunk in the
    forward pass, so each chunk's logits are computed once: the loss costs what the unchunked loss
    costs while its memory stays bounded by one chunk. Only the total is differentiable.
    """
    teacher, chunk_size = _checked(hidden, teacher, labels, spec, weight, chunk_size)
    return _ChunkedWeightedSum.apply(hidden, weight, bias, teacher, teacher_indices, labels, spec,
                                     chunk_size, float(soft_weight), float(hard_weight))
