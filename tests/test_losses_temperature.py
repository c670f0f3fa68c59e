"""Per-sample and learned temperatures: references, gradcheck, reversal sign, bounds."""

import math

import pytest
import torch

from kdistill.losses import soft_target_kl
from kdistill.losses.temperature import (LearnedTemperature, confidence_temperatures, ctkd_strength,
                                         gradient_reversal, tempered_soft_target_kl)


def _randn(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _softmax(row, temperature):
    e = [math.exp(float(v) / temperature) for v in row]
    return [v / sum(e) for v in e]


def test_per_sample_temperature_kl_matches_reference_and_constant_kd():
    s, t = _randn(4, 5, seed=1, scale=2), _randn(4, 5, seed=2, scale=2)
    temps = torch.tensor([1.0, 2.5, 4.0, 8.0], dtype=torch.float64)
    ref = []
    for i in range(4):
        pt, ps = _softmax(t[i], float(temps[i])), _softmax(s[i], float(temps[i]))
        ref.append(float(temps[i]) ** 2 * sum(a * math.log(a / b) for a, b in zip(pt, ps)))
    ref = torch.tensor(ref, dtype=torch.float64)
    torch.testing.assert_close(tempered_soft_target_kl(s, t, temps, reduction="none"), ref)
    torch.testing.assert_close(tempered_soft_target_kl(s, t, temps, reduction="sum"), ref.sum())
    torch.testing.assert_close(tempered_soft_target_kl(s, t, 3.0, reduction="none"),
                               soft_target_kl(s, t, 3.0, reduction="none"))


def test_per_sample_temperature_kl_gradcheck_in_logits_and_temperature():
    s = _randn(3, 4, seed=3).requires_grad_()
    t = _randn(3, 4, seed=4)
    temps = torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, T: tempered_soft_target_kl(x, t, T, reduction="none"), (s, temps))


def test_bad_temperatures_are_refused():
    s, t = _randn(3, 4), _randn(3, 4, seed=1)
    with pytest.raises(ValueError, match="one per sample"):
        tempered_soft_target_kl(s, t, torch.ones(2))
    with pytest.raises(ValueError, match="> 0"):
        tempered_soft_target_kl(s, t, torch.tensor([1.0, 0.0, 2.0]))


def test_confidence_temperatures_follow_the_documented_rule():
    t = torch.tensor([[20.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    temps = confidence_temperatures(t, t_min=1.0, t_max=9.0)
    p = [_softmax(row, 1.0) for row in t]
    entropy = [-sum(v * math.log(v) for v in row) / math.log(4) for row in p]
    torch.testing.assert_close(temps, torch.tensor([9.0 - 8.0 * h for h in entropy], dtype=torch.float64))
    assert temps[0] == pytest.approx(9.0, abs=1e-5)  # confident: hottest
    assert temps[1] == pytest.approx(1.0)  # uniform: coolest
    assert not temps.requires_grad
    with pytest.raises(ValueError, match="t_min"):
        confidence_temperatures(t, t_min=5.0, t_max=2.0)


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = gradient_reversal(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.tensor([3.0, 4.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-1.5, -2.0]))


def test_ctkd_strength_is_a_cosine_ramp():
    values = [ctkd_strength(e, loops=10) for e in (0, 5, 10, 20)]
    assert values == pytest.approx([0.0, 0.5, 1.0, 1.0])
    assert ctkd_strength(2.5, loops=10) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)


def test_learned_temperature_ascends_the_kd_loss_and_stays_in_bounds():
    torch.manual_seed(0)
    s, t = torch.randn(8, 5), 3 * torch.randn(8, 5)
    module = LearnedTemperature(t_min=1.0, t_max=21.0, initial=4.0)
    assert float(module(1.0).detach()) == pytest.approx(4.0, rel=1e-5)
    loss = tempered_soft_target_kl(s, t, module(1.0), reduction="mean")
    loss.backward()
    raw_grad = float(module.raw.grad)
    # the true gradient of the loss in the raw parameter has the opposite sign
    raw = module.raw.detach().clone().requires_grad_()
    tempered_soft_target_kl(s, t, 1.0 + 20.0 * torch.sigmoid(raw), reduction="mean").backward()
    assert raw_grad == pytest.approx(-float(raw.grad)) and raw_grad != 0.0
    # plain SGD on the reversed gradient raises the loss, and the sigmoid keeps T inside (1, 21)
    optim = torch.optim.SGD(module.parameters(), lr=50.0)
    before = float(loss.detach())
    for _ in range(50):
        optim.zero_grad()
        tempered_soft_target_kl(s, t, module(1.0), reduction="mean").backward()
        optim.step()
        assert 1.0 <= float(module(1.0).detach()) <= 21.0
    assert float(tempered_soft_target_kl(s, t, module(1.0), reduction="mean").detach()) > before
    state = module.state_dict()
    assert list(state) == ["raw"]
    with pytest.raises(ValueError, match="strictly inside"):
        LearnedTemperature(1.0, 21.0, initial=30.0)
