"""The text task: own-tokenizer inputs, intermediate terms through the objective."""

import pytest
import torch
from text_helpers import tiny_bert, toy_rows, write_csv, write_vocab

from kdistill.config import HFSpec, TextDataConfig, TextKDLoss
from kdistill.data.text import TextBatches, build_text_data, encode
from kdistill.errors import ConfigError
from kdistill.losses.objectives import build_objective
from kdistill.models.text import build_text_model, load_tokenizer
from kdistill.runs.recipes.text import layer_terms, uniform_layer_map
from kdistill.taps import WithConnectors
from kdistill.tasks.text import TextClassificationTask
from kdistill.teachers.text import TextTeacher


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("task")
    vocab = str(write_vocab(tmp))
    write_csv(tmp / "d.csv", toy_rows(48))
    tok = load_tokenizer(vocab)
    data = encode(build_text_data(TextDataConfig(dataset="csv", path=str(tmp / "d.csv"))), tok, 16, tok)
    torch.manual_seed(0)
    teacher = build_text_model(HFSpec(config=tiny_bert(32, 4, 4), tokenizer=vocab), 2, attentions=True)
    student = build_text_model(HFSpec(config=tiny_bert(16, 2, 4), tokenizer=vocab), 2, attentions=True)
    return data, teacher, student


def test_uniform_layer_map():
    assert uniform_layer_map(2, 4) == [(0, 0), (1, 2), (2, 4)]
    assert uniform_layer_map(3, 6) == [(0, 0), (1, 2), (2, 4), (3, 6)]


def test_objective_adds_hidden_and_attention_terms_and_trains_the_projections(setup):
    data, teacher, student = setup
    loss_cfg = TextKDLoss(hidden_weight=1.0, attention_weight=0.5)
    terms, projections = layer_terms(loss_cfg, student, teacher, torch.device("cpu"))
    hidden, attention = terms
    assert (hidden.name, hidden.teacher_hidden) == ("hidden", (0, 2, 4))  # pairs (0, 0), (1, 2), (2, 4)
    assert (attention.name, attention.teacher_attention) == ("attention", (2, 4))  # pairs (1, 2), (2, 4)
    assert set(projections) == {"s0_t0", "s1_t2", "s2_t4"}  # 16 -> 32 wide
    objective = build_objective(loss_cfg, terms)
    source = TextTeacher(teacher, num_outputs=2, hidden_layers=objective.teacher_hidden,
                         attention_layers=objective.teacher_attention)
    task = TextClassificationTask(2, hidden=True, attentions=True)
    assert set(objective.schedules()) == {"temperature", "soft_weight", "hard_weight", "hidden_weight",
                                          "attention_weight"}
    model = WithConnectors(student, {"projections": projections}).train()
    batch = next(iter(TextBatches(data.train, 8)))
    outputs = task.forward(model, batch)
    hp = {"temperature": 2.0, "soft_weight": 0.5, "hard_weight": 0.5, "hidden_weight": 1.0, "attention_weight": 0.5}
    loss, parts = objective(task, outputs, source.outputs(batch), batch, hp)
    assert set(parts) == {"soft", "hard", "hidden", "attention", "teacher_entropy"}
    expected = 0.5 * parts["soft"] + 0.5 * parts["hard"] + parts["hidden"] + 0.5 * parts["attention"]
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projections.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_attention_terms_need_matching_heads_and_valid_layers(setup, tmp_path):
    _, teacher, _ = setup
    student = build_text_model(HFSpec(config=tiny_bert(16, 2, 2), tokenizer=str(write_vocab(tmp_path))), 2)
    with pytest.raises(ConfigError, match="heads"):
        layer_terms(TextKDLoss(attention_weight=1.0), student, teacher, torch.device("cpu"))
    with pytest.raises(ConfigError, match="layer_map pair \\[3, 1\\]"):
        layer_terms(TextKDLoss(hidden_weight=1.0, layer_map=[(3, 1)]), student, teacher, torch.device("cpu"))


class Recorder(torch.nn.Module):
    """A teacher that records the ids it was fed."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, **_):
        self.seen.append(input_ids.clone())
        return torch.stack([input_ids.float().sum(-1), -input_ids.float().sum(-1)], -1) * self.w


def test_teacher_reads_its_own_tokens():
    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "teacher_input_ids": torch.tensor([[7, 8, 9, 10]]),
             "teacher_attention_mask": torch.ones(1, 4, dtype=torch.long), "index": torch.tensor([0]),
             "labels": torch.tensor([0])}
    rec = Recorder()
    TextTeacher(rec, num_outputs=2).logits(batch)
    assert torch.equal(rec.seen[0], batch["teacher_input_ids"])
    student_rec = Recorder()
    TextClassificationTask(2, inputs="teacher").forward(student_rec, batch)
    TextClassificationTask(2).forward(student_rec, batch)
    assert torch.equal(student_rec.seen[0], batch["teacher_input_ids"])
    assert torch.equal(student_rec.seen[1], batch["input_ids"])


def test_predictions_come_back_in_sample_order(setup):
    data, _, student = setup
    batches = TextBatches(data.test, 3)
    logits, labels = TextClassificationTask(2).predict(student, batches)
    assert torch.equal(labels, data.test.labels)
    first = next(iter(batches))
    with torch.no_grad():
        student.eval()
        direct = student(input_ids=first["input_ids"], attention_mask=first["attention_mask"]).logits
    torch.testing.assert_close(logits[first["index"]], direct, atol=1e-5, rtol=1e-5)


def test_teacher_built_without_eager_attention_still_gives_its_maps(setup, tmp_path):
    """A teacher model made for logits alone (the default attention kernel returns no maps) is
    switched to eager attention when a TextTeacher is asked for attention layers."""
    data, _, _ = setup
    model = build_text_model(HFSpec(config=tiny_bert(32, 4, 4), tokenizer=str(write_vocab(tmp_path))), 2)
    model.eval()
    teacher = TextTeacher(model, num_outputs=2, attention_layers=(1, 4))
    out = teacher.outputs(next(iter(TextBatches(data.train, 8))))
    maps = out.attention[4]
    assert maps.shape[:2] == (8, 4)
    torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]))
