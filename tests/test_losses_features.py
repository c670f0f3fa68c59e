"""Feature losses (hint, attention transfer, RKD, PKT): float64 loop references, gradcheck,
reductions, and how the relational ones behave when a batch is split."""

import math

import pytest
import torch

from kdistill.losses.features import attention_transfer, hint_mse, pkt, rkd_angle, rkd_distance


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _huber(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def _vec(t, i):
    return [float(v) for v in t[i].flatten()]


def _dist(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def hint_reference(s, t):
    out = []
    for i in range(s.shape[0]):
        a, b = _vec(s, i), _vec(t, i)
        out.append(sum((x - y) ** 2 for x, y in zip(a, b)) / len(a))
    return torch.tensor(out, dtype=torch.float64)


def at_reference(s, t, p=2.0):
    def amap(f, i):
        x = f[i] if f.dim() == 4 else f[i][None, :, None]  # (C, H, W); a vector is 1 channel
        c, h, w = x.shape
        q = [sum(abs(float(x[k, r, col])) ** p for k in range(c)) / c for r in range(h) for col in range(w)]
        norm = math.sqrt(sum(v * v for v in q))
        return [v / norm for v in q]

    return torch.tensor([sum((a - b) ** 2 for a, b in zip(amap(s, i), amap(t, i))) for i in range(s.shape[0])],
                        dtype=torch.float64)


def rkd_distance_reference(s, t):
    n = s.shape[0]
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]

    def psi(f):
        d = {(i, j): _dist(_vec(f, i), _vec(f, j)) for i, j in pairs}
        mu = sum(d.values()) / len(pairs)
        return {k: v / mu for k, v in d.items()}

    ps, pt = psi(s), psi(t)
    return torch.tensor([sum(_huber(ps[i, j] - pt[i, j]) for j in range(n) if j != i) / (n - 1) for i in range(n)],
                        dtype=torch.float64)


def rkd_angle_reference(s, t):
    n = s.shape[0]

    def cos(f, i, j, k):
        a = [x - y for x, y in zip(_vec(f, i), _vec(f, j))]
        b = [x - y for x, y in zip(_vec(f, k), _vec(f, j))]
        return sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))

    out = []
    for j in range(n):
        triplets = [(i, k) for i in range(n) for k in range(n) if len({i, j, k}) == 3]
        out.append(sum(_huber(cos(s, i, j, k) - cos(t, i, j, k)) for i, k in triplets) / len(triplets))
    return torch.tensor(out, dtype=torch.float64)


def pkt_reference(s, t):
    n = s.shape[0]

    def cond(f):
        k = [[0.0 if i == j else (sum(x * y for x, y in zip(_vec(f, i), _vec(f, j)))
                                  / (math.hypot(*_vec(f, i)) * math.hypot(*_vec(f, j))) + 1) / 2
              for j in range(n)] for i in range(n)]
        return [[v / sum(row) for v in row] for row in k]

    ps, pt = cond(s), cond(t)
    return torch.tensor([sum(pt[i][j] * math.log(pt[i][j] / ps[i][j]) for j in range(n) if j != i)
                         for i in range(n)], dtype=torch.float64)


CASES = [
    ("hint", hint_mse, hint_reference, (5, 3, 4, 4), (5, 3, 4, 4)),
    ("hint-vector", hint_mse, hint_reference, (5, 6), (5, 6)),
    ("at", attention_transfer, at_reference, (4, 3, 3, 5), (4, 7, 3, 5)),  # channels may differ
    ("at-vector", attention_transfer, at_reference, (4, 6), (4, 6)),
    ("rkd-distance", rkd_distance, rkd_distance_reference, (5, 3), (5, 7)),  # widths may differ
    ("rkd-angle", rkd_angle, rkd_angle_reference, (5, 2, 2), (5, 6)),
    ("pkt", pkt, pkt_reference, (5, 4), (5, 9)),
]


@pytest.mark.parametrize("name,loss,reference,s_shape,t_shape", CASES, ids=[c[0] for c in CASES])
def test_matches_float64_reference_and_reductions(name, loss, reference, s_shape, t_shape):
    s, t = _randn(*s_shape, seed=1), _randn(*t_shape, seed=2)
    ref = reference(s, t)
    torch.testing.assert_close(loss(s, t, reduction="none"), ref)
    torch.testing.assert_close(loss(s, t, reduction="sum"), ref.sum())
    torch.testing.assert_close(loss(s, t, reduction="mean"), ref.mean())


@pytest.mark.parametrize("name,loss,reference,s_shape,t_shape", CASES, ids=[c[0] for c in CASES])
def test_gradcheck_and_teacher_gets_no_gradient(name, loss, reference, s_shape, t_shape):
    s = _randn(*s_shape, seed=3).requires_grad_()
    t = _randn(*t_shape, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: loss(x, t, reduction="none"), (s,))
    loss(s, t, reduction="sum").backward()
    assert t.grad is None and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("loss", [hint_mse, attention_transfer, rkd_distance, rkd_angle, pkt])
def test_zero_when_student_equals_teacher(loss):
    t = _randn(4, 3, 2, 2, seed=5)
    assert float(loss(t.clone(), t, reduction="sum")) == pytest.approx(0.0, abs=1e-9)


def test_relational_losses_are_scale_invariant_in_the_teacher():
    """RKD normalises by the mean distance and PKT uses cosines: scaling a feature changes nothing."""
    s, t = _randn(5, 4, seed=6), _randn(5, 4, seed=7)
    for loss in (rkd_distance, rkd_angle, pkt):
        torch.testing.assert_close(loss(s, 10 * t, reduction="none"), loss(s, t, reduction="none"))


def test_per_sample_losses_decompose_over_micro_batches_and_relational_ones_do_not():
    """Hints and AT summed over two halves equal the whole batch; RKD / PKT see only the pairs
    inside each half, so splitting a batch changes their value (documented in the module)."""
    s, t = _randn(6, 3, 2, 2, seed=8), _randn(6, 3, 2, 2, seed=9)
    for loss in (hint_mse, attention_transfer):
        halves = loss(s[:3], t[:3], reduction="sum") + loss(s[3:], t[3:], reduction="sum")
        torch.testing.assert_close(halves, loss(s, t, reduction="sum"))
    for loss in (rkd_distance, rkd_angle, pkt):
        halves = loss(s[:3], t[:3], reduction="sum") + loss(s[3:], t[3:], reduction="sum")
        assert abs(float(halves - loss(s, t, reduction="sum"))) > 1e-3


def test_bad_inputs_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="connector"):
        hint_mse(_randn(2, 3), _randn(2, 4))
    with pytest.raises(ValueError, match="same resolution"):
        attention_transfer(_randn(2, 3, 4, 4), _randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="at least 3"):
        rkd_angle(_randn(2, 3), _randn(2, 3))
    with pytest.raises(ValueError, match="same batch"):
        pkt(_randn(3, 3), _randn(4, 3))


def test_rkd_angle_on_a_subset_of_vertices_is_the_reference_share_scaled_and_unbiased():
    """vertices = m: the first m samples' reference shares times N / m, zero for the others (so
    sum and mean keep the full loss's scale); averaged over every choice of which samples come
    first (what shuffled batches do) it is the full loss; gradcheck holds."""
    s, t = _randn(6, 3, seed=21), _randn(6, 5, seed=22)
    ref = rkd_angle_reference(s, t)
    got = rkd_angle(s, t, reduction="none", vertices=2)
    torch.testing.assert_close(got, torch.cat([ref[:2] * 3, torch.zeros(4, dtype=torch.float64)]))
    torch.testing.assert_close(rkd_angle(s, t, "mean", vertices=2), got.mean())
    rotations = [torch.roll(torch.arange(6), -r) for r in range(0, 6, 2)]  # each sample a vertex once
    mean = sum(rkd_angle(s[o], t[o], "sum", vertices=2) for o in rotations) / len(rotations)
    torch.testing.assert_close(mean, ref.sum())
    torch.testing.assert_close(rkd_angle(s, t, "none", vertices=6), ref)  # m >= N: the full loss
    x = s.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: rkd_angle(v, t, "none", vertices=3), (x,))
    with pytest.raises(ValueError, match="vertices"):
        rkd_angle(s, t, vertices=0)
