"""Feature terms from config: each equals its pure loss on the tapped features, connectors come
from the probed shapes, and what cannot work is refused before training in one line."""

import pytest
import torch

from kdistill.config.losses import FeatureTerm
from kdistill.errors import ConfigError
from kdistill.losses import attention_transfer, hint_mse, pkt, rkd_angle, rkd_distance
from kdistill.losses.feature_terms import check_paths, feature_terms
from kdistill.models.builders import CNN
from kdistill.outputs import Outputs
from kdistill.teachers import LiveTeacher


def models():
    torch.manual_seed(0)
    return CNN((1, 12, 12), [4, 8], 16, 3), CNN((1, 12, 12), [6, 12], 24, 3)


def build(specs, batch_size=8):
    student, teacher_model = models()
    cfgs = [FeatureTerm(**spec) for spec in specs]
    teacher = LiveTeacher(teacher_model, num_outputs=3, feature_paths=check_paths(teacher_model, cfgs, "teacher"))
    probe = {"inputs": torch.rand(2, 1, 12, 12)}
    terms, taps = feature_terms(cfgs, student, teacher, probe, batch_size)
    return student, teacher, terms, taps


def test_each_kind_equals_its_pure_loss_on_the_tapped_features():
    specs = [{"kind": "hint", "student": "features.2", "teacher": "features.2", "weight": 10},
             {"kind": "attention", "student": "features.5", "teacher": "features.5", "p": 1},
             {"kind": "rkd_distance", "student": "classifier.1", "teacher": "classifier.1"},
             {"kind": "rkd_angle", "student": "classifier.1", "teacher": "features.5", "name": "angle"},
             {"kind": "pkt", "student": "classifier.1", "teacher": "classifier.1"}]
    student, teacher, terms, taps = build(specs)
    assert [t.name for t in terms] == ["hint", "attention", "rkd_distance", "angle", "pkt"]
    hint = terms[0].module
    assert isinstance(hint, torch.nn.Conv2d) and (hint.in_channels, hint.out_channels) == (4, 6)
    assert all(t.module is None for t in terms[1:])  # only the hint regresses through a connector
    x = torch.rand(5, 1, 12, 12)
    student(x)
    s = Outputs(None, features=taps.collect())
    t = teacher.outputs({"inputs": x})
    values = {term.name: term.fn(s, t, {}) for term in terms}
    sf, tf = s.features, t.features
    expected = {"hint": hint_mse(hint(sf["features.2"]), tf["features.2"], "sum"),
                "attention": attention_transfer(sf["features.5"], tf["features.5"], 1.0, "sum"),
                "rkd_distance": rkd_distance(sf["classifier.1"], tf["classifier.1"], "sum"),
                "angle": rkd_angle(sf["classifier.1"], tf["features.5"], "sum"),
                "pkt": pkt(sf["classifier.1"], tf["classifier.1"], "sum")}
    for name, value in expected.items():
        torch.testing.assert_close(values[name], value)
    values["hint"].backward()
    assert hint.weight.grad is not None and student.features[0].weight.grad.abs().sum() > 0
    taps.remove()


def test_probing_leaves_batch_norm_statistics_and_training_mode_alone():
    student, teacher_model = models()
    student.train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = [FeatureTerm(kind="pkt", student="classifier.1", teacher="classifier.1")]
    teacher = LiveTeacher(teacher_model, num_outputs=3, feature_paths=("classifier.1",))
    feature_terms(cfg, student, teacher, {"inputs": torch.rand(2, 1, 12, 12)}, 8)[1].remove()
    assert student.training and all(torch.equal(before[k], v) for k, v in student.state_dict().items())


@pytest.mark.parametrize("spec, words", [
    ({"kind": "hint", "student": "features.9", "teacher": "features.2"}, r"loss.terms\[0\].student: CNN has no module"),
    ({"kind": "hint", "student": "features.5", "teacher": "features.2"}, "smaller than the teacher's"),
    ({"kind": "hint", "student": "classifier.1", "teacher": "features.2"}, "differ in rank"),
    ({"kind": "attention", "student": "features.2", "teacher": "features.5"}, "same H x W"),
])
def test_a_wrong_path_or_an_unbridgeable_shape_is_one_line(spec, words):
    with pytest.raises(ConfigError, match=words) as err:
        build([spec])
    assert "\n" not in str(err.value)


def test_teacher_paths_are_checked_on_the_teacher_and_relational_terms_need_a_batch():
    _, teacher_model = models()
    with pytest.raises(ConfigError, match=r"loss.terms\[0\].teacher: CNN has no module 'features.50'"):
        check_paths(teacher_model, [FeatureTerm(kind="pkt", student="x", teacher="features.50")], "teacher")
    with pytest.raises(ConfigError, match="rkd_angle relates samples.*at least 3"):
        build([{"kind": "rkd_angle", "student": "classifier.1", "teacher": "classifier.1"}], batch_size=2)


def test_a_teacher_without_features_is_refused():
    student, teacher_model = models()
    logits_only = LiveTeacher(teacher_model, num_outputs=3)
    cfg = [FeatureTerm(kind="pkt", student="classifier.1", teacher="classifier.1")]
    with pytest.raises(ConfigError, match="gives logits only: use a live teacher"):
        feature_terms(cfg, student, logits_only, {"inputs": torch.rand(2, 1, 12, 12)}, 8)


def test_a_partial_micro_batch_too_small_for_a_relation_adds_zero():
    student, teacher, terms, taps = build([{"kind": "rkd_angle", "student": "classifier.1",
                                             "teacher": "classifier.1"}])
    x = torch.rand(2, 1, 12, 12)
    student(x)
    value = terms[0].fn(Outputs(None, features=taps.collect()), teacher.outputs({"inputs": x}), {})
    assert float(value) == 0.0
