"""The run pipeline written once for every task: train.max_steps stops and resumes a run, a
library call leaves the caller's global state alone, `compare` reuses a trained teacher, and an
LM config of four sections runs on the causal-LM defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from kdistill import runs
from kdistill.config import RunConfig
from kdistill.models import MLP

from lm_helpers import tiny_lm_config


def _tensors(path: Path) -> Path:
    """A tiny 3-class problem: the label is the largest of the first three features."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=g)
    y = x[:, :3].argmax(-1)
    save_file({"train_inputs": x[:64].contiguous(), "train_labels": y[:64].contiguous(),
               "test_inputs": x[64:].contiguous(), "test_labels": y[64:].contiguous()}, str(path))
    return path


def _raw(tmp_path: Path, teacher: dict | None = None, **train) -> dict:
    return {"name": "tiny", "seed": 0,
            "data": {"dataset": "tensors", "path": str(_tensors(tmp_path / "data.safetensors")),
                     "batch_size": 16, "eval_batch_size": 32},
            "teacher": teacher or {"kind": "live", "model": {"arch": "mlp", "hidden": [16]}, "epochs": 2},
            "student": {"arch": "mlp", "hidden": [8]},
            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
            "train": {"epochs": 3, "progress": False, "output_dir": str(tmp_path / "run"), **train}}


def _steps(role_dir: Path) -> list[int]:
    lines = (role_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "step" in r]


def test_max_steps_stops_the_run_and_a_resume_goes_on_to_a_larger_one(tmp_path):
    cfg = RunConfig.parse(_raw(tmp_path, max_steps=6))  # 4 steps an epoch, 12 in all without it
    result = runs.train(cfg)
    assert _steps(result.out_dir) == list(range(6))
    assert (result.out_dir / "checkpoint.pt").is_file() and (result.out_dir / "model.safetensors").is_file()
    assert result.history[-1]["step"] == 6 and result.history[-1]["epoch"] == pytest.approx(1.5)
    longer = RunConfig.parse(_raw(tmp_path, max_steps=10))
    resumed = runs.train(longer, resume=True)
    assert _steps(resumed.out_dir) == list(range(10))  # every step once, none repeated
    assert resumed.history[-1]["step"] == 10


def test_distill_from_python_leaves_the_callers_random_state_and_determinism(tmp_path):
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in MLP(8, [16], 3).state_dict().items()}, str(teacher))
    cfg = RunConfig.parse(_raw(tmp_path, {"kind": "live", "model": {"arch": "mlp", "hidden": [16],
                                                                    "weights": str(teacher)}},
                               epochs=1, deterministic=True))
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        torch.manual_seed(1234)
        state = torch.get_rng_state()
        runs.distill(cfg)  # seeds torch and turns deterministic algorithms on inside
        assert torch.equal(torch.get_rng_state(), state)
        assert torch.are_deterministic_algorithms_enabled() is False
    finally:
        torch.use_deterministic_algorithms(before)


def test_compare_after_train_role_teacher_reuses_the_teacher(tmp_path):
    from typer.testing import CliRunner

    from kdistill.cli import app

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(_raw(tmp_path, epochs=1)))
    cli = CliRunner()
    done = cli.invoke(app, ["train", str(config), "--role", "teacher"])
    assert done.exit_code == 0, done.output
    folder = tmp_path / "run" / "teacher"
    weights, summary = folder / "model.safetensors", folder / "summary.json"

    def seen(path: Path):
        return path.stat().st_mtime_ns, path.read_bytes()

    trained = seen(weights), seen(summary)
    fingerprint = json.loads(summary.read_text())["fingerprint"]
    done = cli.invoke(app, ["compare", str(config)])
    assert done.exit_code == 0, done.output
    assert (seen(weights), seen(summary)) == trained  # not retrained
    assert json.loads(summary.read_text())["fingerprint"] == fingerprint
    assert (tmp_path / "run" / "distilled" / "summary.json").is_file() and "distilled" in done.output
    # the reuse follows the config: a teacher trained for other epochs is trained again
    changed = _raw(tmp_path, epochs=1)
    changed["teacher"]["epochs"] = 3
    config.write_text(yaml.safe_dump(changed))
    done = cli.invoke(app, ["compare", str(config)])
    assert done.exit_code == 0, done.output
    assert json.loads(summary.read_text())["fingerprint"] != fingerprint
    assert json.loads(summary.read_text())["epochs"][-1]["epoch"] == 3


def test_a_four_section_lm_config_runs_on_the_lm_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output directory, runs/run, lands here
    cfg = RunConfig.parse(tiny_lm_config(tmp_path))
    assert (cfg.loss.temperature, cfg.loss.soft_weight, cfg.loss.hard_weight) == (1.0, 1.0, 0.0)
    assert cfg.optim.name == "adamw" and cfg.loss.divergence == "forward_kl"
    cfg.train.max_steps = 2
    result = runs.distill(cfg)
    assert result.out_dir == Path("runs/run/distilled")
    records = [json.loads(x) for x in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step" in r]
    assert len(steps) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert (steps[0]["temperature"], steps[0]["soft_weight"], steps[0]["hard_weight"]) == (1.0, 1.0, 0.0)
    assert "soft" in steps[0] and "hard" not in steps[0]  # the teacher alone, no cross-entropy term
    assert (result.out_dir / "model" / "model.safetensors").is_file()
