"""Feature taps on built-in, HF and plain modules; connectors: shapes, refusals, training."""

import pytest
import torch
from torch import nn

from kdistill.errors import ConfigError, TrainingError
from kdistill.losses.features import hint_mse
from kdistill.models.builders import CNN, MLP
from kdistill.taps import FeatureTaps, make_connector, probe_shapes
from text_helpers import tiny_bert


def _images(n=3):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_taps_read_the_cnn_features_the_model_computes():
    torch.manual_seed(0)
    model = CNN((1, 8, 8), [4, 8], 16, 3)
    x = _images()
    with FeatureTaps(model, ["features.2", "features.5", "classifier.1"]) as taps:
        logits = model(x)
        out = taps.collect()
    torch.testing.assert_close(out["features.2"], model.features[:3](x))
    torch.testing.assert_close(out["features.5"], model.features(x))
    torch.testing.assert_close(out["classifier.1"], model.classifier[:2](model.features(x).flatten(1)))
    torch.testing.assert_close(model(x), logits)  # hooks do not change the output


def test_hooks_are_removed_and_each_forward_is_collected_once():
    model = MLP(64, [8, 6], 3)
    taps = FeatureTaps(model, ["net.2"])
    model(_images())
    assert taps.collect()["net.2"].shape == (3, 8)
    with pytest.raises(TrainingError, match="recorded nothing"):
        taps.collect()
    taps.remove()
    model(_images())
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(TrainingError):
        taps.collect()


def test_a_wrong_path_is_one_line_with_the_nearest_names():
    model = CNN((1, 8, 8), [4, 8], 16, 3)
    with pytest.raises(ConfigError) as err:
        FeatureTaps(model, ["features.22"], field="loss.terms[0].student")
    message = str(err.value)
    assert "\n" not in message and message.startswith("loss.terms[0].student: CNN has no module 'features.22'")
    assert "features.2" in message


def test_teacher_taps_under_inference_mode_can_feed_a_student_loss():
    teacher, student = MLP(64, [10], 3), MLP(64, [6], 3)
    connector = make_connector((6,), (10,))
    with FeatureTaps(teacher, ["net.2"]) as t_taps, FeatureTaps(student, ["net.2"]) as s_taps:
        with torch.inference_mode():
            teacher(_images())
        student(_images())
        target = t_taps.collect()["net.2"]
        assert not target.is_inference()
        loss = hint_mse(connector(s_taps.collect()["net.2"]), target, reduction="sum")
    loss.backward()
    assert connector.weight.grad.abs().sum() > 0 and student.net[1].weight.grad.abs().sum() > 0


def test_plain_module_and_tuple_outputs():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 5)

        def forward(self, x):
            return self.body(x), x.sum(-1)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = TwoHeads()

        def forward(self, x):
            return self.block(x)[0]

    model = Wrapper()
    x = torch.randn(2, 4)
    with FeatureTaps(model, ["block"]) as taps:
        model(x)
        torch.testing.assert_close(taps.collect()["block"], model.block.body(x))


@pytest.mark.parametrize("s,t,kind", [
    ((8,), (8,), nn.Identity), ((6,), (10,), nn.Linear), ((5, 6), (5, 10), nn.Linear),
    ((4, 4, 4), (12, 4, 4), nn.Conv2d), ((4, 8, 8), (4, 2, 2), nn.AdaptiveAvgPool2d),
    ((4, 8, 8), (12, 3, 3), nn.Sequential)])
def test_connector_maps_student_shape_to_teacher_shape(s, t, kind):
    connector = make_connector(s, t)
    assert isinstance(connector, kind)
    assert connector(torch.randn(2, *s)).shape == (2, *t)


@pytest.mark.parametrize("s,t,match", [
    ((4, 4, 4), (64,), "differ in rank"), ((4, 2, 2), (4, 4, 4), "smaller than the teacher"),
    ((5, 6), (7, 6), "numbers of positions"), ((2, 3, 4, 5), (2, 3, 4, 6), "conv maps")])
def test_connector_refuses_what_it_cannot_bridge(s, t, match):
    with pytest.raises(ConfigError, match=match) as err:
        make_connector(s, t, field="loss.terms[1]")
    assert "\n" not in str(err.value) and str(err.value).startswith("loss.terms[1]")


def test_cnn_hint_trains_connector_and_student_not_teacher_and_checkpoints():
    torch.manual_seed(0)
    teacher, student = CNN((1, 8, 8), [6, 12], 16, 3), CNN((1, 8, 8), [4, 8], 16, 3)
    x = _images(4)
    shapes = {**probe_shapes(student, ["features.2"], lambda: student(x)),
              **probe_shapes(teacher, ["features.5"], lambda: teacher(x))}
    assert shapes == {"features.2": (4, 4, 4), "features.5": (12, 2, 2)}
    connectors = nn.ModuleDict({"hint": make_connector(shapes["features.2"], shapes["features.5"])})
    optimizer = torch.optim.SGD([*student.parameters(), *connectors.parameters()], lr=0.1)
    before = {k: v.clone() for k, v in connectors.state_dict().items()}
    with FeatureTaps(student, ["features.2"]) as s_taps, FeatureTaps(teacher, ["features.5"]) as t_taps:
        with torch.no_grad():
            teacher(x)
        student(x)
        loss = hint_mse(connectors["hint"](s_taps.collect()["features.2"]), t_taps.collect()["features.5"])
        loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.features[0].weight.grad.abs().sum() > 0
    assert student.classifier[0].weight.grad is None  # the hint does not reach past its tap
    optimizer.step()
    state = connectors.state_dict()
    assert set(state) == {"hint.1.weight", "hint.1.bias"}
    assert not torch.equal(state["hint.1.weight"], before["hint.1.weight"])
    restored = nn.ModuleDict({"hint": make_connector((4, 4, 4), (12, 2, 2))})
    restored.load_state_dict(state)
    torch.testing.assert_close(restored["hint"](torch.ones(1, 4, 4, 4)), connectors["hint"](torch.ones(1, 4, 4, 4)))


def test_hf_bert_layers_tap_and_train_through_a_linear_connector():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)

    def bert(hidden, layers):
        config = transformers.BertConfig(**tiny_bert(hidden, layers, 2), num_labels=2)
        return transformers.BertForSequenceClassification(config)

    teacher, student = bert(32, 4), bert(16, 2)
    ids = torch.randint(5, 20, (3, 7))
    with FeatureTaps(student, ["bert.encoder.layer.1"]) as s_taps, \
            FeatureTaps(teacher, ["bert.encoder.layer.3"]) as t_taps:
        with torch.no_grad():
            t_out = teacher(input_ids=ids, output_hidden_states=True)
        student(input_ids=ids)
        s_feat, t_feat = s_taps.collect()["bert.encoder.layer.1"], t_taps.collect()["bert.encoder.layer.3"]
    torch.testing.assert_close(t_feat, t_out.hidden_states[4])  # the tap sees HF's own hidden state
    connector = make_connector(tuple(s_feat.shape[1:]), tuple(t_feat.shape[1:]))
    assert isinstance(connector, nn.Linear) and (connector.in_features, connector.out_features) == (16, 32)
    hint_mse(connector(s_feat), t_feat, reduction="sum").backward()
    assert connector.weight.grad.abs().sum() > 0
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="bert.encoder.layer.1"):
        FeatureTaps(student, ["bert.encoder.layers.1"])
