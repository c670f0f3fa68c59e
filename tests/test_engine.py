import json

import pytest
import torch

from kdistill.data import Batches
from kdistill.engine import Engine
from kdistill.errors import TrainingError
from kdistill.models import MLP, build_model
from kdistill.runs import recipe_for
from kdistill.tasks import ClassificationTask
from kdistill.teachers import LiveTeacher

from conftest import tiny_config


def mlp_teacher():
    """A fast stand-in for mechanics tests (the real CNN teacher is used where quality matters)."""
    torch.manual_seed(123)
    return LiveTeacher(MLP(784, [64], 10), num_outputs=10)


def make_engine(cfg, data, teacher="mlp", student=None, out=None):
    torch.manual_seed(cfg.seed)
    student = student or build_model(cfg.student, data.input_shape, data.num_classes)
    train = Batches(data.train, cfg.data.batch_size, shuffle=True, seed=cfg.seed)
    val = Batches(data.val, cfg.data.eval_batch_size)
    real = lambda: LiveTeacher(recipe_for(cfg).teacher_model(cfg, data), num_outputs=10)  # noqa: E731
    src = {"mlp": mlp_teacher, "real": real, None: lambda: None}[teacher]()
    return Engine(cfg, student, ClassificationTask(10), train, val, teacher=src,
                  out_dir=out or cfg.train.output_dir, num_outputs=10)


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_gradient_accumulation_gives_the_same_update_as_one_big_batch(tmp_path, small_mnist):
    """4 micro-batches of 16 per step == 1 batch of 64 per step (same samples, same order)."""
    no_dropout = {"arch": "mlp", "hidden": [32], "dropout": 0.0}
    big = tiny_config(tmp_path / "a", data={"batch_size": 64}, student=no_dropout, train={"epochs": 1})
    acc = tiny_config(tmp_path / "b", data={"batch_size": 16}, student=no_dropout,
                      train={"epochs": 1, "grad_accum_steps": 4})
    e1, e2 = make_engine(big, small_mnist), make_engine(acc, small_mnist)
    e1.fit()
    e2.fit()
    assert e1.step == e2.step == 8
    torch.testing.assert_close(weights(e1.student), weights(e2.student), rtol=1e-5, atol=1e-6)


def test_resume_after_interruption_gives_the_same_weights(tmp_path, small_mnist, monkeypatch):
    cfg = tiny_config(tmp_path / "r", train={"epochs": 3})  # dropout on: RNG state must resume too
    straight = make_engine(cfg, small_mnist, out=tmp_path / "straight")
    straight.fit()

    interrupted = make_engine(cfg, small_mnist)
    original_save = Engine._save

    def save_then_die(self):
        original_save(self)
        if self.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    monkeypatch.setattr(Engine, "_save", original_save)

    resumed = make_engine(cfg, small_mnist)
    resumed.fit(resume=True)
    assert resumed.step == straight.step
    torch.testing.assert_close(weights(resumed.student), weights(straight.student), rtol=0, atol=0)
    assert [h["val_accuracy"] for h in resumed.history] == [h["val_accuracy"] for h in straight.history]
    steps = [json.loads(l)["step"] for l in (cfg.train.output_dir / "metrics.jsonl").read_text().splitlines()
             if "step" in json.loads(l)]
    assert steps == list(range(straight.step))  # the log has every step once


def test_every_step_logs_schedules_and_loss_terms(tmp_path, small_mnist):
    cfg = tiny_config(tmp_path, train={"epochs": 2})
    e = make_engine(cfg, small_mnist)
    e.fit()
    records = [json.loads(l) for l in (cfg.train.output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step" in r]
    assert len(steps) == e.total_steps == 16
    for key in ("temperature", "soft_weight", "hard_weight", "lr", "loss", "soft", "hard"):
        assert key in steps[0]
    assert steps[0]["temperature"] == pytest.approx(8) and steps[-1]["temperature"] == pytest.approx(2)
    assert sum("eval" in r for r in records) == 2


def test_class_count_mismatch_fails_before_training(tmp_path, small_mnist):
    cfg = tiny_config(tmp_path)
    e = make_engine(cfg, small_mnist)
    e.teacher = LiveTeacher(MLP(784, [8], 5), num_outputs=5)
    with pytest.raises(TrainingError, match="teacher predicts 5 classes and the student 10"):
        e.fit()
    assert e.step == 0 and not (cfg.train.output_dir / "checkpoint.pt").exists()


def test_student_output_size_must_match_the_data(tmp_path, small_mnist):
    cfg = tiny_config(tmp_path)
    e = make_engine(cfg, small_mnist, student=MLP(784, [8], 7))
    with pytest.raises(TrainingError, match="student predicts 7 classes but the data has 10"):
        e.fit()


def test_nonfinite_loss_stops_naming_the_step_or_skips(tmp_path, small_mnist):
    small_mnist.train.inputs[70] = float("nan")  # second batch (of 64) holds sample 70 somewhere
    cfg = tiny_config(tmp_path, train={"epochs": 1})
    with pytest.raises(TrainingError, match=r"non-finite loss at step \d+ .*soft=nan"):
        make_engine(cfg, small_mnist).fit()
    skip = tiny_config(tmp_path / "s", train={"epochs": 1, "on_nonfinite": "skip"})
    e = make_engine(skip, small_mnist)
    e.fit()
    records = [json.loads(l) for l in (skip.train.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("skipped", False) for r in records) == 1
    assert torch.isfinite(weights(e.student)).all()


def test_distillation_moves_the_student_towards_the_teacher(tmp_path, small_mnist):
    """A real check that the soft term does its job: after distilling, the student's KL to the
    teacher's soft targets (at the distillation temperature) on held-out images is lower than
    that of the same student trained on labels, and it agrees with the teacher more often."""
    from kdistill.evaluate import kl_to

    cfg = tiny_config(tmp_path, student={"arch": "mlp", "hidden": [64], "dropout": 0.0},
                      loss={"temperature": 20.0, "soft_weight": 1.0, "hard_weight": 0.0},
                      optim={"name": "adam", "lr": 0.002}, train={"epochs": 4})
    distilled = make_engine(cfg, small_mnist, teacher="real", out=tmp_path / "d")
    distilled.fit()
    scratch = make_engine(cfg, small_mnist, teacher=None, out=tmp_path / "s")
    scratch.fit()
    task, val = ClassificationTask(10), Batches(small_mnist.val, 256)
    teacher_logits = task.predict(distilled.teacher.model, val)[0]
    distilled_logits = task.predict(distilled.student, val)[0]
    scratch_logits = task.predict(scratch.student, val)[0]
    assert kl_to(teacher_logits / 20, distilled_logits / 20) < kl_to(teacher_logits / 20, scratch_logits / 20)


def test_max_norm_caps_every_unit_after_each_step(tmp_path, small_mnist):
    cfg = tiny_config(tmp_path / "m", optim={"name": "sgd", "lr": 2.0, "max_norm": 0.5},
                      train={"epochs": 1})
    engine = make_engine(cfg, small_mnist, teacher=None)
    engine.fit()
    norms = [m.weight.detach().norm(dim=1) for m in engine.student.modules() if isinstance(m, torch.nn.Linear)]
    assert all(float(n.max()) <= 0.5 + 1e-5 for n in norms)
    assert any(float(n.max()) > 0.49 for n in norms)  # the cap was reached: it did something
