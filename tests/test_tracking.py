"""TensorBoard and MLflow runs written by the engine, read back with their own readers."""

import json

import pytest
import torch
from torch import nn

from kdistill.config import RunConfig
from kdistill.data import Batches
from kdistill.data.core import Split
from kdistill.engine import Engine
from kdistill.errors import ConfigError
from kdistill.evaluate import entropy_sum
from kdistill.tasks import ClassificationTask
from kdistill.teachers import LiveTeacher
from kdistill.tracking import open_loggers

STEP_KEYS = {"loss", "soft", "hard", "temperature", "soft_weight", "hard_weight", "lr", "teacher_entropy"}


def _engine(tmp_path, *, tensorboard=False, mlflow=False, loggers=None, epochs=2):
    cfg = RunConfig.parse({
        "name": "track-test", "loss": {"temperature": {"kind": "linear", "start": 4, "end": 2}},
        "optim": {"lr": 0.05},
        "train": {"epochs": epochs, "output_dir": str(tmp_path), "progress": False,
                  "log": {"tensorboard": tensorboard, "mlflow": mlflow}}})
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(48, 6, generator=g), torch.randint(0, 3, (48,), generator=g))
    torch.manual_seed(0)
    teacher = LiveTeacher(nn.Linear(6, 3), num_outputs=3)
    return Engine(cfg, nn.Linear(6, 3), ClassificationTask(3), Batches(split, 16, shuffle=True),
                  Batches(split, 48), teacher=teacher, out_dir=tmp_path / "distilled", num_outputs=3,
                  loggers=loggers)


class Recorder:
    def __init__(self):
        self.steps, self.evals, self.closed = [], [], None

    def log_step(self, record):
        self.steps.append(record)

    def log_eval(self, summary):
        self.evals.append(summary)

    def close(self, failed=False):
        self.closed = "failed" if failed else "ok"


def test_logger_hook_sees_every_jsonl_record(tmp_path):
    rec = Recorder()
    engine = _engine(tmp_path, loggers=[rec])
    first = next(iter(engine.train_batches))  # epoch 0's first batch, as the engine will draw it
    expected_entropy = entropy_sum(engine.teacher.logits(first), 4.0).item() / len(first["labels"])
    engine.fit()
    lines = [json.loads(x) for x in (tmp_path / "distilled" / "metrics.jsonl").read_text().splitlines()]
    assert rec.steps == [x for x in lines if "step" in x and "eval" not in x]
    assert rec.evals == [x["eval"] for x in lines if "eval" in x] and len(rec.evals) == 2
    assert STEP_KEYS <= set(rec.steps[0]) and rec.closed == "ok"
    assert [r["temperature"] for r in rec.steps][0] == 4.0
    assert rec.steps[0]["teacher_entropy"] == pytest.approx(expected_entropy, rel=1e-5)


def test_logger_closed_as_failed_when_training_stops(tmp_path):
    rec = Recorder()
    engine = _engine(tmp_path, loggers=[rec])
    engine.train_step = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        engine.fit()
    assert rec.closed == "failed"


def test_tensorboard_and_mlflow_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rec = Recorder()
    _engine(tmp_path, tensorboard=True, mlflow=True, loggers=[rec]).fit()

    events = EventAccumulator(str(tmp_path / "distilled" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {f"train/{k}" for k in STEP_KEYS} <= tags and "eval/val_accuracy" in tags
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in rec.steps]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rec.steps], rel=1e-6)
    temps = [e.value for e in events.Scalars("train/temperature")]
    assert temps[0] == 4.0 and temps[-1] < temps[0]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("track-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "distilled" and run.info.status == "FINISHED"
    assert run.data.params["loss.temperature.kind"] == "linear"
    assert STEP_KEYS <= set(run.data.metrics) and "eval_val_accuracy" in run.data.metrics
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "teacher_entropy"))
    assert [s for s, _ in history] == [r["step"] for r in rec.steps]
    assert [v for _, v in history] == pytest.approx([r["teacher_entropy"] for r in rec.steps])
    assert not (tmp_path / "mlruns").exists()


def test_missing_tracker_package_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    cfg = RunConfig.parse({"train": {"output_dir": str(tmp_path), "log": {"mlflow": True}}})
    with pytest.raises(ConfigError, match=r"train.log.mlflow .*kdistill\[track\]"):
        open_loggers(cfg, tmp_path)
