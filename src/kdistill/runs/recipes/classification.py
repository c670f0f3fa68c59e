"""Image (and tensor) classification: MNIST-style splits, MLP / CNN / bundled models,
augmentation in the batches, live or cached teachers."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from kdistill.checkpoint import atomic_write
from kdistill.data import Batches, build_data
from kdistill.errors import ConfigError
from kdistill.evaluate import compare
from kdistill.losses.objectives import build_objective
from kdistill.models import build_model, load_weights
from kdistill.runs.recipes.base import Plan, Recipe
from kdistill.runs.roles import trained_teacher_weights
from kdistill.tasks import ClassificationTask
from kdistill.teachers import LiveTeacher, TeacherSource, open_cache

WEIGHTS = "model.safetensors"


def save_state(model: nn.Module, path: Path) -> None:
    """A model's weights as safetensors, written atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))


class ClassificationRecipe(Recipe):
    def build_data(self, cfg):
        return build_data(cfg.data)

    def _model(self, spec, data) -> nn.Module:
        return build_model(spec, data.input_shape, data.num_classes)

    def teacher_needs_training(self, cfg) -> bool:
        spec = getattr(cfg.teacher, "model", None)
        return spec is not None and spec.arch != "pretrained" and spec.weights is None

    def teacher_model(self, cfg, data) -> nn.Module:
        """The teacher from its spec: bundled weights, a weights file, or this run's trained teacher."""
        spec = cfg.teacher.model if cfg.teacher is not None else None
        if spec is None:
            raise ConfigError("teacher.model is not set: name the teacher model (a cache teacher needs "
                              "it only to write the cache)")
        model = self._model(spec, data)
        if self.teacher_needs_training(cfg):
            load_weights(model, trained_teacher_weights(cfg, WEIGHTS))
        return model

    def _source(self, cfg, data, teacher) -> TeacherSource:
        if isinstance(teacher, TeacherSource):
            return teacher
        t = cfg.teacher
        if teacher is None and t.kind == "cache":
            return open_cache(cfg, data)
        model = teacher if teacher is not None else self.teacher_model(cfg, data)
        return LiveTeacher(model, num_outputs=data.num_classes, precision=getattr(t, "precision", "fp32"),
                           compile=getattr(t, "compile", False),
                           device=getattr(t, "device", None) or cfg.train.device, output_device=cfg.train.device)

    def plan(self, cfg, data, role, ctx, *, teacher=None, student=None) -> Plan:
        if student is None:
            spec = cfg.teacher.model if role == "teacher" else cfg.student
            student = self._model(spec.model_copy(update={"weights": None}) if role == "teacher" else spec, data)
        d = cfg.data
        train = Batches(data.train, d.batch_size, shuffle=True, seed=cfg.seed, augment=d.augment,
                        jitter_pixels=d.jitter_pixels, affine=(d.affine_degrees, d.affine_scale),
                        rank=ctx.rank, world_size=ctx.world_size)
        val = Batches(data.val, d.eval_batch_size) if data.val is not None else None
        source = self._source(cfg, data, teacher) if role == "distilled" else None
        return Plan(student, ClassificationTask(data.num_classes, cfg.train.device), train, val,
                    build_objective(cfg.loss, teacher=source is not None), teacher=source,
                    num_outputs=data.num_classes)

    def save(self, model, out_dir, data) -> None:
        save_state(model, Path(out_dir) / WEIGHTS)

    def load(self, cfg, data, role):
        if role == "teacher":
            if cfg.teacher is None or cfg.teacher.model is None:
                return None
            try:
                return self.teacher_model(cfg, data)
            except ConfigError:
                return None
        path = Path(cfg.train.output_dir) / role / WEIGHTS
        if not path.is_file():
            return None
        return load_weights(self._model(cfg.student.model_copy(update={"weights": None}), data), path)

    def compare(self, cfg, data, models):
        test = Batches(data.test, cfg.data.eval_batch_size)
        rows = compare(models, ClassificationTask(data.num_classes), test,
                       teacher="teacher" if "teacher" in models else None,
                       timing_sample=data.test.inputs[:cfg.data.eval_batch_size])
        names = data.class_names or [str(c) for c in range(data.num_classes)]
        return rows, {"split": "test", "samples": len(data.test), "class_names": names}

    def export_inputs(self, cfg, data, samples):
        test = data.test.subset(samples) if samples else data.test
        return test.inputs, test.labels
