"""The memoized default teacher source: the live teacher's weights, live whenever outputs could
change, rows spilled to disk past the memory bound, stale inputs recomputed."""

import json

import pytest
import torch
from text_helpers import text_config, tiny_bert, toy_rows, write_csv, write_vocab

from kdistill import runs
from kdistill.config import HFSpec, RunConfig, TextDataConfig
from kdistill.data import Batches, build_data
from kdistill.data.text import TextBatches, build_text_data, encode
from kdistill.losses import TopKLogits
from kdistill.models import build_model
from kdistill.models.text import build_text_model, load_tokenizer
from kdistill.teachers import EnsembleTeacher, LiveTeacher, TeacherSource
from kdistill.teachers.memo import MemoizedTeacher, default_source, reuse_decision
from kdistill.teachers.text import TextTeacher

N = 192  # training images


@pytest.fixture(scope="module")
def data():
    return build_data(RunConfig().data.model_copy(update={"limit_train": N, "val_size": 64}))


def image_config(tmp_path, **over) -> RunConfig:
    raw = {"seed": 1, "data": {"limit_train": N, "val_size": 64, "batch_size": 32},
           "student": {"arch": "mlp", "hidden": [16], "dropout": 0.1},
           "teacher": {"model": {"arch": "mlp", "hidden": [32]}},
           "loss": {"temperature": 3.0}, "optim": {"lr": 0.05},
           "train": {"epochs": 3, "progress": False, "output_dir": str(tmp_path / "run")}}
    for key, value in over.items():
        raw[key] = {**raw[key], **value}
    return RunConfig.parse(raw)


def counted_teacher(data):
    """A random-weight MLP teacher that counts the samples it is run on."""
    torch.manual_seed(0)
    model = build_model(RunConfig.parse({"student": {"arch": "mlp", "hidden": [32]}}).student,
                        data.input_shape, 10)
    model.samples = 0

    def count(module, args):
        module.samples += args[0].shape[0]
    model.register_forward_pre_hook(count)
    return model


# ---------------------------------------------------------------- the rule
@pytest.mark.parametrize("settings, reuse, words", [
    ({"teacher_frozen": True}, True, "computed once"),
    ({"teacher_frozen": True, "augment": "jitter"}, False, "data.augment is 'jitter'"),
    ({"teacher_frozen": True, "on_policy": True}, False, "on-policy"),
    ({"teacher_frozen": True, "live_only": True}, False, "teacher.reuse is off"),
    ({"teacher_frozen": False}, False, "not frozen"),
])
def test_reuse_decision_keeps_the_live_teacher_whenever_outputs_could_change(settings, reuse, words):
    ok, reason = reuse_decision(**settings)
    assert ok is reuse and words in reason


# ---------------------------------------------------------------- same weights as live
def test_image_distillation_gives_the_live_teachers_weights_running_it_once(data, tmp_path, capsys):
    teacher = counted_teacher(data)
    memo = runs.distill(image_config(tmp_path), teacher=teacher, data=data, out_dir=tmp_path / "memo")
    assert "teacher: memoized (a frozen teacher" in capsys.readouterr().out
    assert teacher.samples == 2 + N  # the engine's 2-sample preflight, then one pass
    teacher.samples = 0
    live = runs.distill(image_config(tmp_path, teacher={"reuse": "off"}), teacher=teacher, data=data,
                        out_dir=tmp_path / "live")
    assert "teacher: live (teacher.reuse is off" in capsys.readouterr().out
    assert teacher.samples == 2 + 3 * N
    want = live.model.state_dict()
    for name, value in memo.model.state_dict().items():
        assert torch.equal(value, want[name]), name
    summary = json.loads((tmp_path / "memo" / "summary.json").read_text())
    assert summary["teacher"]["kind"] == "memoized" and summary["teacher"]["source"]["kind"] == "live"
    assert summary["teacher"]["served"] == 2 * N and summary["teacher"]["rows_on_disk"] == 0
    assert "live_because" in json.loads((tmp_path / "live" / "summary.json").read_text())["teacher"]
    assert summary["precision"]["train"]["dtype"] == "fp32"


@pytest.mark.parametrize("over, why", [({"data": {"augment": "jitter"}}, "data.augment is 'jitter'")])
def test_outputs_that_could_change_keep_the_live_teacher(data, tmp_path, capsys, over, why):
    teacher = counted_teacher(data)
    cfg = image_config(tmp_path, **over).model_copy(update={"train": image_config(tmp_path).train.model_copy(
        update={"epochs": 2})})
    runs.distill(cfg, teacher=teacher, data=data, out_dir=tmp_path / "run")
    assert teacher.samples == 2 + 2 * N
    assert f"teacher: live ({why}" in capsys.readouterr().out
    assert why in json.loads((tmp_path / "run" / "summary.json").read_text())["teacher"]["live_because"]


def test_a_teacher_in_training_mode_or_a_cache_is_not_memoized(data, tmp_path):
    cfg = image_config(tmp_path)
    live = LiveTeacher(counted_teacher(data), num_outputs=10)
    live.model.train()  # e.g. Monte-Carlo dropout: every pass differs
    assert default_source(cfg, live, echo=False).reuse is False
    memo = default_source(cfg, LiveTeacher(counted_teacher(data), num_outputs=10), echo=False)
    assert memo.reuse and default_source(cfg, memo, echo=False) is memo


def test_text_distillation_with_layer_terms_gives_the_live_teachers_weights(tmp_path, capsys):
    raw = text_config(tmp_path, loss={"temperature": 2.0, "soft_weight": 0.5, "hard_weight": 0.5,
                                      "hidden_weight": 1.0, "attention_weight": 0.5}, epochs=3)
    raw["optim"] = {"name": "sgd", "lr": 0.1}  # (Adam would magnify rounding noise in zero gradients)
    torch.manual_seed(0)
    t_model = build_text_model(HFSpec(config=tiny_bert(32, 4, 4), tokenizer=str(write_vocab(tmp_path))), 2,
                               attentions=True)
    cfg = RunConfig.parse(raw)
    memo = runs.distill(cfg, teacher=t_model, out_dir=tmp_path / "memo")
    assert "teacher: memoized" in capsys.readouterr().out
    raw["teacher"]["reuse"] = "off"
    live = runs.distill(RunConfig.parse(raw), teacher=t_model, out_dir=tmp_path / "live")
    want = live.model.state_dict()
    for name, value in memo.model.state_dict().items():
        # the live text teacher itself varies in the last bit with a batch's padding width: the
        # memo serves its first pass, so weights agree to rounding (2e-12 seen), not bit for bit
        torch.testing.assert_close(value, want[name], rtol=0, atol=1e-8, msg=name)
    summary = json.loads((tmp_path / "memo" / "summary.json").read_text())["teacher"]
    assert summary["source"]["kind"] == "live_text" and summary["served"] == 2 * summary["computed"] - 4


# ---------------------------------------------------------------- storage
class TopKSource(TeacherSource):
    """A frozen model giving its top-3 log-probabilities and tail mass."""

    def __init__(self, model):
        self.model, self.num_outputs = model.eval(), 10

    def logits(self, batch):
        with torch.no_grad():
            return TopKLogits.from_logits(self.model(batch["inputs"]), 3)


@pytest.mark.parametrize("kind", ["dense", "topk"])
def test_rows_past_the_bound_spill_to_disk_and_read_back_exactly(data, tmp_path, kind):
    model = counted_teacher(data)
    source = LiveTeacher(model, num_outputs=10) if kind == "dense" else TopKSource(model)
    row_bytes = 10 * 4 if kind == "dense" else 3 * 4 + 3 * 8 + 4
    memo = MemoizedTeacher(source, max_bytes=50 * row_bytes, spill_dir=str(tmp_path / "spill"))
    batches = Batches(data.train, 32, shuffle=True, seed=0)
    for b in batches:
        memo.logits(b)
    stats = memo.describe()
    assert stats["rows_in_memory"] == 50 and stats["rows_on_disk"] == N - 50
    assert stats["bytes_in_memory"] == 50 * row_bytes and stats["bytes_on_disk"] == (N - 50) * row_bytes
    model.samples = 0
    batches.set_epoch(1)
    for b in batches:
        got, want = memo.logits(b), source.logits(b)
        for field in (("logits",) if kind == "dense" else ("values", "indices", "log_tail")):
            g, w = (got, want) if kind == "dense" else (getattr(got, field), getattr(want, field))
            assert torch.equal(g, w), field
    assert model.samples == N  # only the reference `source.logits` calls ran the model


def test_text_rows_are_trimmed_repadded_and_spilled(tmp_path):
    vocab = str(write_vocab(tmp_path))
    write_csv(tmp_path / "d.csv", toy_rows(40))
    tok = load_tokenizer(vocab)
    data = encode(build_text_data(TextDataConfig(dataset="csv", path=str(tmp_path / "d.csv"))), tok, 16, tok)
    torch.manual_seed(0)
    model = build_text_model(HFSpec(config=tiny_bert(32, 4, 4), tokenizer=vocab), 2, attentions=True).eval()
    live = TextTeacher(model, num_outputs=2, hidden_layers=(0, 2), attention_layers=(2,))
    memo = MemoizedTeacher(live, max_bytes=20_000)
    for b in TextBatches(data.train, 8, shuffle=True, seed=0):
        memo.outputs(b)
    stats = memo.describe()
    assert stats["rows_on_disk"] and stats["rows_in_memory"] and stats["bytes_in_memory"] <= 20_000
    calls = []
    forward, live.forward = live.forward, lambda **kw: calls.append(kw)  # a forward now would be a miss
    for b in TextBatches(data.train, 8, shuffle=True, seed=1):
        got = memo.outputs(dict(b))
        live.forward = forward
        want = live.outputs(dict(b))
        live.forward = lambda **kw: calls.append(kw)
        torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=1e-6)
        mask = b["teacher_attention_mask"].bool()
        torch.testing.assert_close(got.hidden[2][mask], want.hidden[2][mask], rtol=0, atol=1e-6)
        rows = mask[:, None, :, None] & mask[:, None, None, :]
        torch.testing.assert_close(got.attention[2] * rows, want.attention[2] * rows, rtol=0, atol=1e-6)
        assert got.hidden[0].shape == want.hidden[0].shape
    assert not calls


def test_a_sample_whose_inputs_changed_is_recomputed(data):
    model = counted_teacher(data)
    memo = MemoizedTeacher(LiveTeacher(model, num_outputs=10))
    batch = {"inputs": data.train.inputs[:8], "labels": data.train.labels[:8], "index": torch.arange(8)}
    memo.logits(dict(batch))
    memo.logits(dict(batch))
    assert model.samples == 8
    shifted = {**batch, "inputs": batch["inputs"].roll(1, -1)}
    torch.testing.assert_close(memo.logits(shifted), LiveTeacher(model, num_outputs=10).logits(shifted))
    assert memo.computed == 16


def test_batches_hand_over_their_splits_fingerprints_and_the_memo_hashes_nothing(data, monkeypatch):
    import kdistill.teachers.memo as memo_module

    model = counted_teacher(data)
    memo = MemoizedTeacher(LiveTeacher(model, num_outputs=10))
    batches = Batches(data.train, 32, shuffle=True, fingerprints=True)
    monkeypatch.setattr(memo_module, "fingerprint", lambda inputs: pytest.fail("hashed a batch"))
    for epoch in range(2):
        batches.set_epoch(epoch)
        for batch in batches:
            memo.logits(batch)
    assert (memo.computed, memo.served) == (N, N)
    changed = next(iter(batches))  # a batch whose given fingerprints are not the stored ones
    changed["input_fingerprint"] = changed["input_fingerprint"] + 1
    memo.logits(changed)
    assert memo.computed == N + 32


def test_runs_given_the_same_teacher_share_its_outputs(data):
    source = LiveTeacher(counted_teacher(data), num_outputs=10)
    first, second = MemoizedTeacher(source), MemoizedTeacher(source)
    batch = {"inputs": data.train.inputs[:8], "labels": data.train.labels[:8], "index": torch.arange(8)}
    first.logits(dict(batch))
    second.logits(dict(batch))
    assert source.model.samples == 8 and second.served == 8


def test_an_ensemble_of_frozen_teachers_runs_once_and_one_live_member_keeps_it_live(data, tmp_path):
    """Every member frozen: the combined outputs are memoized (each member runs once per sample);
    a member in training mode makes the ensemble's outputs able to change, so it stays live."""
    cfg = image_config(tmp_path)
    models = [counted_teacher(data) for _ in range(2)]
    ensemble = EnsembleTeacher([LiveTeacher(m, num_outputs=10) for m in models], temperature=4.0)
    memo = default_source(cfg, ensemble, echo=False)
    assert memo.reuse
    batch = {"inputs": data.train.inputs[:8], "labels": data.train.labels[:8], "index": torch.arange(8)}
    first = memo.logits(dict(batch))
    torch.testing.assert_close(memo.logits(dict(batch)), first)
    torch.testing.assert_close(first, ensemble.logits(dict(batch)))
    assert [m.samples for m in models] == [16, 16] and memo.served == 8  # one memo pass + the direct call
    members = [LiveTeacher(m, num_outputs=10) for m in models]
    members[1].model.train()
    assert default_source(cfg, EnsembleTeacher(members), echo=False).reuse is False
