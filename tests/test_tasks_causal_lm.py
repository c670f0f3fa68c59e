"""The causal-LM task on tiny random Llama models: masks, label shift, the fused chunked loss equal
to a direct computation, padding invariance, and accumulation equivalence through the Engine."""

import pytest
import torch
import torch.nn.functional as F

from kdistill.config import RunConfig
from kdistill.data.lm_text import IGNORE, LMBatches, blocks_from_ids
from kdistill.engine import Engine
from kdistill.losses.divergences import token_divergence
from kdistill.tasks.causal_lm import CausalLMTask, shifted_targets, target_mask
from kdistill.teachers.causal_lm import CausalLMTeacher, TopKCacheTeacher

from lm_helpers import lm_blocks, tiny_llama

HP = {"temperature": 2.0, "soft_weight": 0.7, "hard_weight": 0.3}  # the logit loss's keyword arguments


def _batch(blocks):
    return next(iter(LMBatches(blocks, len(blocks))))


def test_masks_shift_and_count():
    blocks = lm_blocks(n=3, seq_len=12)
    b = _batch(blocks)
    mask = target_mask(b)
    # a position counts iff the next token is a completion token (not prompt, not padding)
    for row in range(3):
        completion = (b["labels"][row] != IGNORE).nonzero().flatten()
        assert mask[row].nonzero().flatten().tolist() == (completion - 1).tolist()
        assert (b["labels"][row][completion] == b["input_ids"][row][completion]).all()
    assert CausalLMTask(50).count(b) == int(mask.sum()) == len(shifted_targets(b))
    plain = blocks_from_ids(torch.arange(3, 27), 8)
    assert CausalLMTask(50).count(_batch(plain)) == 3 * 7


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_objective_equals_direct_computation(divergence):
    student, teacher = tiny_llama(seed=0), tiny_llama(seed=1)
    b = _batch(lm_blocks(n=4))
    task = CausalLMTask(50, divergence=divergence, jsd_beta=0.3, chunk_tokens=5)
    t_logits = CausalLMTeacher(teacher, 50).logits(b)
    loss, terms = task.logit_loss(task.forward(student, b), t_logits, b, **HP)
    grads = torch.autograd.grad(loss, list(student.parameters()))
    # direct: all logits, shift, mask after
    s_all = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    t_all = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].detach()
    m = target_mask(b)
    div = token_divergence(s_all, t_all, divergence, temperature=2.0, beta=0.3)[m].sum()
    ce = F.cross_entropy(s_all[m], b["labels"][:, 1:][m], reduction="sum")
    want = 0.7 * div + 0.3 * ce
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["soft"], div, rtol=1e-5, atol=1e-5)
    for g, w in zip(grads, torch.autograd.grad(want, list(student.parameters()))):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_padding_does_not_change_the_loss():
    student, teacher = tiny_llama(seed=0), tiny_llama(seed=1)
    short, long = lm_blocks(n=4, seq_len=12), lm_blocks(n=4, seq_len=20)
    task = CausalLMTask(50)
    t = CausalLMTeacher(teacher, 50)
    values = []
    for blocks in (short, long):
        b = _batch(blocks)
        with torch.no_grad():
            values.append((task.logit_loss(task.forward(student, b), t.logits(b), b, **HP)[0], task.count(b)))
    assert values[0][1] == values[1][1]
    torch.testing.assert_close(values[0][0], values[1][0], rtol=1e-5, atol=1e-5)


def _cfg(batch_size, accum):
    return RunConfig.parse({
        "task": "causal_lm", "seed": 0,
        "data": {"dataset": "python_docs", "batch_size": batch_size},
        "student": {"arch": "hf_causal_lm", "config": {"model_type": "llama"}},
        "loss": {"temperature": 2.0, "soft_weight": 0.7, "hard_weight": 0.3},
        "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.0},
        "train": {"epochs": 1, "grad_accum_steps": accum, "progress": False, "deterministic": False},
    })


def test_accumulation_equivalence_through_engine(tmp_path):
    """One step over 4 examples of different lengths: batch 4 == 4 micro-batches of 1 == 2 x 2."""
    blocks = lm_blocks(n=4, seq_len=14)
    teacher = CausalLMTeacher(tiny_llama(seed=1), 50)
    results = []
    for bs, accum in ((4, 1), (1, 4), (2, 2)):
        student = tiny_llama(seed=0).train()
        engine = Engine(_cfg(bs, accum), student, CausalLMTask(50, chunk_tokens=3),
                        LMBatches(blocks, bs), teacher=teacher, out_dir=tmp_path / f"{bs}x{accum}")
        engine.fit()
        assert engine.step == 1
        results.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[2], results[0], rtol=1e-5, atol=1e-6)


def test_topk_cache_teacher_rows_follow_batch_index():
    blocks = lm_blocks(n=5)
    live = CausalLMTeacher(tiny_llama(seed=1), 50)
    cache = TopKCacheTeacher(live, blocks, k=50, batch_size=2)
    b = next(iter(LMBatches(blocks, 3, shuffle=True, seed=4)))
    got = cache.logits(b)
    dense = torch.log_softmax(live.logits(b), -1)
    torch.testing.assert_close(got.values, dense.gather(-1, got.indices), rtol=1e-5, atol=1e-6)
    assert got.shape == (len(got.values), 50)  # the classification TopKLogits type, full vocabulary
    small = TopKCacheTeacher(live, blocks, k=5, batch_size=2).logits(b)  # the tail keeps the rest
    torch.testing.assert_close(small.log_tail.exp(), 1 - small.values.exp().sum(-1), rtol=1e-4, atol=1e-6)
    task = CausalLMTask(50)
    student = tiny_llama(seed=0)
    hp = {**HP, "temperature": 1.0}
    with torch.no_grad():
        via_cache = task.logit_loss(task.forward(student, b), got, b, **hp)[0]
        via_live = task.logit_loss(task.forward(student, b), live.logits(b), b, **hp)[0]
    torch.testing.assert_close(via_cache, via_live, rtol=1e-4, atol=1e-4)  # k = V: exact
    with pytest.raises(Exception, match="temperature"):
        task.logit_loss(task.forward(student, b), got, b, **HP)


def test_evaluate_reports_perplexity_agreement_and_kl():
    student, teacher = tiny_llama(seed=0), tiny_llama(seed=1)
    live = CausalLMTeacher(teacher, 50)
    task = CausalLMTask(50, reference=live.logits)
    m = task.evaluate(student, LMBatches(lm_blocks(n=4), 2))
    assert m["ppl"] > 1 and 0 <= m["agreement"] <= 1 and m["kl_to_teacher"] > 0
    self_m = CausalLMTask(50, reference=live.logits).evaluate(teacher, LMBatches(lm_blocks(n=4), 2))
    assert self_m["agreement"] == 1.0 and abs(self_m["kl_to_teacher"]) < 1e-6


def test_dense_cache_teacher_matches_live_to_fp16():
    blocks = lm_blocks(n=4)
    live = CausalLMTeacher(tiny_llama(seed=1), 50)
    cache = TopKCacheTeacher(live, blocks, k=None, batch_size=3)
    b = next(iter(LMBatches(blocks, 4, shuffle=True, seed=1)))
    torch.testing.assert_close(cache.logits(b), live.logits(b), rtol=1e-3, atol=1e-3)


def test_ddp_wraps_the_hidden_state_view_and_keeps_the_loss_fused(tmp_path):
    """Under torchrun DDP wraps FinalHidden: the task gets (N, H) hidden states through DDP's
    forward, fuses the output layer with the loss, and the gradients (output layer included)
    equal the single-process ones. A one-rank gloo group stands in for torchrun."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from kdistill.tasks.causal_lm import FinalHidden

    student, teacher = tiny_llama(seed=0), tiny_llama(seed=1)
    b = _batch(lm_blocks(n=4))
    task = CausalLMTask(50, chunk_tokens=5)
    t_logits = CausalLMTeacher(teacher, 50).logits(b)
    want_loss, _ = task.logit_loss(task.forward(student, b), t_logits, b, **HP)
    want = torch.autograd.grad(want_loss, list(student.parameters()))
    view = task.parallel_module(student)
    assert isinstance(view, FinalHidden) and set(view.parameters()) == set(student.parameters())
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(view)
        hidden = task.forward(ddp, b)
        assert hidden.logits is None and hidden.pre_head.shape == (task.count(b), 16)  # hidden states, not logits
        loss, _ = task.logit_loss(hidden, t_logits, b, **HP)
        loss.backward()
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(loss, want_loss)
    for p, w in zip(student.parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-7)
