"""Divergences: float64 references written out term by term, limits, gradcheck, top-k buckets."""

import math

import pytest
import torch

from kdistill.losses.divergences import (
    DIVERGENCES,
    divergence_from_log_probs,
    forward_kl,
    generalized_jsd,
    kl,
    reverse_kl,
    skew_kl,
    tail_bins,
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




def test_kl_reductions_match_the_reference():
    s, t = _pair()
    log_q, log_p = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    want = _reference("forward_kl", s, t)
    torch.testing.assert_close(kl(log_p, log_q), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kl(log_p, log_q, "sum"), want.sum(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kl(log_p, log_q, "mean"), want.mean(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        kl(log_p, log_q, "max")


def test_tail_bins_take_a_known_tail_or_the_rest():
    log_top = torch.log(torch.tensor([[0.5, 0.2], [0.9, 0.05]], dtype=torch.float64))
    torch.testing.assert_close(tail_bins(log_top).exp(),
                               torch.tensor([[0.5, 0.2, 0.3], [0.9, 0.05, 0.05]], dtype=torch.float64))
    known = torch.log(torch.tensor([0.1, 0.2], dtype=torch.float64))
    torch.testing.assert_close(tail_bins(log_top, known)[:, -1], known)
