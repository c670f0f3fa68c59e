"""Experiment trackers the engine feeds beside its always-on metrics.jsonl.

A logger is any object with ``log_step(record)``, ``log_eval(summary)`` and ``close(failed)``; the
engine calls them with the same records it writes to the JSONL file (loss terms, temperature,
weights, learning rate, teacher entropy; per-epoch validation). ``train.log`` in the config
turns on the two built in here:

- TensorBoard: event files in ``<role dir>/tensorboard`` (``tensorboard --logdir RUN``);
- MLflow: one run per role in the local store ``sqlite:///<output_dir>/mlflow.db``, experiment
  named after the config (``mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db``).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Protocol

from kdistill.errors import ConfigError


class StepLogger(Protocol):
    def log_step(self, record: dict) -> None: ...

    def log_eval(self, summary: dict) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def numeric(record: dict) -> dict[str, float]:
    """The record's numbers (flags such as ``skipped`` and the step counters left out)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch")}


def _require(package: str, field: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"train.log.{field} is on but the package {package} is not installed: "
                          "`pip install 'kdistill[track]'`, or set it to false")


class TensorBoardLogger:
    """Scalars under ``train/<name>`` per optimizer step and ``eval/<name>`` per epoch."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log_step(self, record: dict) -> None:
        for k, v in numeric(record).items():
            self.writer.add_scalar(f"train/{k}", v, record["step"])

    def log_eval(self, summary: dict) -> None:
        for k, v in numeric(summary).items():
            self.writer.add_scalar(f"eval/{k}", v, summary["step"])

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MLflowLogger:
    """One MLflow run: the flattened config as params, step metrics batched (a sqlite write per
    step would cost more than the step), per-epoch metrics prefixed ``eval_``."""

    BATCH = 1000  # MLflow's limit of metrics per log_batch call

    def __init__(self, store: Path, experiment: str, run_name: str, params: dict[str, str]):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        store.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=f"sqlite:///{store.resolve()}")
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=(store.parent / "mlartifacts").resolve().as_uri())
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        self.pending: list = []

    def _add(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(prefix + k, v, now, step) for k, v in values.items()]
        if len(self.pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), self.BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + self.BATCH])
        self.pending = []

    def log_step(self, record: dict) -> None:
        self._add(numeric(record), record["step"])

    def log_eval(self, summary: dict) -> None:
        self._add(numeric(summary), summary["step"], prefix="eval_")
        self.flush()

    def close(self, failed: bool = False) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def flat_params(dump: dict, prefix: str = "") -> dict[str, str]:
    """A nested config dump as dotted keys with string values (MLflow params)."""
    out = {}
    for k, v in dump.items():
        if isinstance(v, dict):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def open_loggers(cfg, out_dir: Path) -> list[StepLogger]:
    """The trackers ``cfg.train.log`` turns on, for a run writing to ``out_dir``."""
    log, loggers = cfg.train.log, []
    root = Path(cfg.train.output_dir)
    out_dir = Path(out_dir)
    if log.tensorboard:
        _require("tensorboard", "tensorboard")
        loggers.append(TensorBoardLogger(out_dir / "tensorboard"))
    if log.mlflow:
        _require("mlflow", "mlflow")
        try:
            run_name = out_dir.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            run_name = out_dir.name
        loggers.append(MLflowLogger(root / "mlflow.db", cfg.name, run_name or cfg.name,
                                    flat_params(cfg.model_dump(mode="json"))))
    return loggers
