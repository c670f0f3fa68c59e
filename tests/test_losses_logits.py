"""DKD, DIST and logit standardisation: float64 loop references, gradcheck, invariances."""

import math

import pytest
import torch

from kdistill.losses import soft_target_kl
from kdistill.losses.logits import dist, dkd, dkd_warmup, standardize_logits


def _randn(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _softmax(row, temperature):
    z = [float(v) / temperature for v in row]
    top = max(z)
    e = [math.exp(v - top) for v in z]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def dkd_reference(s, t, labels, alpha, beta, temperature, warmup):
    out = []
    for i in range(s.shape[0]):
        y = int(labels[i])
        if y == -100:
            out.append(0.0)
            continue
        ps, pt = _softmax(s[i], temperature), _softmax(t[i], temperature)
        tckd = _kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        rest = [j for j in range(len(ps)) if j != y]
        nckd = _kl([pt[j] / (1 - pt[y]) for j in rest], [ps[j] / (1 - ps[y]) for j in rest])
        out.append(warmup * temperature**2 * (alpha * tckd + beta * nckd))
    return torch.tensor(out, dtype=torch.float64)


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def dist_reference(s, t, beta, gamma, temperature):
    n, c = s.shape
    ps = [_softmax(s[i], temperature) for i in range(n)]
    pt = [_softmax(t[i], temperature) for i in range(n)]
    intra = sum(1 - _pearson([ps[i][k] for i in range(n)], [pt[i][k] for i in range(n)]) for k in range(c)) / c
    return torch.tensor([temperature**2 * (beta * (1 - _pearson(ps[i], pt[i])) + gamma * intra) for i in range(n)],
                        dtype=torch.float64)


def test_dkd_matches_reference_with_an_unlabelled_sample():
    s, t = _randn(5, 6, seed=1, scale=2), _randn(5, 6, seed=2, scale=3)
    labels = torch.tensor([0, 3, -100, 5, 3])
    kwargs = dict(alpha=0.7, beta=8.0, temperature=4.0, warmup=0.25)
    ref = dkd_reference(s, t, labels, **kwargs)
    assert ref[2] == 0.0 and (ref[[0, 1, 3, 4]] > 0).all()
    torch.testing.assert_close(dkd(s, t, labels, **kwargs, reduction="none"), ref)
    torch.testing.assert_close(dkd(s, t, labels, **kwargs, reduction="sum"), ref.sum())


def test_dkd_stays_finite_for_a_saturated_teacher():
    s, t = _randn(3, 5, seed=3), _randn(3, 5, seed=4)
    t[:, 1] = 500.0  # p_target = 1 to double precision: 1 - p_t must not be log(0)
    labels = torch.tensor([1, 1, 1])
    out = dkd(s.requires_grad_(), t, labels, temperature=1.0, reduction="sum")
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(s.grad).all()


def test_dkd_gradcheck_and_teacher_detached():
    s = _randn(4, 5, seed=5).requires_grad_()
    t = _randn(4, 5, seed=6).requires_grad_()
    labels = torch.tensor([2, -100, 0, 4])
    assert torch.autograd.gradcheck(lambda x: dkd(x, t, labels, alpha=1.0, beta=2.0, temperature=2.0,
                                                  reduction="none"), (s,))
    dkd(s, t, labels, reduction="sum").backward()
    assert t.grad is None


def test_dkd_warmup_ramps_then_holds():
    assert [dkd_warmup(e, 20) for e in (0, 5, 20, 30)] == [0.0, 0.25, 1.0, 1.0]
    assert dkd_warmup(3, 0) == 1.0


@pytest.mark.parametrize("beta,gamma,temperature", [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0), (1.0, 0.0, 2.0)])
def test_dist_matches_reference(beta, gamma, temperature):
    s, t = _randn(5, 4, seed=7, scale=2), _randn(5, 4, seed=8, scale=2)
    ref = dist_reference(s, t, beta, gamma, temperature)
    kwargs = dict(beta=beta, gamma=gamma, temperature=temperature)
    torch.testing.assert_close(dist(s, t, **kwargs, reduction="none"), ref)
    torch.testing.assert_close(dist(s, t, **kwargs, reduction="mean"), ref.mean())


def test_dist_gradcheck_and_the_intra_term_is_relational():
    s = _randn(4, 5, seed=9).requires_grad_()
    t = _randn(4, 5, seed=10)
    assert torch.autograd.gradcheck(lambda x: dist(x, t, temperature=2.0, reduction="none"), (s,))
    # inter-class alone is per sample and splits over micro-batches; the intra-class term does not
    inter_whole = dist(s, t, gamma=0.0, reduction="sum")
    inter_halves = dist(s[:2], t[:2], gamma=0.0, reduction="sum") + dist(s[2:], t[2:], gamma=0.0, reduction="sum")
    torch.testing.assert_close(inter_halves, inter_whole)
    whole = dist(s, t, beta=0.0, reduction="sum")
    halves = dist(s[:2], t[:2], beta=0.0, reduction="sum") + dist(s[2:], t[2:], beta=0.0, reduction="sum")
    assert abs(float((whole - halves).detach())) > 1e-3
    with pytest.raises(ValueError, match="at least 2"):
        dist(s[:1], t[:1])


def test_standardize_matches_reference_and_gradcheck():
    z = _randn(3, 6, seed=11, scale=4)
    ref = []
    for row in z.tolist():
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
        ref.append([(v - mean) / (std + 1e-7) for v in row])
    torch.testing.assert_close(standardize_logits(z), torch.tensor(ref, dtype=torch.float64))
    assert torch.autograd.gradcheck(standardize_logits, (z.clone().requires_grad_(),))


def test_kd_on_standardised_logits_ignores_teacher_shift_and_scale():
    s, t = _randn(6, 10, seed=12), _randn(6, 10, seed=13)
    base = soft_target_kl(standardize_logits(s), standardize_logits(t), 4.0, reduction="none")
    for scale, shift in [(0.1, 3.0), (7.0, -20.0)]:
        moved = standardize_logits(scale * t + shift * torch.ones(6, 1, dtype=torch.float64))
        # equal up to the eps added to std (1e-7 against a std of 0.1 to 7)
        torch.testing.assert_close(soft_target_kl(standardize_logits(s), moved, 4.0, reduction="none"), base,
                                   rtol=1e-5, atol=1e-8)
    # without standardisation the same scaling changes the loss: the test above can fail
    assert not torch.allclose(soft_target_kl(s, 7.0 * t, 4.0, reduction="none"),
                              soft_target_kl(s, t, 4.0, reduction="none"))
