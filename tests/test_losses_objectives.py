"""Every registered objective: the schedules it declares, the terms it logs, and its loss equal
to the pure losses computed directly on a fixed batch."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.config.losses import KDLoss
from kdistill.losses import (confidence_temperatures, dist, dkd, dkd_warmup, soft_target_kl, standardize_logits,
                             tempered_soft_target_kl)
from kdistill.losses.objectives import DIST, DKD, KD, OBJECTIVES, LabelsOnly, PerEpoch, build_objective
from kdistill.outputs import Outputs
from kdistill.tasks import ClassificationTask

N, C = 6, 5
TASK = ClassificationTask(C)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(N, C, generator=g, requires_grad=True)
    teacher = 3 * torch.randn(N, C, generator=g)
    labels = torch.randint(0, C, (N,), generator=g)
    return student, teacher, {"labels": labels}


def run(objective, batch, step=0, total=10):
    student, teacher, data = batch
    schedules = objective.schedules()
    hp = {name: s(step, total) for name, s in schedules.items()}
    loss, terms = objective(TASK, Outputs(student), Outputs(teacher), data, hp)
    return loss, terms, hp


def test_registry_names_every_method():
    assert set(OBJECTIVES) == {"kd", "dkd", "dist"}
    assert isinstance(build_objective(KDLoss(), teacher=False), LabelsOnly)


def test_kd_equals_hinton_soft_plus_hard(batch):
    s, t, data = batch
    loss, terms, hp = run(build_objective(KDLoss(temperature=3, soft_weight=0.6, hard_weight=0.4)), batch)
    assert set(hp) == {"temperature", "soft_weight", "hard_weight"} and set(terms) == {"soft", "hard", "teacher_entropy"}
    expected = 0.6 * soft_target_kl(s, t, 3.0, "sum") + 0.4 * F.cross_entropy(s, data["labels"], reduction="sum")
    torch.testing.assert_close(loss, expected)


def test_standardize_moves_only_the_soft_term_onto_z_scored_logits(batch):
    s, t, data = batch
    loss, terms, _ = run(build_objective(KDLoss(temperature=2, soft_weight=0.9, hard_weight=0.1, standardize=True)),
                         batch)
    soft = soft_target_kl(standardize_logits(s), standardize_logits(t), 2.0, "sum")
    hard = F.cross_entropy(s, data["labels"], reduction="sum")  # raw logits
    torch.testing.assert_close(terms["soft"], soft)
    torch.testing.assert_close(loss, 0.9 * soft + 0.1 * hard)
    # the teacher's scale no longer matters
    again, _, _ = run(build_objective(KDLoss(temperature=2, soft_weight=0.9, hard_weight=0.1, standardize=True)),
                      (s, 5 * t + 2, data))
    torch.testing.assert_close(again, loss)


def test_per_sample_temperature_replaces_the_schedule_and_logs_the_mean(batch):
    s, t, data = batch
    objective = build_objective(KDLoss(temperature={"kind": "per_sample", "min": 1, "max": 6}))
    loss, terms, hp = run(objective, batch)
    assert "temperature" not in hp
    temps = confidence_temperatures(t, 1.0, 6.0)
    torch.testing.assert_close(terms["temperature"] / N, temps.mean())
    expected = 0.7 * tempered_soft_target_kl(s, t, temps, "sum") + 0.3 * F.cross_entropy(s, data["labels"],
                                                                                         reduction="sum")
    torch.testing.assert_close(loss, expected)


def test_learned_temperature_is_a_trained_module_pushed_against_the_student(batch):
    s, t, data = batch
    objective = build_objective(KDLoss(temperature={"kind": "learned", "min": 1, "max": 21, "loops_epochs": 2}),
                                steps_per_epoch=4)
    assert set(objective.modules()) == {"temperature"}
    module = objective.modules()["temperature"]
    loss, terms, hp = run(objective, batch, step=8)  # epoch 2: the curriculum is complete
    assert hp["ctkd_strength"] == pytest.approx(1.0)
    torch.testing.assert_close(terms["temperature"] / N, torch.tensor(11.0))
    loss.backward()
    # gradient reversal at strength 1: the temperature climbs the loss the student descends
    raw = module.raw.detach().clone().requires_grad_(True)
    temp = 1 + 20 * torch.sigmoid(raw)
    plain = 0.7 * tempered_soft_target_kl(s.detach(), t, temp, "sum")
    (grad,) = torch.autograd.grad(plain, raw)
    torch.testing.assert_close(module.raw.grad, -grad)
    assert PerEpoch(lambda e: e, 4)(6, 100) == 1.5


def test_dkd_warm_up_is_a_per_epoch_schedule_and_the_loss_is_ce_plus_dkd(batch):
    s, t, data = batch
    cfg = KDLoss(method="dkd", alpha=0.5, beta=4, warmup_epochs=2, temperature=3)
    assert cfg.hard_weight == 1.0  # dkd's default
    objective = build_objective(cfg, steps_per_epoch=5)
    assert isinstance(objective, DKD)
    loss, terms, hp = run(objective, batch, step=5)  # epoch 1 of a 2-epoch warm-up
    assert set(hp) == {"temperature", "hard_weight", "dkd_weight"} and set(terms) == {"dkd", "hard"}
    assert hp["dkd_weight"] == pytest.approx(dkd_warmup(1, 2)) == 0.5
    expected = F.cross_entropy(s, data["labels"], reduction="sum") + 0.5 * dkd(
        s, t, data["labels"], alpha=0.5, beta=4, temperature=3, reduction="sum")
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_objective(cfg)


def test_dist_loss_is_ce_plus_dist(batch):
    s, t, data = batch
    objective = build_objective(KDLoss(method="dist", beta=1.5, gamma=0.5, temperature=2))
    assert isinstance(objective, DIST)
    loss, terms, hp = run(objective, batch)
    assert set(hp) == {"temperature", "hard_weight"} and set(terms) == {"dist", "hard"}
    expected = F.cross_entropy(s, data["labels"], reduction="sum") + dist(s, t, beta=1.5, gamma=0.5, temperature=2,
                                                                           reduction="sum")
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("raw, words", [
    ({"alpha": 1}, "alpha applies to method dkd"),
    ({"method": "kd", "gamma": 1}, "gamma applies to method dist"),
    ({"method": "dist", "warmup_epochs": 3}, "warmup_epochs applies to method dkd"),
    ({"method": "dkd", "soft_weight": 0.5}, "soft_weight applies to method kd"),
    ({"method": "dist", "temperature": {"kind": "per_sample"}}, "per_sample applies to method kd"),
    ({"terms": [{"kind": "hint", "student": "a", "teacher": "b", "p": 2}]}, "p applies to kind attention"),
    ({"terms": [{"kind": "pkt", "student": "a", "teacher": "b", "vertices": 8}]}, "vertices applies to kind rkd_angle"),
    ({"terms": [{"kind": "pkt", "student": "a", "teacher": "b"}] * 2}, "give each its own `name`"),
])
def test_another_methods_field_is_refused_in_one_line(raw, words):
    from kdistill.config import RunConfig
    from kdistill.errors import ConfigError

    with pytest.raises(ConfigError, match=words) as err:
        RunConfig.parse({"loss": raw})
    assert "\n" not in str(err.value) and ";" not in str(err.value)


def test_kd_with_a_top_k_teacher_keeps_the_task_path_and_dense_only_methods_refuse_it(batch):
    from kdistill.errors import TrainingError
    from kdistill.losses import TopKLogits

    s, t, data = batch
    compressed = TopKLogits.from_logits(t, 3)
    hp = {"temperature": 2.0, "soft_weight": 0.5, "hard_weight": 0.5}
    KD()(TASK, Outputs(s), Outputs(compressed), data, hp)  # plain kd reads top-k caches
    with pytest.raises(TrainingError, match="dense class logits"):
        KD(standardize=True)(TASK, Outputs(s), Outputs(compressed), data, hp)
    assert math.isfinite(float(KD()(TASK, Outputs(s), None, data, hp)[0].detach()))  # no teacher: the hard term


@pytest.mark.parametrize("loss", [{"method": "dkd"}, {"method": "dist", "gamma": 1},
                                  {"temperature": {"kind": "learned"}, "standardize": True},
                                  {"terms": [{"kind": "pkt", "student": "a", "teacher": "b", "weight": 5}]}])
def test_a_written_config_parses_back_and_takes_assignments(loss):
    import yaml

    from kdistill.config import RunConfig

    cfg = RunConfig.parse({"loss": loss})
    cfg.loss.hard_weight = 0.5  # validated assignment sees every field, defaults included
    assert RunConfig.parse(yaml.safe_load(cfg.to_yaml())).loss == cfg.loss
