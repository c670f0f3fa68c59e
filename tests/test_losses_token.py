"""Token-level divergences: float64 references written out term by term, limits, gradcheck,
and the chunked computation equal to the unchunked one in value and gradient."""

import math

import pytest
import torch

from kdistill.losses.token import (
    DIVERGENCES,
    TokenLossSpec,
    chunked_token_losses,
    divergence_from_log_probs,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    token_divergence,
    topk_bucket_log_probs,
    total_variation,
)


def _pair(n=5, v=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, v, generator=g, dtype=dtype) * 2, torch.randn(n, v, generator=g, dtype=dtype) * 2)


def _softmax_rows(x, t):
    """Softmax by hand, one row at a time, in Python floats."""
    rows = []
    for row in x.tolist():
        m = max(row)
        e = [math.exp((r - m) / t) for r in row]
        z = sum(e)
        rows.append([v / z for v in e])
    return rows


def _kl_ref(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _reference(kind, s, t, temperature=1.0, beta=0.5, skew=0.1):
    qs, ps = _softmax_rows(s, temperature), _softmax_rows(t, temperature)
    out = []
    for q, p in zip(qs, ps):
        if kind == "forward_kl":
            v = _kl_ref(p, q)
        elif kind == "reverse_kl":
            v = _kl_ref(q, p)
        elif kind == "jsd":
            m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q)]
            v = beta * _kl_ref(p, m) + (1 - beta) * _kl_ref(q, m)
        elif kind == "skew_forward_kl":
            v = _kl_ref(p, [skew * pi + (1 - skew) * qi for pi, qi in zip(p, q)])
        elif kind == "skew_reverse_kl":
            v = _kl_ref(q, [skew * qi + (1 - skew) * pi for pi, qi in zip(p, q)])
        else:
            v = 0.5 * sum(abs(pi - qi) for pi, qi in zip(p, q))
        out.append(v * temperature**2)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_float64_reference(kind, temperature):
    s, t = _pair()
    got = token_divergence(s, t, kind, temperature=temperature, beta=0.3, skew=0.2)
    want = _reference(kind, s, t, temperature, beta=0.3, skew=0.2)
    assert got.shape == (5,)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_named_wrappers_and_per_token_shape():
    s, t = _pair()
    s3, t3 = s.reshape(1, 5, 7), t.reshape(1, 5, 7)
    assert forward_kl(s3, t3).shape == (1, 5)
    torch.testing.assert_close(reverse_kl(s, t), token_divergence(s, t, "reverse_kl"))
    torch.testing.assert_close(generalized_jsd(s, t, 0.7), token_divergence(s, t, "jsd", beta=0.7))
    torch.testing.assert_close(skew_kl(s, t, 0.2, reverse=True), _reference("skew_reverse_kl", s, t, skew=0.2))
    torch.testing.assert_close(total_variation(s, t), _reference("tv", s, t))


def test_jsd_limits():
    """JSD(beta)/beta -> forward KL as beta -> 0; JSD/(1-beta) -> reverse KL as beta -> 1; the end
    points are those KLs; beta = 0.5 is the usual Jensen-Shannon divergence (<= log 2)."""
    s, t = _pair()
    fkl, rkl = forward_kl(s, t), reverse_kl(s, t)
    for eps in (1e-4, 1e-6):
        torch.testing.assert_close(generalized_jsd(s, t, eps) / eps, fkl, rtol=100 * eps, atol=1e-6)
        torch.testing.assert_close(generalized_jsd(s, t, 1 - eps) / eps, rkl, rtol=100 * eps, atol=1e-6)
    torch.testing.assert_close(generalized_jsd(s, t, 0.0), fkl)
    torch.testing.assert_close(generalized_jsd(s, t, 1.0), rkl)
    assert (generalized_jsd(s, t, 0.5) <= math.log(2) + 1e-12).all()


def test_zero_for_identical_and_skew_zero_is_kl():
    s, _ = _pair()
    for kind in DIVERGENCES:
        assert token_divergence(s, s.clone(), kind).abs().max() < 1e-12
    s, t = _pair(seed=3)
    torch.testing.assert_close(skew_kl(s, t, 0.0), forward_kl(s, t))
    torch.testing.assert_close(skew_kl(s, t, 0.0, reverse=True), reverse_kl(s, t))


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_gradcheck(kind):
    s, t = _pair(n=3, v=5, seed=1)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: token_divergence(x, t, kind, temperature=1.7, beta=0.3, skew=0.2), (s,))


def test_bad_arguments_are_refused():
    s, t = _pair()
    with pytest.raises(ValueError, match="differ"):
        forward_kl(s, t[:, :6])
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, t, 1.5)
    with pytest.raises(ValueError, match="unknown divergence"):
        token_divergence(s, t, "hellinger")


def test_topk_buckets_keep_tail_and_equal_dense_when_k_is_v():
    s, t = _pair(n=4, v=9, seed=2)
    log_p = torch.log_softmax(t, -1)
    idx = log_p.topk(9, -1).indices
    log_q_b, log_p_b = topk_bucket_log_probs(s, idx, log_p.gather(-1, idx))
    # k = V: the tail bucket is empty and the bucketed KL is the full KL
    got = divergence_from_log_probs("forward_kl", log_q_b, log_p_b)
    torch.testing.assert_close(got, forward_kl(s, t), atol=1e-9, rtol=1e-9)
    # k < V: buckets are distributions and the bucketed KL bounds the full one from below
    idx = log_p.topk(3, -1).indices
    log_q_b, log_p_b = topk_bucket_log_probs(s, idx, log_p.gather(-1, idx))
    torch.testing.assert_close(log_p_b.exp().sum(-1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(log_q_b.exp().sum(-1), torch.ones(4, dtype=torch.float64))
    assert (divergence_from_log_probs("forward_kl", log_q_b, log_p_b) <= forward_kl(s, t) + 1e-12).all()


# ---------------------------------------------------------------- chunking
def _unchunked(hidden, weight, bias, teacher, labels, spec):
    logits = hidden if weight is None else torch.nn.functional.linear(hidden, weight, bias)
    div = token_divergence(logits, teacher, spec.kind, temperature=spec.temperature, beta=spec.beta)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    return div, ce


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "tv"])
@pytest.mark.parametrize("fused", [False, True])
def test_chunked_equals_unchunked_value_and_gradient(kind, fused):
    g = torch.Generator().manual_seed(0)
    n, h, v = 13, 6, 11
    spec = TokenLossSpec(kind=kind, temperature=2.0, beta=0.4)
    teacher = torch.randn(n, v, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (n,), generator=g)
    if fused:
        hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
        weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
        bias = torch.randn(v, generator=g, dtype=torch.float64, requires_grad=True)
        leaves = (hidden, weight, bias)
    else:
        hidden = torch.randn(n, v, generator=g, dtype=torch.float64, requires_grad=True)
        weight = bias = None
        leaves = (hidden,)
    cw = torch.rand(n, generator=g, dtype=torch.float64)  # arbitrary upstream weights
    div, ce = chunked_token_losses(hidden, teacher, labels, spec, weight=weight, bias=bias, chunk_size=4)
    ref_div, ref_ce = _unchunked(hidden, weight, bias, teacher, labels, spec)
    torch.testing.assert_close(div, ref_div)
    torch.testing.assert_close(ce, ref_ce)
    got = torch.autograd.grad((cw * div + 0.3 * ce).sum(), leaves)
    want = torch.autograd.grad((cw * ref_div + 0.3 * ref_ce).sum(), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_chunked_gradcheck_fused_with_topk_teacher():
    g = torch.Generator().manual_seed(1)
    n, h, v, k = 5, 3, 8, 3
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    log_p = torch.log_softmax(torch.randn(n, v, generator=g, dtype=torch.float64), -1)
    top = log_p.topk(k, -1)
    labels = torch.randint(0, v, (n,), generator=g)
    spec = TokenLossSpec(kind="jsd", beta=0.5)

    def f(hh, ww):
        div, ce = chunked_token_losses(hh, top.values, labels, spec, weight=ww,
                                       teacher_indices=top.indices, chunk_size=2)
        return div + 0.5 * ce

    assert torch.autograd.gradcheck(f, (hidden, weight))


def test_chunked_divergence_only_and_ce_only():
    s, t = _pair(n=6, v=5)
    s.requires_grad_(True)
    labels = torch.arange(6) % 5
    div, ce = chunked_token_losses(s, t, None, TokenLossSpec(cross_entropy=False), chunk_size=4)
    torch.testing.assert_close(div, forward_kl(s, t))
    assert (ce == 0).all()
    div, ce = chunked_token_losses(s, None, labels, TokenLossSpec(divergence=False), chunk_size=4)
    (g,) = torch.autograd.grad(ce.sum(), s)
    (want,) = torch.autograd.grad(torch.nn.functional.cross_entropy(s, labels, reduction="sum"), s)
    torch.testing.assert_close(g, want)
    with pytest.raises(ValueError, match="select the tokens first"):
        chunked_token_losses(s.reshape(1, 6, 5), t, labels, TokenLossSpec())


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
    from kdistill.losses.token import chunked_weighted_loss

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
    from kdistill.losses.token import default_chunk_tokens

    for vocab in (49_152, 151_936, 32_000):
        chunk = default_chunk_tokens(vocab)
        assert chunk * vocab * 4 <= 24 * 2**20 < 2 * chunk * vocab * 4  # the largest power of two
    assert default_chunk_tokens(49_152) == 128
    assert default_chunk_tokens(50) == 1024  # tiny vocabularies: bounded by tokens
    assert default_chunk_tokens(49_152, "cuda") == 512


@pytest.mark.parametrize("kind,temperature", [("forward_kl", 1.0), ("reverse_kl", 2.0), ("jsd", 1.0), ("jsd", 0.5)])
@pytest.mark.parametrize("soft_weight,hard_weight", [(0.0, 0.4), (0.6, 0.0), (0.0, 0.0), (1.3, 2.0)])
def test_closed_form_gradients_with_a_zero_weight_and_a_bias(kind, temperature, soft_weight, hard_weight):
    from kdistill.losses.token import chunked_weighted_loss

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
