"""The reasoning recipe end to end on tiny models through the pipeline: a config-built teacher
on the character tokenizer trained on reference solutions, rejection-sampled traces, a student
trained on them (sequence level) and distilled (token-level KD + on-policy), then the comparison
with generation-based exact match."""

import json
from pathlib import Path

import pytest

from kdistill.config import RunConfig
from kdistill.errors import ConfigError
from kdistill.reasoning.tasks import write_task

TINY = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 128}


def _raw(tmp_path, tasks, **extra):
    raw = {"name": "reason", "task": "causal_lm", "seed": 0,
           "data": {"dataset": "completions_jsonl", "path": str(tasks / "train.jsonl"), "completion_field": "solution",
                    "seq_len": 64, "batch_size": 4, "eval_batch_size": 8, "val_fraction": 0.2},
           "student": {"arch": "hf_causal_lm", "tokenizer": "chars", "config": TINY},
           "teacher": {"kind": "live", "model": {"arch": "hf_causal_lm", "tokenizer": "chars",
                                                 "config": {**TINY, "hidden_size": 32}}},
           "train": {"epochs": 1, "max_steps": 2, "progress": False, "deterministic": False,
                     "output_dir": str(tmp_path / "teacher_run")},
           "reasoning": {"test": str(tasks / "test.jsonl"), "test_hard": str(tasks / "test_hard.jsonl"),
                         "limit": 3, "max_new_tokens": 8, "pass_k": 1, "samples": 2}}
    raw.update(extra)
    return raw


def test_teacher_traces_students_and_exact_match_table(tmp_path, monkeypatch):
    from kdistill import runs

    # report.html reads classifier rows only so far (report/load.py): this test is about comparison.json
    monkeypatch.setattr("kdistill.runs.compare.write_report", lambda out: None)

    tasks = tmp_path / "tasks"
    write_task("add", tasks, seed=0, train=30, test=6)
    traces = tmp_path / "traces.jsonl"
    teacher_cfg = RunConfig.parse(_raw(tmp_path, tasks, generate={
        "prompts": str(tasks / "train.jsonl"), "output": str(traces), "samples": 2, "do_sample": True,
        "keep": "all", "max_new_tokens": 8, "batch_size": 4, "limit": 10}))
    teacher = runs.train(teacher_cfg, role="teacher")
    assert json.loads((teacher.out_dir / "model" / "tokenizer_config.json").read_text())  # saved with the model
    runs.generate(teacher_cfg, progress=False)
    summary = json.loads((tmp_path / "traces.summary.json").read_text())
    assert summary["prompts"] == 10 and summary["samples_drawn"] == 20 and summary["kept"] == 20
    weights = teacher.out_dir / "model" / "model.safetensors"
    raw = _raw(tmp_path, tasks)
    raw["data"].update(path=str(traces), completion_field="completion")
    raw["teacher"]["model"]["weights"] = str(weights)
    raw["train"]["output_dir"] = str(tmp_path / "student_run")
    raw["loss"] = {"soft_weight": 0.5, "hard_weight": 0.5, "on_policy_fraction": 0.5, "on_policy_max_new_tokens": 4}
    cfg = RunConfig.parse(raw)
    runs.train(cfg)
    runs.distill(cfg)
    rows = runs.evaluate_run(cfg)
    assert [r.name for r in rows] == ["teacher", "scratch", "distilled"]
    assert rows[0].parameters > rows[1].parameters == rows[2].parameters
    for r in rows:
        assert 0 <= r.exact_match <= 1 and 0 <= r.exact_match_hard <= 1 and 0 <= r.pass_at_k <= 1
        assert 1 <= r.reasoning_tokens <= 8
    saved = json.loads((Path(cfg.train.output_dir) / "comparison.json").read_text())
    assert saved["reasoning"]["problems"] == {"test": 3, "test_hard": 3}
    assert [m["exact_match"] for m in saved["models"]] == [r.exact_match for r in rows]


def test_tokenizer_choice_is_checked(tmp_path):
    from kdistill.runs.recipes.causal_lm import CausalLMRecipe

    tasks = tmp_path / "tasks"
    raw = _raw(tmp_path, tasks)
    assert len(CausalLMRecipe().tokenizer(RunConfig.parse(raw))) < 64
    raw["student"].pop("tokenizer")
    raw["teacher"]["model"].pop("tokenizer")
    with pytest.raises(ConfigError, match="tokenizer: chars"):
        CausalLMRecipe().tokenizer(RunConfig.parse(raw))
    with pytest.raises(ConfigError, match="tokenizer applies to a model built from config"):
        RunConfig.parse({**raw, "student": {"arch": "hf_causal_lm", "source": "x", "tokenizer": "chars"}})


def test_reasoning_configs_parse():
    paths = sorted(Path(__file__).parent.parent.glob("configs/reasoning_*.yaml"))
    assert len(paths) >= 7
    for path in paths:
        cfg = RunConfig.from_yaml(path)
        assert cfg.task == "causal_lm" and cfg.reasoning is not None
