"""The fused chunked output-layer + token loss: equal to the unchunked loss in value and
gradient (closed-form and autograd paths, full and top-k teachers), chunk sizing."""

import math

import pytest
import torch

from kdistill.losses.divergences import divergence_from_log_probs, forward_kl, token_divergence, topk_bucket_log_probs
from kdistill.losses.fused import TokenLossSpec, chunked_weighted_loss, default_chunk_tokens


def _pair(n=5, v=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, v, generator=g, dtype=dtype) * 2, torch.randn(n, v, generator=g, dtype=dtype) * 2)


# ---------------------------------------------------------------- chunking
def _unchunked(hidden, weight, bias, teacher, labels, spec):
    logits = hidden if weight is None else torch.nn.functional.linear(hidden, weight, bias)
    div = token_divergence(logits, teacher, spec.kind, temperature=spec.temperature, beta=spec.beta)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    return div, ce


def test_topk_teacher_matches_the_bucketed_reference_and_gradcheck():
    g = torch.Generator().manual_seed(1)
    n, h, v, k = 5, 3, 8, 3
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    log_p = torch.log_softmax(torch.randn(n, v, generator=g, dtype=torch.float64), -1)
    top = log_p.topk(k, -1)
    labels = torch.randint(0, v, (n,), generator=g)
    spec = TokenLossSpec(kind="jsd", beta=0.5)

    def f(hh, ww):
        return chunked_weighted_loss(hh, top.values, labels, spec, soft_weight=1.0, hard_weight=0.5,
                                     weight=ww, teacher_indices=top.indices, chunk_size=2)[0]

    logits = torch.nn.functional.linear(hidden, weight)
    want = (divergence_from_log_probs("jsd", *topk_bucket_log_probs(logits, top.indices, top.values)).sum()
            + 0.5 * torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
    torch.testing.assert_close(f(hidden, weight), want)
    assert torch.autograd.gradcheck(f, (hidden, weight))


@pytest.mark.parametrize("soft, hard", [(1.0, 0.0), (0.7, 0.3), (1.0, 1.0)])
@pytest.mark.parametrize("kind, beta", [("forward_kl", 0.5), ("jsd", 0.0)])
def test_topk_forward_kl_is_closed_form_with_the_bucketed_value_and_gradient(soft, hard, kind, beta, monkeypatch):
    """Forward KL from a top-k teacher takes the closed-form chunk path (no per-chunk autograd):
    the bucketed reference's value and gradient (biased output layer, chunks of 2), gradcheck."""
    import kdistill.losses.fused as fused

    g = torch.Generator().manual_seed(4)
    n, h, v, k = 7, 3, 9, 4
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = (torch.randn(v, h, generator=g, dtype=torch.float64) * 2).requires_grad_()
    bias = torch.randn(v, generator=g, dtype=torch.float64, requires_grad=True)
    top = torch.log_softmax(torch.randn(n, v, generator=g, dtype=torch.float64) * 3, -1).topk(k, -1)
    labels = torch.randint(0, v, (n,), generator=g)
    spec = TokenLossSpec(kind=kind, beta=beta, cross_entropy=hard != 0)
    monkeypatch.setattr(fused, "_chunk_terms", lambda *a, **kw: pytest.fail("took the autograd path"))

    def f(hh, ww, bb):
        return chunked_weighted_loss(hh, top.values, labels, spec, soft_weight=soft, hard_weight=hard,
                                     weight=ww, bias=bb, teacher_indices=top.indices, chunk_size=2)[0]

    logits = torch.nn.functional.linear(hidden, weight, bias)
    want = soft * divergence_from_log_probs("forward_kl", *topk_bucket_log_probs(logits, top.indices, top.values)).sum()
    if hard:
        want = want + hard * torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    got = f(hidden, weight, bias)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, (hidden, weight, bias)), torch.autograd.grad(want, (hidden, weight, bias))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(f, (hidden, weight, bias))


@pytest.mark.parametrize("soft, hard", [(1.0, 0.0), (0.7, 0.3)])
def test_topk_forward_kl_with_a_tail_shape_is_the_dense_kl_to_the_rebuilt_distribution(soft, hard, monkeypatch):
    """With the tail's log-weights given, the loss is the full-vocabulary KL(P~ || Q), P~ the k
    kept log-probabilities and the tail mass spread in proportion to the weights over the other
    tokens: the dense float64 reference's value and gradient, gradcheck; zero weights are an
    even tail."""
    import kdistill.losses.fused as fused

    g = torch.Generator().manual_seed(5)
    n, h, v, k = 6, 3, 11, 3
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = (torch.randn(v, h, generator=g, dtype=torch.float64) * 2).requires_grad_()
    top = torch.log_softmax(torch.randn(n, v, generator=g, dtype=torch.float64) * 3, -1).topk(k, -1)
    labels = torch.randint(0, v, (n,), generator=g)
    spec = TokenLossSpec(cross_entropy=hard != 0)
    monkeypatch.setattr(fused, "_chunk_terms", lambda *a, **kw: pytest.fail("took the autograd path"))
    for log_w in (torch.randn(v, generator=g, dtype=torch.float64) * 2, torch.zeros(v, dtype=torch.float64)):
        tail = top.values.exp().sum(-1).neg().log1p()
        keep = torch.zeros(n, v, dtype=torch.bool).scatter_(1, top.indices, True)
        shaped = torch.where(keep, -math.inf, log_w.expand(n, v))
        rebuilt = (shaped - shaped.logsumexp(-1, keepdim=True) + tail[:, None]).scatter(1, top.indices, top.values)

        def f(hh, ww):
            return chunked_weighted_loss(hh, top.values, labels, spec, soft_weight=soft, hard_weight=hard, weight=ww,
                                         teacher_indices=top.indices, chunk_size=4, teacher_tail=log_w)[0]

        logits = hidden @ weight.t()
        want = soft * (rebuilt.exp() * (rebuilt - torch.log_softmax(logits, -1))).sum()
        if hard:
            want = want + hard * torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        got = f(hidden, weight)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        for a, b in zip(torch.autograd.grad(got, (hidden, weight)), torch.autograd.grad(want, (hidden, weight))):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert torch.autograd.gradcheck(f, (hidden, weight))


def test_topk_forward_kl_gradient_stays_bounded_when_the_student_leaves_no_tail():
    """A float32 student with all but ~1e-9 of its mass on the teacher's k tokens: 1 - sum(Q_k)
    rounds to 0, but the tail is summed over the other tokens, so the gradient is finite and
    bounded by the teacher's tail mass (a complement-based tail would divide by ~1e-38)."""
    v, k = 50, 2
    logits = torch.full((1, v), -25.0)
    logits[0, :k] = 0.0
    logits.requires_grad_()
    values = torch.log(torch.tensor([[0.6, 0.3]]))  # the teacher leaves 0.1 in its tail
    total, _, _ = chunked_weighted_loss(logits, values, None, TokenLossSpec(cross_entropy=False), soft_weight=1.0,
                                        hard_weight=0.0, teacher_indices=torch.tensor([[0, 1]]))
    (grad,) = torch.autograd.grad(total, logits)
    assert torch.isfinite(total) and torch.isfinite(grad).all()
    torch.testing.assert_close(grad[0, k:].sum(), torch.tensor(-0.1), rtol=1e-3, atol=1e-6)  # Q_tail - P_tail
    assert grad.abs().max() <= 0.5 + 1e-6


def test_divergence_only_and_ce_only():
    s, t = _pair(n=6, v=5)
    s.requires_grad_(True)
    labels = torch.arange(6) % 5
    total, div, ce = chunked_weighted_loss(s, t, None, TokenLossSpec(cross_entropy=False), soft_weight=1.0,
                                           hard_weight=1.0, chunk_size=4)
    torch.testing.assert_close(div, forward_kl(s, t).sum().detach())
    torch.testing.assert_close(total, div)
    assert ce == 0
    total, div, ce = chunked_weighted_loss(s, None, labels, TokenLossSpec(divergence=False), soft_weight=1.0,
                                           hard_weight=1.0, chunk_size=4)
    (g,) = torch.autograd.grad(total, s)
    (want,) = torch.autograd.grad(torch.nn.functional.cross_entropy(s, labels, reduction="sum"), s)
    torch.testing.assert_close(g, want)
    assert div == 0
    with pytest.raises(ValueError, match="select the tokens first"):
        chunked_weighted_loss(s.reshape(1, 6, 5), t, labels, TokenLossSpec(), soft_weight=1.0, hard_weight=1.0)


# the closed-form logit gradients (forward KL, reverse KL, JSD and its limits, cross-entropy, at
# T = 1 where the student's softmax is shared and at T != 1) and the autograd path (skew KL, TV)
WEIGHTED_CASES = [("jsd", 1.5, 0.2, True, True), ("jsd", 1.0, 0.7, True, True),
                  ("jsd", 2.0, 0.0, True, True), ("jsd", 1.0, 1.0, True, False),
                  ("forward_kl", 1.0, 0.5, True, True), ("forward_kl", 3.0, 0.5, True, True),
                  ("reverse_kl", 1.0, 0.5, True, True), ("reverse_kl", 0.5, 0.5, True, False),
                  ("forward_kl", 1.0, 0.5, False, True), ("skew_forward_kl", 2.0, 0.5, True, True),
                  ("tv", 1.0, 0.5, True, True)]


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("kind,temperature,beta,divergence,cross_entropy", WEIGHTED_CASES)
def test_weighted_sum_computes_gradients_in_forward_exactly(fused, kind, temperature, beta,
                                                            divergence, cross_entropy):
    g = torch.Generator().manual_seed(5)
    n, h, v = 7, 3, 6
    teacher = torch.randn(n, v, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (n,), generator=g)
    hidden = torch.randn(n, h if fused else v, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True) if fused else None
    leaves = (hidden, weight) if fused else (hidden,)
    spec = TokenLossSpec(kind=kind, temperature=temperature, beta=beta, divergence=divergence,
                         cross_entropy=cross_entropy)
    total, soft, hard = chunked_weighted_loss(hidden, teacher, labels, spec, soft_weight=0.6,
                                              hard_weight=0.4, weight=weight, chunk_size=3)
    ref_div, ref_ce = _unchunked(hidden, weight, None, teacher, labels, spec)
    ref_div, ref_ce = ref_div * divergence, ref_ce * cross_entropy
    want = 0.6 * ref_div.sum() + 0.4 * ref_ce.sum()
    torch.testing.assert_close(total, want)
    torch.testing.assert_close(soft, ref_div.sum().detach())
    torch.testing.assert_close(hard, ref_ce.sum().detach())
    for a, b in zip(torch.autograd.grad(2.5 * total, leaves), torch.autograd.grad(2.5 * want, leaves)):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(
        lambda *x: chunked_weighted_loss(x[0], teacher, labels, spec, soft_weight=0.6, hard_weight=0.4,
                                         weight=x[1] if fused else None, chunk_size=3)[0], leaves)


def test_default_chunk_keeps_cpu_logits_within_24_mib():
    for vocab in (49_152, 151_936, 32_000):
        chunk = default_chunk_tokens(vocab)
        assert chunk * vocab * 4 <= 24 * 2**20 < 2 * chunk * vocab * 4  # the largest power of two
    assert default_chunk_tokens(49_152) == 128
    assert default_chunk_tokens(50) == 1024  # tiny vocabularies: bounded by tokens
    assert default_chunk_tokens(49_152, "cuda") == 512


@pytest.mark.parametrize("kind,temperature", [("forward_kl", 1.0), ("reverse_kl", 2.0), ("jsd", 1.0), ("jsd", 0.5)])
@pytest.mark.parametrize("soft_weight,hard_weight", [(0.0, 0.4), (0.6, 0.0), (0.0, 0.0), (1.3, 2.0)])
def test_closed_form_gradients_with_a_zero_weight_and_a_bias(kind, temperature, soft_weight, hard_weight):
    g = torch.Generator().manual_seed(7)
    n, h, v = 6, 3, 5
    teacher = torch.randn(n, v, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (n,), generator=g)
    leaves = [torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
              for shape in ((n, h), (v, h), (v,))]
    spec = TokenLossSpec(kind=kind, temperature=temperature, beta=0.3)
    total, _, _ = chunked_weighted_loss(leaves[0], teacher, labels, spec, soft_weight=soft_weight,
                                        hard_weight=hard_weight, weight=leaves[1], bias=leaves[2], chunk_size=4)
    ref_div, ref_ce = _unchunked(leaves[0], leaves[1], leaves[2], teacher, labels, spec)
    want = soft_weight * ref_div.sum() + hard_weight * ref_ce.sum()
    torch.testing.assert_close(total, want)
    if soft_weight or hard_weight:
        for a, b in zip(torch.autograd.grad(total, leaves), torch.autograd.grad(want, leaves)):
            torch.testing.assert_close(a, b)
