"""Runs: wire config -> data -> teacher source -> engine -> saved student.

``train`` fits a model on hard labels alone (a teacher, or the student-from-scratch baseline);
``distill`` fits the student to the teacher's soft targets plus the labels. Both take the same
config, so the baseline and the distilled student differ only in the teacher.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from kdistill import distributed
from kdistill.checkpoint import atomic_write, atomic_write_text
from kdistill.config import RunConfig
from kdistill.data import Batches, DataSplits, build_data
from kdistill.engine import METRICS, Engine
from kdistill.errors import ConfigError
from kdistill.evaluate import ModelReport, aggregate_rows, compare, rows_as_dicts
from kdistill.models import build_model, count_parameters, load_weights
from kdistill.precision import precision_record
from kdistill.tasks import ClassificationTask
from kdistill.teachers import LiveTeacher, TeacherSource, cache_teacher, open_cache
from kdistill.teachers.memo import default_source

STUDENT_WEIGHTS = "model.safetensors"
COMPARISON = "comparison.json"


@dataclass
class RunResult:
    out_dir: Path
    model: nn.Module
    history: list[dict]
    data: DataSplits


def batches(cfg: RunConfig, data: DataSplits) -> tuple[Batches, Batches | None]:
    """Training batches (this rank's shard under torchrun: data.batch_size is per process) and
    validation batches."""
    d, ctx = cfg.data, distributed.current()
    train = Batches(data.train, d.batch_size, shuffle=True, seed=cfg.seed,
                    augment=d.augment, jitter_pixels=d.jitter_pixels,
                    affine=(d.affine_degrees, d.affine_scale),
                    rank=ctx.rank, world_size=ctx.world_size)
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
    if spec is None:
        raise ConfigError("teacher.model is not set: name the teacher model (a cache teacher needs it "
                          "only to write the cache)")
    model = build_model(spec, data.input_shape, data.num_classes)
    if spec.weights is None and spec.arch != "pretrained":
        load_trained_teacher(cfg, model)
    return model


def load_trained_teacher(cfg: RunConfig, model: nn.Module) -> nn.Module:
    """Load the weights that ``kdistill train --role teacher`` left in this run's teacher folder."""
    trained = role_dir(cfg, "teacher") / STUDENT_WEIGHTS
    if not trained.is_file():
        raise ConfigError(f"teacher.model has no weights and {trained} does not exist: train it "
                          "first with `kdistill train CONFIG --role teacher`, or set teacher.model.weights")
    return load_weights(model, trained)


def build_teacher(cfg: RunConfig, data: DataSplits) -> TeacherSource:
    t = cfg.teacher
    if t.kind == "cache":
        return open_cache(cfg, data)
    model = teacher_model(cfg, data)
    return LiveTeacher(model, num_outputs=data.num_classes, precision=t.precision, compile=t.compile,
                       device=t.device or cfg.train.device, output_device=cfg.train.device)


def save_model(model: nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))


def _run(cfg: RunConfig, *, teacher: TeacherSource | None, student: nn.Module | None,
         data: DataSplits | None, resume: bool, out_dir: Path | None) -> RunResult:
    with distributed.session(cfg.train.device) as ctx:  # joins torchrun's process group, if any
        return _run_here(cfg, teacher=teacher, student=student, data=data, resume=resume,
                         out_dir=out_dir, main=ctx.is_main)


def _run_here(cfg: RunConfig, *, teacher: TeacherSource | None, student: nn.Module | None,
              data: DataSplits | None, resume: bool, out_dir: Path | None, main: bool) -> RunResult:
    data = data or build_data(cfg.data)
    torch.manual_seed(cfg.seed)  # before the student's initialisation: same seed, same student
    if student is None:
        student = build_model(cfg.student, data.input_shape, data.num_classes)
    out_dir = Path(out_dir or cfg.train.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if main:
        atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
    torch.manual_seed(cfg.seed)
    train_batches, val_batches = batches(cfg, data)
    task = ClassificationTask(data.num_classes, cfg.train.device)
    engine = Engine(cfg, student, task, train_batches, val_batches, teacher=teacher,
                    out_dir=out_dir, num_outputs=data.num_classes)
    history = engine.fit(resume=resume)
    if main:
        save_model(student, out_dir / STUDENT_WEIGHTS)
        summary = {"name": cfg.name, "mode": "distill" if teacher else "train",
                   "parameters": count_parameters(student), "epochs": history,
                   "teacher": teacher.describe() if teacher else None,
                   "precision": precision_record(cfg), "processes": engine.dist.world_size}
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return RunResult(out_dir, student, history, data)


def train(cfg: RunConfig, *, role: str = "scratch", student: nn.Module | None = None,
          data: DataSplits | None = None, resume: bool = False, out_dir: Path | None = None) -> RunResult:
    """Fit a model on hard labels only: the student-from-scratch baseline (``role="scratch"``)
    or the config's teacher architecture (``role="teacher"``)."""
    if cfg.task == "text_classification":
        from kdistill import runs_text

        return runs_text.train(cfg, role=role, student=student, data=data, resume=resume, out_dir=out_dir)
    if cfg.task == "causal_lm":
        from kdistill import lm_runs

        return lm_runs.train(cfg, role=role, resume=resume, out_dir=out_dir)
    if role not in ("scratch", "teacher"):
        raise ConfigError(f"role must be 'scratch' or 'teacher', got {role!r}")
    data = data or build_data(cfg.data)
    if role == "teacher":
        if cfg.teacher is None or cfg.teacher.model is None:
            raise ConfigError("--role teacher needs a `teacher:` section with teacher.model in the config")
        if cfg.teacher.model.arch == "pretrained":
            raise ConfigError("teacher.model is a bundled pretrained model: it needs no training")
        torch.manual_seed(cfg.seed)  # the teacher's initial weights follow the seed too
        student = build_model(cfg.teacher.model.model_copy(update={"weights": None}),
                              data.input_shape, data.num_classes)
    return _run(cfg, teacher=None, student=student, data=data, resume=resume,
                out_dir=out_dir or role_dir(cfg, role))


def distill(cfg: RunConfig, *, teacher: nn.Module | TeacherSource | None = None,
            student: nn.Module | None = None, data: DataSplits | None = None,
            resume: bool = False, out_dir: Path | None = None) -> RunResult:
    """Distil the teacher (config's, or a given module / source) into the student."""
    if cfg.task == "text_classification":
        from kdistill import runs_text

        return runs_text.distill(cfg, teacher=teacher, student=student, data=data, resume=resume,
                                 out_dir=out_dir)
    if cfg.task == "causal_lm":
        from kdistill import lm_runs

        return lm_runs.distill(cfg, resume=resume, out_dir=out_dir)
    data = data or build_data(cfg.data)
    if teacher is None:
        teacher = build_teacher(cfg, data)
    elif isinstance(teacher, nn.Module):
        teacher = LiveTeacher(teacher, num_outputs=data.num_classes, device=cfg.train.device)
    teacher = default_source(cfg, teacher)  # a frozen teacher on fixed inputs runs once per sample
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
    """Compare the run's teacher, scratch and distilled students on the test split; write
    comparison.json (everything the report plots, so it never re-trains) and report.html."""
    if cfg.task == "text_classification":
        from kdistill import runs_text

        return runs_text.evaluate_run(cfg, data)
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
                   timing_sample=data.test.inputs[:cfg.data.eval_batch_size])
    write_comparison(cfg, rows, len(data.test), data.class_names or [str(c) for c in range(data.num_classes)])
    return rows


def write_comparison(cfg: RunConfig, rows: list[ModelReport], samples: int, class_names: list[str]) -> None:
    """comparison.json (everything the report plots) and report.html in the run directory."""
    out = Path(cfg.train.output_dir)
    logs = {r.name: f"{r.name}/{METRICS}" if (out / r.name / METRICS).is_file() else None for r in rows}
    atomic_write_text(out / "config.yaml", cfg.to_yaml())
    atomic_write_text(out / COMPARISON, json.dumps({
        "name": cfg.name, "seed": cfg.seed, "split": "test", "samples": samples,
        "class_names": class_names, "logs": logs, "models": rows_as_dicts(rows)}, indent=2))
    _write_report(out)


def _write_report(out: Path) -> None:
    """The HTML report beside comparison.json; without matplotlib (the `report` extra) a note."""
    if importlib.util.find_spec("matplotlib") is None:
        print(f"note: no report.html in {out}: install kdistill[report] for matplotlib", file=sys.stderr)
        return
    from kdistill.report import write_report

    write_report(out)


def run_comparison(cfg: RunConfig) -> list[ModelReport]:
    """The whole proof: (train the teacher if needed), the scratch student, the distilled
    student, then the comparison on the test split."""
    if cfg.task == "text_classification":
        from kdistill import runs_text

        return runs_text.run_comparison(cfg)
    if cfg.task == "causal_lm":
        train(cfg, role="scratch")
        distill(cfg)
        return evaluate_run(cfg)
    data = build_data(cfg.data)
    spec = cfg.teacher.model if cfg.teacher is not None else None
    trained = spec is not None and spec.arch != "pretrained" and spec.weights is None
    if trained:
        train(cfg, role="teacher", data=data)
    if cfg.teacher is not None and cfg.teacher.kind == "cache" and (trained or not Path(cfg.teacher.path).exists()):
        cache_teacher(cfg, data)  # a freshly trained teacher makes any older cache stale
    train(cfg, role="scratch", data=data)
    distill(cfg, data=data)
    return evaluate_run(cfg, data)


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The config of one seed of a multi-seed run: its own seed and OUT/seed_<seed>/."""
    one = cfg.model_copy(deep=True)
    one.seed = seed
    one.train.output_dir = Path(cfg.train.output_dir) / f"seed_{seed}"
    return one


def run_seeds(cfg: RunConfig, seeds: int) -> list[dict]:
    """``run_comparison`` over seeds cfg.seed, cfg.seed+1, ... in OUT/seed_<k>/; OUT/comparison.json
    and OUT/report.html give each metric of the last-epoch models as mean ± std over the seeds."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    configs = [seed_config(cfg, cfg.seed + k) for k in range(seeds)]
    runs = [run_comparison(c) for c in configs]
    out = Path(cfg.train.output_dir)
    aggregate = aggregate_rows(runs)
    atomic_write_text(out / "config.yaml", cfg.to_yaml())
    atomic_write_text(out / COMPARISON, json.dumps({
        "name": cfg.name, "split": "test", "seeds": [c.seed for c in configs],
        "runs": [Path(c.train.output_dir).name for c in configs], "epoch": "last",
        "models": aggregate}, indent=2))
    _write_report(out)
    return aggregate
