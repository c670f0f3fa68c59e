"""The closed-form chunk kernels on their own: value and logit gradient against autograd on the
direct formulas (float64), for every dense kind, temperature and weighting the fused loss uses."""

import pytest
import torch

from kdistill.losses.divergences import divergence_from_log_probs
from kdistill.losses.token_grads import Scratch, TokenLossSpec, closed_form_chunk


@pytest.mark.parametrize("kind, beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3), ("jsd", 1.0)])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("soft, hard", [(1.0, 0.0), (0.7, 0.3), (0.0, 1.0)])
def test_closed_form_chunk_matches_autograd_on_the_reference(kind, beta, temperature, soft, hard):
    g = torch.Generator().manual_seed(7)
    n, v = 5, 13
    logits = (torch.randn(n, v, generator=g, dtype=torch.float64) * 2).requires_grad_()
    teacher = torch.randn(n, v, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, v, (n,), generator=g)
    spec = TokenLossSpec(kind=kind, beta=beta, temperature=temperature, cross_entropy=hard != 0)
    t = temperature
    want_div = divergence_from_log_probs(kind, torch.log_softmax(logits / t, -1), torch.log_softmax(teacher / t, -1),
                                         beta=beta) * t**2
    want_ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    total = soft * want_div.sum() + (hard * want_ce.sum() if hard else 0.0)
    want_grad, = torch.autograd.grad(total, logits)

    scratch = Scratch(n, v, n, torch.float64, logits.device)
    buffer = scratch.take().copy_(logits.detach())
    div, ce, grad, factor = closed_form_chunk(buffer, teacher, labels, spec, soft, hard, scratch)
    torch.testing.assert_close(div, want_div.detach(), rtol=1e-12, atol=1e-12)
    if hard:
        torch.testing.assert_close(ce, want_ce.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad * factor, want_grad, rtol=1e-10, atol=1e-12)
