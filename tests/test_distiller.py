"""Distiller in your own loop: the engine's loss and update on the same batch (classification and
the fused causal-LM loss), schedules stepped per call, state round trips, clear refusals, and
DDP's averaging of per-rank means (2 gloo processes)."""

import copy

import pytest
import torch
from torch import nn

from kdistill import Distiller
from kdistill.config import LMLoss, RunConfig
from kdistill.data.lm_text import LMBatches
from kdistill.engine import Engine
from kdistill.errors import ConfigError
from kdistill.losses.objectives import build_objective
from kdistill.tasks import ClassificationTask
from kdistill.tasks.causal_lm import CausalLMTask
from kdistill.teachers import LiveTeacher
from kdistill.teachers.causal_lm import CausalLMTeacher

from lm_helpers import lm_blocks, tiny_llama

LOSS = {"temperature": {"kind": "linear", "start": 6, "end": 2}, "soft_weight": 0.7, "hard_weight": 0.3}


def _classification_batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randn(n, 6, generator=g), "labels": torch.randint(0, 3, (n,), generator=g)}


def _pair(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)), nn.Linear(6, 3)


def _engine(student, task, teacher, objective, batch, loss=LOSS):
    cfg = RunConfig.parse({"loss": loss, "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.0},
                           "train": {"epochs": 1, "progress": False}})
    return Engine(cfg, student, task, [batch], teacher=teacher, objective=objective)


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _sgd_step(model, loss, lr=0.1):
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad


def test_classification_loss_and_update_equal_the_engine():
    student, teacher = _pair()
    batch = _classification_batch()
    engine = _engine(copy.deepcopy(student), ClassificationTask(3), LiveTeacher(teacher, num_outputs=3),
                     None, batch)
    kd = Distiller(student, teacher, loss=LOSS, total_steps=1)
    out = kd(batch)
    want = engine.train_step([batch], engine.hparams(0))
    assert out.units == 8 and out.hparams["temperature"] == 6.0
    assert float(out.loss.detach()) == pytest.approx(want["loss"], rel=1e-6)
    for name in ("soft", "hard"):
        assert float(out.terms[name]) == pytest.approx(want[name], rel=1e-6)
    _sgd_step(student, out.loss)
    torch.testing.assert_close(_params(student), _params(engine.student), rtol=1e-6, atol=1e-7)


def test_causal_lm_uses_the_fused_loss_and_equals_the_engine():
    student, teacher = tiny_llama(seed=0), tiny_llama(seed=1)
    batch = next(iter(LMBatches(lm_blocks(n=4), 4)))
    lm_loss = {"temperature": 2.0, "soft_weight": 0.8, "hard_weight": 0.2, "divergence": "jsd", "chunk_tokens": 5}
    kd = Distiller(student, teacher, loss=lm_loss, task="causal_lm")
    seen = kd.student_outputs(batch)
    assert seen.logits is None and seen.pre_head is not None  # no (B, L, V) logits: the fused path
    cfg_loss = LMLoss(**lm_loss)
    engine = _engine(copy.deepcopy(student), CausalLMTask(50, divergence="jsd", chunk_tokens=5),
                     CausalLMTeacher(teacher, 50), build_objective(cfg_loss), batch, loss={})
    out = kd(batch)
    want = engine.train_step([batch], engine.hparams(0) | {"temperature": 2.0, "soft_weight": 0.8,
                                                            "hard_weight": 0.2})
    assert out.units == CausalLMTask(50).count(batch)
    assert float(out.loss.detach()) == pytest.approx(want["loss"], rel=1e-5)
    _sgd_step(student, out.loss)
    torch.testing.assert_close(_params(student), _params(engine.student), rtol=1e-5, atol=1e-6)


def test_causal_lm_labels_default_to_the_unpadded_inputs():
    student, teacher = tiny_llama(seed=0), tiny_llama(seed=1)
    batch = next(iter(LMBatches(lm_blocks(n=3), 3)))
    kd = Distiller(student, teacher, task="causal_lm")
    bare = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    every_real_token = bare["input_ids"].masked_fill(bare["attention_mask"] == 0, -100)
    labelled = {**bare, "labels": every_real_token}
    torch.testing.assert_close(kd(bare, step=0).loss, kd(labelled, step=0).loss)
    assert kd(bare, step=0).units == int((every_real_token[:, 1:] != -100).sum())


def test_schedules_step_per_call_and_per_accumulated_step():
    student, teacher = _pair()
    kd = Distiller(student, teacher, loss=LOSS, total_steps=3, grad_accum_steps=2)
    batch = _classification_batch()
    temps = [kd(batch).hparams["temperature"] for _ in range(6)]
    assert temps == [6.0, 6.0, 4.0, 4.0, 2.0, 2.0] and kd.step == 3
    assert kd(batch, step=1).hparams["temperature"] == 4.0 and kd.calls == 6  # step= does not advance


def test_state_dict_restores_schedule_position_and_connectors():
    student, teacher = _pair()
    kd = Distiller(student, teacher, loss=LOSS, total_steps=4, connectors={"hint": nn.Linear(8, 4)})
    assert [p.shape for p in kd.parameters()] == [torch.Size([4, 8]), torch.Size([4])]
    kd(_classification_batch())
    other = Distiller(student, teacher, loss=LOSS, total_steps=4, connectors={"hint": nn.Linear(8, 4)})
    other.load_state_dict(kd.state_dict())
    assert other.step == 1 and other.hparams() == kd.hparams()
    torch.testing.assert_close(other.connectors["hint"].weight, kd.connectors["hint"].weight)
    with pytest.raises(ConfigError, match="grad_accum_steps"):
        Distiller(student, teacher, loss=LOSS, total_steps=4, grad_accum_steps=2).load_state_dict(kd.state_dict())


def test_labels_only_without_a_teacher_is_cross_entropy():
    student, _ = _pair()
    batch = _classification_batch()
    out = Distiller(student, None)(batch)
    want = nn.functional.cross_entropy(student(batch["inputs"]), batch["labels"])
    torch.testing.assert_close(out.loss, want)
    assert set(out.terms) == {"hard"}


def test_export_student_saves_weights(tmp_path):
    from kdistill.models import load_weights

    student, teacher = _pair()
    kd = Distiller(student, teacher, connectors={"c": nn.Linear(2, 2)})
    model = kd.export_student(tmp_path / "student.safetensors")
    assert model is student and not model.training
    restored = load_weights(_pair(seed=5)[0], tmp_path / "student.safetensors")
    torch.testing.assert_close(_params(restored), _params(student))
    lm = Distiller(tiny_llama(seed=0), tiny_llama(seed=1), task="causal_lm")
    lm.export_student(tmp_path / "lm")
    assert (tmp_path / "lm" / "model.safetensors").is_file()


@pytest.mark.parametrize("kwargs, match", [
    ({"loss": {"temprature": 2}}, "loss: temprature: unknown key"),
    ({"loss": LOSS}, "total_steps"),
    ({"task": "regression"}, "not a task name"),
    ({"grad_accum_steps": 0}, "grad_accum_steps"),
])
def test_bad_arguments_are_refused_in_one_line(kwargs, match):
    student, teacher = _pair()
    with pytest.raises(ConfigError, match=match):
        Distiller(student, teacher, **kwargs)


def test_vocabulary_mismatch_and_wrapped_students_are_refused():
    with pytest.raises(ConfigError, match="pass vocab_size"):
        Distiller(tiny_llama(vocab=50), tiny_llama(vocab=60), task="causal_lm")
    student, teacher = _pair()
    with pytest.raises(ConfigError, match="plain student"):
        Distiller(nn.DataParallel(student), teacher)


def _ddp_worker(rank, folder):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=2)
    try:
        student, teacher = _pair()
        kd = Distiller(student, teacher, loss={"temperature": 3.0})
        assert isinstance(kd.model, nn.parallel.DistributedDataParallel)
        batch = _classification_batch(n=4 + 4 * rank, seed=rank)  # the ranks hold different counts
        kd(batch).loss.backward()
        torch.save([p.grad for p in student.parameters()], f"{folder}/grads{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: ~20-50 s on 2 shared cores
def test_under_ddp_gradients_are_the_mean_of_per_rank_means(tmp_path):
    """Each rank's loss is its own batch's mean; DDP averages the ranks (the engine instead
    divides the global sum by the global count: the same only when ranks hold equal counts)."""
    torch.multiprocessing.start_processes(_ddp_worker, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    got = torch.load(tmp_path / "grads0.pt", weights_only=True)
    student, teacher = _pair()
    kd = Distiller(student, teacher, loss={"temperature": 3.0})
    losses = [kd(_classification_batch(n=4 + 4 * r, seed=r)).loss for r in (0, 1)]
    want = torch.autograd.grad((losses[0] + losses[1]) / 2, list(student.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
