"""Text runs end to end with tiny BERTs built from config: teacher fine-tuning (CLI), scratch,
distillation with hidden-state and attention terms, resume, evaluation, config errors."""

import json

import pytest
import yaml
from safetensors import safe_open
from text_helpers import text_config

from kdistill import runs
from kdistill.config import RunConfig
from kdistill.errors import ConfigError


def test_teacher_scratch_distill_and_compare(tmp_path):
    raw = text_config(tmp_path, loss={"temperature": 2.0, "soft_weight": 0.5, "hard_weight": 0.5,
                                      "hidden_weight": {"kind": "linear", "start": 1.0, "end": 0.1},
                                      "attention_weight": 0.5})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    from typer.testing import CliRunner

    from kdistill.cli import app

    result = CliRunner().invoke(app, ["train", str(tmp_path / "run.yaml"), "--role", "teacher"])
    assert result.exit_code == 0, result.output
    cfg = RunConfig.from_yaml(tmp_path / "run.yaml")
    runs.train(cfg, role="scratch")
    distilled = runs.distill(cfg)
    run = tmp_path / "run"
    log = [json.loads(line) for line in (run / "distilled" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r]
    assert {"hidden", "attention", "hidden_weight", "attention_weight"} <= set(steps[0])
    assert steps[0]["hidden_weight"] == 1.0 and steps[-1]["hidden_weight"] == pytest.approx(0.1)
    with safe_open(str(run / "distilled" / "model.safetensors"), "pt") as f:
        assert not any("projections" in k for k in f.keys())  # trained with the student, not exported
    summary = json.loads((run / "distilled" / "summary.json").read_text())
    assert summary["teacher"]["source"]["kind"] == "live_text" and summary["parameters"] < 37_000
    rows = {r.name: r for r in runs.evaluate_run(cfg)}
    assert set(rows) == {"teacher", "scratch", "distilled"}
    assert rows["teacher"].agreement == 1.0 and rows["distilled"].latency_ms_b1 > 0
    assert distilled.history[-1]["epoch"] == 2


def test_distillation_resumes_with_its_projections(tmp_path):
    raw = text_config(tmp_path, n=48, epochs=1,
                      loss={"soft_weight": 0.5, "hard_weight": 0.5, "hidden_weight": 1.0})
    cfg = RunConfig.parse(raw)
    runs.train(cfg, role="teacher")
    runs.distill(cfg)
    resumed = runs.distill(cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 2})}),
                           resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]


def test_distill_without_a_trained_teacher_says_how(tmp_path):
    cfg = RunConfig.parse(text_config(tmp_path, n=24))
    with pytest.raises(ConfigError, match="kdistill train CONFIG --role teacher"):
        runs.distill(cfg)


@pytest.mark.parametrize("change, message", [
    ({"task": "classification"}, "data.dataset 'csv' is a text_classification dataset: set task: text_classification"),
    ({"student": {"arch": "mlp"}}, "student.arch: mlp does not fit task text_classification"),
    ({"student": {"arch": "text_cnn", "tokenizer": "all-MiniLM-L6-v2"},
      "loss": {"hidden_weight": 1.0}}, "need an hf student and an hf teacher"),
    ({"student": {"arch": "hf", "config": {"hidden_size": 8}}}, "needs `tokenizer`"),
])
def test_config_errors_name_the_fix(tmp_path, change, message):
    raw = {**text_config(tmp_path, n=8), **change}
    with pytest.raises(ConfigError, match=message):
        RunConfig.parse(raw)


def test_text_cnn_student_distils_from_a_bert_teacher(tmp_path):
    raw = text_config(tmp_path, n=48, epochs=1)
    vocab = raw["teacher"]["model"]["tokenizer"]
    raw["student"] = {"arch": "text_cnn", "tokenizer": vocab, "embed_dim": 8, "channels": 4,
                      "init_from_teacher": True}
    cfg = RunConfig.parse(raw)
    runs.train(cfg, role="teacher")
    result = runs.distill(cfg)
    summary = json.loads((tmp_path / "run" / "distilled" / "summary.json").read_text())
    assert summary["init_from_teacher"] == "token embeddings" and result.history[-1]["epoch"] == 1


def test_token_level_terms_need_the_teachers_tokenizer(tmp_path):
    raw = text_config(tmp_path, n=24, loss={"hidden_weight": 1.0})
    other = tmp_path / "other"
    other.mkdir()
    vocab = (tmp_path / "vocab.txt").read_text().splitlines()
    (other / "vocab.txt").write_text("\n".join(vocab[:-1]) + "\n")  # one word fewer
    raw["student"]["tokenizer"] = str(other / "vocab.txt")
    raw["student"]["config"]["vocab_size"] = len(vocab)
    cfg = RunConfig.parse(raw)
    runs.train(cfg, role="teacher")
    with pytest.raises(ConfigError, match="teacher's tokenizer"):
        runs.distill(cfg)
    # soft targets alone only match class distributions: each model keeps its own tokenizer
    logits_only = cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"hidden_weight": 0.0}),
                                         "train": cfg.train.model_copy(update={"epochs": 1})})
    assert runs.distill(logits_only).history[-1]["epoch"] == 1


def test_unlabeled_texts_join_distillation_only(tmp_path):
    raw = text_config(tmp_path, n=100, epochs=1)
    raw["data"].update(limit_train=32, unlabeled_from_train=True)  # 80 training texts: 32 + 48
    cfg = RunConfig.parse(raw)
    runs.train(cfg, role="teacher")
    runs.train(cfg, role="scratch")
    runs.distill(cfg)
    labels_only = cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"soft_weight": 0.0, "hard_weight": 1.0})})
    runs.distill(labels_only, out_dir=tmp_path / "labels-only")
    steps = {}
    for role, folder in (("teacher", "run/teacher"), ("scratch", "run/scratch"), ("distilled", "run/distilled"),
                         ("labels-only", "labels-only")):
        log = (tmp_path / folder / "metrics.jsonl").read_text().splitlines()
        steps[role] = sum(1 for line in log if '"step"' in line and '"eval"' not in line)
    assert steps == {"teacher": 2, "scratch": 2, "distilled": 5, "labels-only": 2}  # batches of 16
    summary = json.loads((tmp_path / "run" / "distilled" / "summary.json").read_text())
    assert (summary["train_texts"], summary["unlabeled_texts"]) == (32, 48)
