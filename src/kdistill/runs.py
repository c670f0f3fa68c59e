"""Runs: wire config -> data -> teacher source -> engine -> saved student.

``train`` fits a model on hard labels alone (a teacher, or the student-from-scratch baseline);
``distill`` fits the student to the teacher's soft targets plus the labels. Both take the same
config, so the baseline and the distilled student differ only in the teacher.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from kdistill.checkpoint import atomic_write, atomic_write_text
from kdistill.config import RunConfig
from kdistill.data import Batches, DataSplits, build_data
from kdistill.engine import Engine
from kdistill.errors import ConfigError
from kdistill.evaluate import ModelReport, compare, rows_as_dicts
from kdistill.models import build_model, count_parameters, load_weights
from kdistill.tasks import ClassificationTask
from kdistill.teachers import LiveTeacher, TeacherSource

STUDENT_WEIGHTS = "model.safetensors"


@dataclass
class RunResult:
    out_dir: Path
    model: nn.Module
    history: list[dict]
    data: DataSplits


def batches(cfg: RunConfig, data: DataSplits) -> tuple[Batches, Batches | None]:
    d = cfg.data
    train = Batches(data.train, d.batch_size, shuffle=True, seed=cfg.seed,
                    augment=d.augment, jitter_pixels=d.jitter_pixels)
    val = Batches(data.val, d.eval_batch_size) if data.val is not None else None
    return train, val


ROLES = ("teacher", "scratch", "distilled")


def role_dir(cfg: RunConfig, role: str) -> Path:
    """Where a run's teacher, scratch student and distilled student live."""
    return Path(cfg.train.output_dir) / role


def teacher_model(cfg: RunConfig, data: DataSplits) -> nn.Module:
    """The teacher from its spec: bundled weights, a weights file, or this run's trained teacher."""
    if cfg.teacher is None:
        raise ConfigError("this needs a teacher: add a `teacher:` section to the config")
    spec = cfg.teacher.model
    model = build_model(spec, data.input_shape, data.num_classes)
    if spec.weights is None and spec.arch != "pretrained":
        trained = role_dir(cfg, "teacher") / STUDENT_WEIGHTS
        if not trained.is_file():
            raise ConfigError(f"teacher.model has no weights and {trained} does not exist: train it "
                              "first with `kdistill train CONFIG --role teacher`, or set teacher.model.weights")
        load_weights(model, trained)
    return model


def build_teacher(cfg: RunConfig, data: DataSplits) -> TeacherSource:
    t = cfg.teacher
    model = teacher_model(cfg, data)
    return LiveTeacher(model, num_outputs=data.num_classes, precision=t.precision, compile=t.compile,
                       device=t.device or cfg.train.device, output_device=cfg.train.device)


def save_model(model: nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))


def _run(cfg: RunConfig, *, teacher: TeacherSource | None, student: nn.Module | None,
         data: DataSplits | None, resume: bool, out_dir: Path | None) -> RunResult:
    data = data or build_data(cfg.data)
    if student is None:
        student = build_model(cfg.student, data.input_shape, data.num_classes)
    out_dir = Path(out_dir or cfg.train.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
    torch.manual_seed(cfg.seed)
    train_batches, val_batches = batches(cfg, data)
    task = ClassificationTask(data.num_classes, cfg.train.device)
    engine = Engine(cfg, student, task, train_batches, val_batches, teacher=teacher,
                    out_dir=out_dir, num_outputs=data.num_classes)
    history = engine.fit(resume=resume)
    save_model(student, out_dir / STUDENT_WEIGHTS)
    summary = {"name": cfg.name, "mode": "distill" if teacher else "train",
               "parameters": count_parameters(student), "epochs": history,
               "teacher": teacher.describe() if teacher else None}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return RunResult(out_dir, student, history, data)


def train(cfg: RunConfig, *, role: str = "scratch", student: nn.Module | None = None,
          data: DataSplits | None = None, resume: bool = False, out_dir: Path | None = None) -> RunResult:
    """Fit a model on hard labels only: the student-from-scratch baseline (``role="scratch"``)
    or the config's teacher architecture (``role="teacher"``)."""
    if cfg.task == "causal_lm":
        from kdistill import lm_runs

        return lm_runs.train(cfg, role=role, resume=resume, out_dir=out_dir)
    if role not in ("scratch", "teacher"):
        raise ConfigError(f"role must be 'scratch' or 'teacher', got {role!r}")
    data = data or build_data(cfg.data)
    if role == "teacher":
        if cfg.teacher is None:
            raise ConfigError("--role teacher needs a `teacher:` section in the config")
        if cfg.teacher.model.arch == "pretrained":
            raise ConfigError("teacher.model is a bundled pretrained model: it needs no training")
        student = build_model(cfg.teacher.model.model_copy(update={"weights": None}),
                              data.input_shape, data.num_classes)
    return _run(cfg, teacher=None, student=student, data=data, resume=resume,
                out_dir=out_dir or role_dir(cfg, role))


def distill(cfg: RunConfig, *, teacher: nn.Module | TeacherSource | None = None,
            student: nn.Module | None = None, data: DataSplits | None = None,
            resume: bool = False, out_dir: Path | None = None) -> RunResult:
    """Distil the teacher (config's, or a given module / source) into the student."""
    if cfg.task == "causal_lm":
        from kdistill import lm_runs

        return lm_runs.distill(cfg, resume=resume, out_dir=out_dir)
    data = data or build_data(cfg.data)
    if teacher is None:
        teacher = build_teacher(cfg, data)
    elif isinstance(teacher, nn.Module):
        teacher = LiveTeacher(teacher, num_outputs=data.num_classes, device=cfg.train.device)
    return _run(cfg, teacher=teacher, student=student, data=data, resume=resume,
                out_dir=out_dir or role_dir(cfg, "distilled"))


def load_role(cfg: RunConfig, role: str, data: DataSplits) -> nn.Module | None:
    """A trained model of this run, or None when that role has not been run."""
    if role == "teacher":
        try:
            return teacher_model(cfg, data)
        except ConfigError:
            return None
    path = role_dir(cfg, role) / STUDENT_WEIGHTS
    if not path.is_file():
        return None
    return load_weights(build_model(cfg.student.model_copy(update={"weights": None}),
                                    data.input_shape, data.num_classes), path)


def evaluate_run(cfg: RunConfig, data: DataSplits | None = None) -> list[ModelReport]:
    """Compare the run's teacher, scratch and distilled students on the test split."""
    if cfg.task == "causal_lm":
        from kdistill import lm_runs

        return lm_runs.evaluate_run(cfg)
    data = data or build_data(cfg.data)
    models = {role: m for role in ROLES if (m := load_role(cfg, role, data)) is not None}
    if not models:
        raise ConfigError(f"nothing to evaluate under {cfg.train.output_dir}: run `kdistill train` "
                          "and `kdistill distill` with this config first")
    test = Batches(data.test, cfg.data.eval_batch_size)
    rows = compare(models, ClassificationTask(data.num_classes), test,
                   teacher="teacher" if "teacher" in models else None,
                   timing_sample=data.test.inputs[:1])
    atomic_write_text(Path(cfg.train.output_dir) / "comparison.json",
                      json.dumps({"split": "test", "models": rows_as_dicts(rows)}, indent=2))
    return rows


def run_comparison(cfg: RunConfig) -> list[ModelReport]:
    """The whole proof: (train the teacher if needed), the scratch student, the distilled
    student, then the comparison on the test split."""
    if cfg.task == "causal_lm":
        train(cfg, role="scratch")
        distill(cfg)
        return evaluate_run(cfg)
    data = build_data(cfg.data)
    if cfg.teacher is not None and cfg.teacher.model.arch != "pretrained" and cfg.teacher.model.weights is None:
        train(cfg, role="teacher", data=data)
    train(cfg, role="scratch", data=data)
    distill(cfg, data=data)
    return evaluate_run(cfg, data)
