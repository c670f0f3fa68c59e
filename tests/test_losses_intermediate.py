"""Hidden-state MSE and attention KL: float64 references, masking, gradcheck."""

import pytest
import torch

from kdistill.losses import attention_kl, hidden_state_mse


def _mask(lengths, width):
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def hidden_reference(s, t, mask, w=None, b=None):
    out = []
    for i in range(s.shape[0]):
        n = int(mask[i].sum())
        total = 0.0
        for j in range(n):
            x = s[i, j].double()
            if w is not None:
                x = w.double() @ x + b.double()
            total += float(((x - t[i, j].double()) ** 2).mean())
        out.append(total / n)
    return torch.tensor(out, dtype=torch.float64)


def attention_reference(s, t, mask):
    out = []
    for i in range(s.shape[0]):
        n = int(mask[i].sum())
        total = 0.0
        for h in range(s.shape[1]):
            for q in range(n):
                for k in range(n):
                    p = float(t[i, h, q, k])
                    if p > 0:
                        total += p * (torch.log(torch.tensor(p, dtype=torch.float64)) - torch.log(s[i, h, q, k].double()))
        out.append(float(total) / (s.shape[1] * n))
    return torch.tensor(out, dtype=torch.float64)


def attention_maps(b, h, width, lengths, seed):
    """Softmax attention over real keys only, zero on padded keys (as HF encoders produce)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, h, width, width, generator=g, dtype=torch.float64)
    keys = _mask(lengths, width)[:, None, None, :].bool()
    return scores.masked_fill(~keys, float("-inf")).softmax(-1)


def test_hidden_mse_matches_reference_with_and_without_projection():
    g = torch.Generator().manual_seed(0)
    mask = _mask([5, 3, 1], 5)
    t = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    s_same = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(hidden_state_mse(s_same, t, mask, reduction="none"), hidden_reference(s_same, t, mask))
    s = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    w, b = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    ref = hidden_reference(s, t, mask, w, b)
    torch.testing.assert_close(hidden_state_mse(s, t, mask, w, b, reduction="none"), ref)
    torch.testing.assert_close(hidden_state_mse(s, t, mask, w, b, reduction="sum"), ref.sum())
    torch.testing.assert_close(hidden_state_mse(s, t, mask, w, b, reduction="mean"), ref.mean())


def test_hidden_mse_ignores_padding_and_checks_widths():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(2, 4, 3, generator=g)
    s = t.clone()
    s[0, 3] += 100.0  # a padded position of sample 0
    assert hidden_state_mse(s, t, _mask([3, 4], 4), reduction="sum").item() == 0.0
    with pytest.raises(ValueError, match="projection"):
        hidden_state_mse(torch.zeros(2, 4, 2), t, _mask([3, 4], 4))


def test_hidden_mse_gradcheck_reaches_the_projection():
    g = torch.Generator().manual_seed(2)
    mask = _mask([4, 2], 4)
    s = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s, w, b: hidden_state_mse(s, t, mask, w, b, reduction="none"), (s, w, b))


def test_attention_kl_matches_reference_and_is_zero_for_equal_maps():
    lengths = [5, 3]
    mask = _mask(lengths, 5)
    t = attention_maps(2, 3, 5, lengths, seed=3)
    s = attention_maps(2, 3, 5, lengths, seed=4)
    torch.testing.assert_close(attention_kl(s, t, mask, reduction="none"), attention_reference(s, t, mask))
    torch.testing.assert_close(attention_kl(s, t, mask, reduction="sum"), attention_reference(s, t, mask).sum())
    assert attention_kl(t, t, mask, reduction="sum").abs().item() < 1e-12
    with pytest.raises(ValueError, match="heads"):
        attention_kl(s[:, :2], t, mask)


def test_attention_kl_gradcheck_through_student_scores():
    lengths = [4, 2]
    mask = _mask(lengths, 4)
    t = attention_maps(2, 2, 4, lengths, seed=5)
    keys = mask[:, None, None, :].bool()
    scores = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    student = lambda x: x.masked_fill(~keys, float("-inf")).softmax(-1)
    assert torch.autograd.gradcheck(lambda x: attention_kl(student(x), t, mask, reduction="none"), (scores,))
