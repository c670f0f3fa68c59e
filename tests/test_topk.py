"""Top-k KD with tail mass: float64 reference, gradcheck, equality and bound against dense KD."""

import math

import numpy as np
import pytest
import torch

from kdistill.losses import TopKLogits, kd_objective, soft_target_kl, topk_soft_target_kl


def reference(student: np.ndarray, teacher_logits: np.ndarray, k: int, t: float) -> np.ndarray:
    """Direct float64 loops: teacher top-k at T=1, even tail at T, KL over k+1 bins, times T²."""
    out = []
    for s, z in zip(student, teacher_logits):
        n, m = len(z), len(z) - k
        p = np.exp(z - z.max()); p /= p.sum()
        top = list(np.argsort(-p, kind="stable")[:k])
        tail = [j for j in range(n) if j not in top]
        tau = sum(p[j] for j in tail)
        w_top = [p[i] ** (1 / t) for i in top]
        w_tail = m * (tau / m) ** (1 / t) if m else 0.0
        zq = sum(w_top) + w_tail
        q = [w / zq for w in w_top] + ([w_tail / zq] if m else [])
        e = np.exp((s - s.max()) / t); ps = e / e.sum()
        pb = [ps[i] for i in top] + ([sum(ps[j] for j in tail)] if m else [])
        out.append(t * t * sum(qi * math.log(qi / pi) for qi, pi in zip(q, pb) if qi > 0))
    return np.array(out)


@pytest.mark.parametrize("k", [1, 3, 7, 10])
@pytest.mark.parametrize("t", [0.5, 1.0, 4.0])
def test_matches_float64_reference(k, t):
    g = torch.Generator().manual_seed(k)
    s, z = torch.randn(6, 10, generator=g, dtype=torch.float64) * 3, torch.randn(6, 10, generator=g, dtype=torch.float64) * 3
    got = topk_soft_target_kl(s, TopKLogits.from_logits(z, k), t, reduction="none")
    np.testing.assert_allclose(got.numpy(), reference(s.numpy(), z.numpy(), k, t), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [2, 10])
def test_gradcheck(k):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 10, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = TopKLogits.from_logits(torch.randn(4, 10, generator=g, dtype=torch.float64) * 2, k)
    assert torch.autograd.gradcheck(lambda x: topk_soft_target_kl(x, teacher, 3.0, "sum"), (s,))


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0, 8.0])
def test_equals_dense_kd_when_k_is_all_classes(t):
    g = torch.Generator().manual_seed(1)
    s, z = torch.randn(8, 10, generator=g, dtype=torch.float64), torch.randn(8, 10, generator=g, dtype=torch.float64) * 4
    dense = soft_target_kl(s, z, t, reduction="none")
    torch.testing.assert_close(topk_soft_target_kl(s, TopKLogits.from_logits(z, 10), t, "none"), dense)


def _tail_bound(s, teacher: TopKLogits, z, t):
    """T² · tau_T · (log m + R/T), with tau_T the true tempered tail mass of the teacher."""
    m = teacher.num_classes - teacher.k
    in_top = torch.zeros_like(z, dtype=torch.bool).scatter(-1, teacher.indices, True)
    tau_t = torch.softmax(z / t, -1).masked_fill(in_top, 0).sum(-1)
    tail_s = s.masked_fill(in_top, float("nan"))
    spread = tail_s.nan_to_num(-math.inf).amax(-1) - tail_s.nan_to_num(math.inf).amin(-1)
    return t * t * tau_t * (math.log(m) + spread / t)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_within_tail_bound_at_t1(k):
    g = torch.Generator().manual_seed(2)
    s, z = torch.randn(64, 10, generator=g, dtype=torch.float64) * 2, torch.randn(64, 10, generator=g, dtype=torch.float64) * 3
    teacher = TopKLogits.from_logits(z, k)
    gap = soft_target_kl(s, z, 1.0, "none") - topk_soft_target_kl(s, teacher, 1.0, "none")
    assert (gap >= -1e-12).all()
    assert (gap <= _tail_bound(s, teacher, z, 1.0) + 1e-12).all()


@pytest.mark.parametrize("t", [0.5, 4.0])
def test_within_tail_bound_at_any_t_for_an_even_tail(t):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(32, 10, generator=g, dtype=torch.float64) * 2
    z = torch.randn(32, 10, generator=g, dtype=torch.float64).abs() * 3
    z[:, 4:] = -1.0  # an even tail below every top-k class: the tempered tail is then exact
    teacher = TopKLogits.from_logits(z, 4)
    gap = soft_target_kl(s, z, t, "none") - topk_soft_target_kl(s, teacher, t, "none")
    assert (gap >= -1e-12).all()
    assert (gap <= _tail_bound(s, teacher, z, t) + 1e-12).all()


def test_tail_mass_is_kept_not_renormalised():
    z = torch.tensor([[3.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    teacher = TopKLogits.from_logits(z, 2)
    p = torch.softmax(z, -1)
    torch.testing.assert_close(teacher.log_tail.exp(), p[:, 2:].sum(-1))
    torch.testing.assert_close(teacher.values.exp(), p[:, :2])


def test_kd_objective_dispatches_on_topk():
    g = torch.Generator().manual_seed(4)
    s, z = torch.randn(5, 10, generator=g), torch.randn(5, 10, generator=g)
    labels = torch.randint(0, 10, (5,), generator=g)
    kw = dict(temperature=2.0, soft_weight=0.7, hard_weight=0.3, reduction="sum")
    dense, _ = kd_objective(s, z, labels, **kw)
    topk, terms = kd_objective(s, TopKLogits.from_logits(z, 10), labels, **kw)
    torch.testing.assert_close(topk, dense)
    assert set(terms) == {"soft", "hard"}


def test_shape_mismatch_is_refused():
    teacher = TopKLogits.from_logits(torch.randn(3, 10), 2)
    with pytest.raises(ValueError, match="same classes"):
        topk_soft_target_kl(torch.randn(3, 12), teacher, 1.0)


def test_a_tail_without_mass_gives_finite_loss_and_gradients():
    s = torch.randn(3, 10, dtype=torch.float64, requires_grad=True)
    teacher = TopKLogits.from_logits(torch.randn(3, 10, dtype=torch.float64), 4)
    teacher.log_tail = torch.full((3,), -math.inf, dtype=torch.float64)
    loss = topk_soft_target_kl(s, teacher, 2.0, "sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_dense_kd_reductions_agree(reduction):
    g = torch.Generator().manual_seed(5)
    s, z = torch.randn(6, 10, generator=g, dtype=torch.float64), torch.randn(6, 10, generator=g, dtype=torch.float64)
    per_sample = soft_target_kl(s, z, 3.0, "none")
    want = {"none": per_sample, "sum": per_sample.sum(), "mean": per_sample.mean()}[reduction]
    torch.testing.assert_close(soft_target_kl(s, z, 3.0, reduction), want)
    torch.testing.assert_close(topk_soft_target_kl(s, TopKLogits.from_logits(z, 4), 3.0, reduction),
                               {"none": lambda x: x, "sum": torch.sum, "mean": torch.mean}[reduction](
                                   topk_soft_target_kl(s, TopKLogits.from_logits(z, 4), 3.0, "none")))


@pytest.mark.parametrize("t", [0.5, 4.0])
def test_dense_kd_matches_float64_reference_and_gradcheck(t):
    g = torch.Generator().manual_seed(6)
    s = torch.randn(5, 10, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(5, 10, generator=g, dtype=torch.float64) * 3
    got = soft_target_kl(s, z, t, "none").detach().numpy()
    np.testing.assert_allclose(got, reference(s.detach().numpy(), z.numpy(), 10, t), rtol=1e-10, atol=1e-12)
    for reduction in ("sum", "mean"):
        assert torch.autograd.gradcheck(lambda x: soft_target_kl(x, z, t, reduction), (s,))
