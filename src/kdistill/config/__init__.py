"""One typed, validated config per run: the same object from YAML and from Python.

    cfg = RunConfig.from_yaml("configs/mnist_mlp.yaml")
    cfg = RunConfig(data={"dataset": "mnist"}, student={"arch": "mlp", "hidden": [800, 800]}, ...)

The config is discriminated on ``task``: each task owns its data, model and loss sections and
their defaults (``ClassificationConfig``, ``TextClassificationConfig``, ``CausalLMConfig``);
optimizer, training, teacher and generation sections are shared. ``RunConfig(...)`` and
``RunConfig.parse(raw)`` build the task's class. Unknown keys and bad values are refused with the
field's dotted name. A config never names code to import: models come from a fixed set of
architectures plus weight files, so a config file from someone else cannot execute anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar, Literal, Optional, get_args

import yaml
from pydantic import Field, ValidationError, model_validator

from kdistill import validate
from kdistill.config.base import Strict, format_validation_error
from kdistill.config.data import DataConfig, LMDataConfig, TextDataConfig
from kdistill.config.losses import KDLoss, LMLoss, TextKDLoss
from kdistill.config.models import (CNNSpec, HFCausalLMSpec, HFSpec, ImageModelSpec, MLPSpec, ModelSpec,
                                    PretrainedSpec, TextCNNSpec, TextModelSpec)
from kdistill.config.reasoning import CheckerConfig, ReasoningEvalConfig
from kdistill.config.training import (CacheTeacherConfig, GenerateConfig, LiveTeacherConfig, LogConfig,
                                      ServerTeacherConfig,
                                      OptimConfig, TeacherConfig, TrainConfig)
from kdistill.errors import ConfigError
from kdistill.losses.objectives import ever_nonzero

DEFAULT_TASK = "classification"


class RunConfig(Strict):
    """The sections every task shares; ``RunConfig(**fields)`` builds the class of ``task``."""

    name: str = "run"
    seed: int = Field(0, ge=-(2**63), lt=2**63, description="a 64-bit integer")
    teacher: Optional[TeacherConfig] = None
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generate: Optional[GenerateConfig] = None

    #: the model architectures this task trains (students and teachers), and its teacher kinds
    archs: ClassVar[tuple[str, ...]] = ()
    teacher_kinds: ClassVar[tuple[str, ...]] = ("live",)

    def __new__(cls, *args, **fields):
        if cls is RunConfig:
            cls = task_class(fields.get("task", DEFAULT_TASK))
        return super().__new__(cls)

    @classmethod
    def model_validate(cls, obj, **kwargs):
        if cls is RunConfig and isinstance(obj, dict):
            return task_class(obj.get("task", DEFAULT_TASK)).model_validate(obj, **kwargs)
        return super().model_validate(obj, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _dataset_fits_task(cls, raw):
        """A dataset of another task gets the task to set, not a list of this task's datasets."""
        if not isinstance(raw, dict) or cls is RunConfig:
            return raw
        data = raw.get("data")
        dataset = data.get("dataset") if isinstance(data, dict) else None
        mine = datasets_of(cls)
        if dataset is not None and dataset not in mine:
            for task, other in TASKS.items():
                if dataset in datasets_of(other):
                    raise ValueError(f"data.dataset {dataset!r} is a {task} dataset: set task: {task} "
                                     f"(task {cls.model_fields['task'].default} takes {', '.join(mine)})")
        return raw

    @model_validator(mode="after")
    def _teacher_fits_task(self):
        if self.teacher is not None and self.teacher.kind not in self.teacher_kinds:
            raise ValueError(f"teacher.kind {self.teacher.kind} is not available for task {self.task}: it "
                             f"takes {' or '.join(self.teacher_kinds)}")
        spec = getattr(self.teacher, "model", None)  # a cache may name no model
        if spec is not None and spec.arch not in self.archs:
            raise ValueError(f"teacher.model.arch {spec.arch} does not fit task {self.task}: it takes "
                             f"arch {' or '.join(self.archs)}")
        return self

    @model_validator(mode="after")
    def _nothing_ruins_training(self):
        """Numbers finite, learning rates > 0 and loss weights >= 0 over their schedules."""
        if type(self) is RunConfig:
            return self
        validate.check_finite(self.model_dump())
        validate.check_learning_rate(self.optim.lr, "optim.lr")
        if getattr(self.teacher, "optim", None) is not None:
            validate.check_learning_rate(self.teacher.optim.lr, "teacher.optim.lr")
        weights = {k: v for k, v in self.loss if k.endswith("_weight") and v is not None}
        validate.check_loss_weights(weights, need_active=self.teacher is not None)
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        raw = validate.read_yaml(path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of config fields at the top level")
        return cls.parse(raw, source=str(path))

    @classmethod
    def parse(cls, raw: dict, source: str = "config") -> "RunConfig":
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: a config is a mapping of fields, got {type(raw).__name__}")
        target = task_class(raw.get("task", DEFAULT_TASK), source) if cls is RunConfig else cls
        try:
            return target.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source, raw)) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def fingerprint(self, exclude: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> str:
        """A hash of what shapes the result: all fields, or ``only`` these dotted ones, less
        ``exclude`` (used to refuse resuming another run and to reuse trained roles)."""
        dump = self.model_dump(mode="json")
        if only:
            dump = {dotted: _get(dump, dotted) for dotted in only}
        for dotted in exclude:
            *parents, leaf = dotted.split(".")
            node = dump
            for p in parents:
                node = node.get(p) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(leaf, None)
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]


def _get(dump: dict, dotted: str):
    node = dump
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


class ClassificationConfig(RunConfig):
    """Images (or tensors) -> class logits."""

    task: Literal["classification"] = "classification"
    data: DataConfig = Field(default_factory=DataConfig)
    student: ImageModelSpec = Field(default_factory=MLPSpec)
    loss: KDLoss = Field(default_factory=KDLoss)
    archs: ClassVar[tuple[str, ...]] = ("mlp", "cnn", "pretrained")
    teacher_kinds: ClassVar[tuple[str, ...]] = ("live", "cache", "ensemble")


class TextClassificationConfig(RunConfig):
    """Texts -> class logits, each model reading its own tokenizer's tokens."""

    task: Literal["text_classification"] = "text_classification"
    data: TextDataConfig = Field(default_factory=TextDataConfig)
    student: TextModelSpec
    loss: TextKDLoss = Field(default_factory=TextKDLoss)
    archs: ClassVar[tuple[str, ...]] = ("hf", "text_cnn")

    @model_validator(mode="after")
    def _intermediate_needs_encoders(self):
        teacher_model = getattr(self.teacher, "model", None)
        if any(ever_nonzero(w) for w in (self.loss.hidden_weight, self.loss.attention_weight)) and not (
                self.student.arch == "hf" and teacher_model is not None and teacher_model.arch == "hf"):
            raise ValueError("loss.hidden_weight / loss.attention_weight need an hf student and an hf "
                             "teacher: set them to 0 otherwise")
        return self


def _lm_optim() -> OptimConfig:
    return OptimConfig(name="adamw", lr=1e-3, weight_decay=0.0, max_grad_norm=1.0)


class CausalLMConfig(RunConfig):
    """Token sequences -> next-token distributions; the student reads the teacher's tokens."""

    task: Literal["causal_lm"] = "causal_lm"
    data: LMDataConfig
    student: HFCausalLMSpec
    loss: LMLoss = Field(default_factory=LMLoss)
    optim: OptimConfig = Field(default_factory=_lm_optim)
    reasoning: Optional[ReasoningEvalConfig] = Field(
        None, description="generation-based evaluation: exact match on held-out problems in the comparison")
    archs: ClassVar[tuple[str, ...]] = ("hf_causal_lm",)
    teacher_kinds: ClassVar[tuple[str, ...]] = ("live", "cache", "server")


TASKS: dict[str, type[RunConfig]] = {c.model_fields["task"].default: c for c in
                                     (ClassificationConfig, TextClassificationConfig, CausalLMConfig)}


def task_class(task, source: str = "config") -> type[RunConfig]:
    if task not in TASKS:
        raise ConfigError(f"{source}: task: unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return TASKS[task]


def datasets_of(cls: type[RunConfig]) -> tuple[str, ...]:
    """The ``data.dataset`` names a task's data section takes (written once, in its Literal)."""
    return get_args(cls.model_fields["data"].annotation.model_fields["dataset"].annotation)


__all__ = ["CNNSpec", "CacheTeacherConfig", "CheckerConfig", "ReasoningEvalConfig", "CausalLMConfig", "ClassificationConfig", "DataConfig",
           "GenerateConfig", "HFCausalLMSpec", "HFSpec", "KDLoss", "LMDataConfig", "LMLoss",
           "LiveTeacherConfig", "LogConfig", "MLPSpec", "ModelSpec", "OptimConfig", "PretrainedSpec",
           "RunConfig", "ServerTeacherConfig", "TASKS", "TextCNNSpec", "TextClassificationConfig", "TextDataConfig",
           "TextKDLoss", "TrainConfig", "format_validation_error", "task_class"]
