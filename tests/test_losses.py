import math

import pytest
import torch

from kdistill.losses import hard_cross_entropy, kd_objective, soft_target_kl
from kdistill.data.text import UNLABELED


def reference_soft_kl(s, t, T):
    """Direct formula, one sample at a time: T^2 * sum_i p_i (log p_i - log q_i)."""
    out = []
    for si, ti in zip(s.tolist(), t.tolist()):
        zs = [math.exp(v / T) for v in si]
        zt = [math.exp(v / T) for v in ti]
        q = [v / sum(zs) for v in zs]
        p = [v / sum(zt) for v in zt]
        out.append(T * T * sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 20.0])
def test_soft_kl_matches_direct_formula(T):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(7, 10, generator=g, dtype=torch.float64) * 3
    t = torch.randn(7, 10, generator=g, dtype=torch.float64) * 3
    got = soft_target_kl(s, t, T, reduction="none")
    torch.testing.assert_close(got, reference_soft_kl(s, t, T), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(soft_target_kl(s, t, T, reduction="sum"), got.sum())
    torch.testing.assert_close(soft_target_kl(s, t, T, reduction="mean"), got.mean())


def test_soft_kl_is_zero_when_student_equals_teacher_and_positive_otherwise():
    z = torch.randn(5, 10, dtype=torch.float64)
    assert soft_target_kl(z, z, 3.0).abs().item() < 1e-12
    assert soft_target_kl(z, z.flip(-1), 3.0).item() > 0


def test_soft_kl_gradient_matches_closed_form():
    """d/ds of T^2 KL = T * (softmax(s/T) - softmax(t/T)) per sample."""
    s = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 6, dtype=torch.float64)
    T = 5.0
    soft_target_kl(s, t, T, reduction="sum").backward()
    expected = T * ((s.detach() / T).softmax(-1) - (t / T).softmax(-1))
    torch.testing.assert_close(s.grad, expected)


def test_gradcheck_soft_kl_and_objective():
    s = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 5, dtype=torch.float64)
    y = torch.tensor([0, 3, 4])
    assert torch.autograd.gradcheck(lambda x: soft_target_kl(x, t, 4.0, "none"), (s,))
    assert torch.autograd.gradcheck(
        lambda x: kd_objective(x, t, y, temperature=3.0, soft_weight=0.7, hard_weight=0.3, reduction="sum")[0], (s,))


def test_hard_ce_matches_direct_formula():
    s = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    ref = torch.stack([-(s[i, y[i]] - s[i].exp().sum().log()) for i in range(6)])
    torch.testing.assert_close(hard_cross_entropy(s, y, "none"), ref)


def test_objective_is_weighted_sum_and_returns_terms():
    s, t = torch.randn(8, 10, dtype=torch.float64), torch.randn(8, 10, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    total, terms = kd_objective(s, t, y, temperature=2.0, soft_weight=0.7, hard_weight=0.3)
    torch.testing.assert_close(total, 0.7 * soft_target_kl(s, t, 2.0) + 0.3 * hard_cross_entropy(s, y))
    assert set(terms) == {"soft", "hard"}
    total, terms = kd_objective(s, None, y, temperature=2.0, soft_weight=0.0, hard_weight=1.0)
    assert set(terms) == {"hard"}


def test_sum_reduction_makes_microbatching_exact():
    """Summing per-sample losses over micro-batches and dividing by the total count gives the
    same value and gradient as the mean over one large batch, even with unequal micro-batches."""
    s = torch.randn(10, 5, dtype=torch.float64, requires_grad=True)
    t, y = torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 5, (10,))
    kw = dict(temperature=4.0, soft_weight=0.6, hard_weight=0.4)
    big, _ = kd_objective(s, t, y, reduction="mean", **kw)
    (g_big,) = torch.autograd.grad(big, s)
    g_acc = torch.zeros_like(s)
    for part in (slice(0, 3), slice(3, 10)):
        loss, _ = kd_objective(s[part], t[part], y[part], reduction="sum", **kw)
        g_acc += torch.autograd.grad(loss / 10, s)[0]
    torch.testing.assert_close(g_acc, g_big)


def test_shape_mismatch_and_bad_temperature_are_clear_errors():
    with pytest.raises(ValueError, match="same classes"):
        soft_target_kl(torch.randn(2, 10), torch.randn(2, 5))
    with pytest.raises(ValueError, match="temperature"):
        soft_target_kl(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="no teacher logits"):
        kd_objective(torch.randn(2, 3), None, torch.tensor([0, 1]), temperature=1, soft_weight=1, hard_weight=0)


def test_unlabeled_samples_add_soft_targets_but_no_hard_term():
    torch.manual_seed(0)
    s, t = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    labels = torch.tensor([1, UNLABELED, 3, UNLABELED, 0, 2])
    total, terms = kd_objective(s, t, labels, temperature=2.0, soft_weight=0.7, hard_weight=0.3, reduction="sum")
    known = labels != UNLABELED
    expected_hard = -torch.log_softmax(s[known], -1).gather(1, labels[known, None]).sum()
    torch.testing.assert_close(terms["hard"], expected_hard)
    torch.testing.assert_close(terms["soft"], soft_target_kl(s, t, 2.0, "sum"))
    torch.testing.assert_close(total, 0.7 * terms["soft"] + 0.3 * expected_hard)


@pytest.mark.parametrize("classes", [6, 20])  # below 16 classes the node works on a (classes, rows) copy
@pytest.mark.parametrize("T, w_soft, w_hard", [(1.0, 0.7, 0.3), (4.0, 0.7, 0.3), (20.0, 1.0, 0.0), (2.0, 0.2, 1.0)])
def test_summed_objective_is_one_fused_node_with_the_composed_value_and_gradient(T, w_soft, w_hard, classes):
    """reduction="sum" with dense teacher logits (the classification task's call) goes through
    the fused node: the same value and gradient as the composed terms, gradcheck in float64,
    unlabelled samples adding no hard gradient, and the teacher's entropy at T as a term."""
    g = torch.Generator().manual_seed(3)
    s = (torch.randn(7, classes, generator=g, dtype=torch.float64) * 3).requires_grad_()
    t = torch.randn(7, classes, generator=g, dtype=torch.float64) * 5
    y = torch.tensor([0, 5, UNLABELED, 2, 1, UNLABELED, classes - 1])
    loss, terms = kd_objective(s, t, y, temperature=T, soft_weight=w_soft, hard_weight=w_hard, reduction="sum")
    assert loss.grad_fn.name() == "_SummedKDBackward"
    want = w_soft * soft_target_kl(s, t, T, "sum") + (w_hard * hard_cross_entropy(s, y, "sum") if w_hard else 0)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(loss, s)[0], torch.autograd.grad(want, s)[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(terms["soft"], soft_target_kl(s, t, T, "sum"))
    assert ("hard" in terms) == bool(w_hard)
    p = torch.softmax(t / T, -1)
    torch.testing.assert_close(terms["teacher_entropy"], -(p * p.log()).sum())
    assert not any(v.requires_grad for v in terms.values())
    fused = lambda x: kd_objective(x, t, y, temperature=T, soft_weight=w_soft, hard_weight=w_hard, reduction="sum")[0]
    assert torch.autograd.gradcheck(fused, (s,))


def test_summed_objective_refuses_what_the_composed_one_refuses():
    with pytest.raises(ValueError, match="same classes"):
        kd_objective(torch.randn(2, 4), torch.randn(2, 3), None, temperature=2, soft_weight=1, hard_weight=0,
                     reduction="sum")
    with pytest.raises(ValueError, match="temperature"):
        kd_objective(torch.randn(2, 3), torch.randn(2, 3), None, temperature=0, soft_weight=1, hard_weight=0,
                     reduction="sum")
    with pytest.raises(ValueError, match="no labels"):
        kd_objective(torch.randn(2, 3), torch.randn(2, 3), None, temperature=2, soft_weight=1, hard_weight=1,
                     reduction="sum")
