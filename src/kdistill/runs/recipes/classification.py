"""Image (and tensor) classification: MNIST-style splits, MLP / CNN / bundled models,
augmentation in the batches, live, cached or ensemble teachers, and every method: the objective
the loss section names, with its feature terms (taps and connectors, checked before training) and
what it trains beside the student (connectors, a learned temperature) in a ``WithConnectors``."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from kdistill.checkpoint import atomic_write
from kdistill.data import Batches, build_data
from kdistill.errors import ConfigError
from kdistill.evaluate import compare
from kdistill.losses.feature_terms import check_paths, feature_terms
from kdistill.losses.objectives import build_objective
from kdistill.models import build_model, load_weights
from kdistill.runs.recipes.base import Plan, Recipe
from kdistill.runs.roles import trained_teacher_weights
from kdistill.tasks import ClassificationTask
from kdistill.taps import WithConnectors, unwrap
from kdistill.teachers import EnsembleTeacher, LiveTeacher, TeacherSource, cache_teacher, open_cache
from kdistill.teachers.memo import default_source

WEIGHTS = "model.safetensors"


def save_state(model: nn.Module, path: Path) -> None:
    """A model's weights as safetensors, written atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))



def _refuse_lm_fields(t) -> None:
    """The per-token record options of a language-model cache mean nothing to a classifier's."""
    set_ = [f for f, default in (("mass", 1.0), ("min_prob", 0.0), ("tail", "even"), ("codec", "raw"))
            if getattr(t, f) != default]
    if set_:
        raise ConfigError(f"teacher.{', teacher.'.join(set_)}: causal-LM cache options; a classifier's cache "
                          "keeps k classes and the tail mass per sample: remove them")

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

    def _live(self, cfg, model, data, t, feature_paths=()) -> LiveTeacher:
        return LiveTeacher(model, num_outputs=data.num_classes, precision=getattr(t, "precision", "fp32"),
                           compile=getattr(t, "compile", False), device=getattr(t, "device", None) or cfg.train.device,
                           output_device=cfg.train.device, feature_paths=feature_paths)

    def _member(self, cfg, data, member, i: int) -> TeacherSource:
        if member.kind == "cache":
            return open_cache(cfg.model_copy(update={"teacher": member}), data)
        spec = member.model
        if spec.arch != "pretrained" and spec.weights is None:
            raise ConfigError(f"teacher.members[{i}].model.weights is not set: an ensemble member needs its "
                              "trained weights (a file) or a bundled pretrained model")
        return self._live(cfg, self._model(spec, data), data, member)

    def cache_teacher(self, cfg, data):
        if cfg.teacher.server is not None:
            raise ConfigError("teacher.server (a served teacher) caches causal-LM top-k log-probabilities: a "
                              "classifier's cache runs teacher.model")
        _refuse_lm_fields(cfg.teacher)
        return cache_teacher(cfg, data, self.teacher_model(cfg, data))

    def _source(self, cfg, data, teacher) -> TeacherSource:
        if isinstance(teacher, TeacherSource):
            return default_source(cfg, teacher)
        t = cfg.teacher
        if teacher is None and t.kind == "ensemble":
            return default_source(cfg, EnsembleTeacher([self._member(cfg, data, m, i) for i, m in enumerate(t.members)],
                                                       t.weights, t.combine, t.temperature))
        if teacher is None and t.kind == "cache":
            _refuse_lm_fields(t)
            return open_cache(cfg, data)
        model = teacher if teacher is not None else self.teacher_model(cfg, data)
        paths = check_paths(model, cfg.loss.terms, "teacher") if cfg.loss.terms else ()
        return default_source(cfg, self._live(cfg, model, data, t, paths))

    def plan(self, cfg, data, role, ctx, *, teacher=None, student=None) -> Plan:
        if student is None:
            spec = cfg.teacher.model if role == "teacher" else cfg.student
            student = self._model(spec.model_copy(update={"weights": None}) if role == "teacher" else spec, data)
        d = cfg.data
        split = data.transfer_set() if role == "distilled" else data.train  # only a student has a teacher to label
        train = Batches(split, d.batch_size, shuffle=True, seed=cfg.seed, augment=d.augment,
                        jitter_pixels=d.jitter_pixels, affine=(d.affine_degrees, d.affine_scale),
                        rank=ctx.rank, world_size=ctx.world_size, fingerprints=role == "distilled")
        val = Batches(data.val, d.eval_batch_size) if data.val is not None else None
        task = ClassificationTask(data.num_classes, cfg.train.device)
        if role != "distilled":
            return Plan(student, task, train, val, build_objective(cfg.loss, teacher=False),
                        num_outputs=data.num_classes)
        source = self._source(cfg, data, teacher)
        reads_logits = cfg.loss.method != "kd" or cfg.loss.standardize or getattr(cfg.loss.temperature, "kind", "") \
            in ("per_sample", "learned")
        if reads_logits and getattr(source, "format", "dense") == "topk":
            raise ConfigError(f"loss.method {cfg.loss.method} (standardize / adaptive temperature) reads every "
                              "teacher logit: cache the teacher with format: dense, or run it live")
        probe = {"inputs": data.train.inputs[:2], "labels": data.train.labels[:2], "index": torch.arange(2)}
        terms, taps = feature_terms(cfg.loss.terms, student, source, probe, d.batch_size)
        objective = build_objective(cfg.loss, terms, steps_per_epoch=math.ceil(len(train) / cfg.train.grad_accum_steps),
                                    student_taps=taps)
        modules = objective.modules()
        model = WithConnectors(student, modules) if modules else student

        def exported() -> nn.Module:
            objective.close()  # the saved and returned student carries no hooks
            return unwrap(model)

        notes = {"train_samples": len(data.train), "unlabeled_samples": len(data.unlabeled)} \
            if data.unlabeled is not None else {}
        return Plan(model, task, train, val, objective, teacher=source, num_outputs=data.num_classes,
                    exported=exported, notes=notes)

    def save(self, model, out_dir, data) -> None:
        save_state(model, Path(out_dir) / WEIGHTS)

    def load_student(self, cfg, data, folder):
        path = Path(folder) / WEIGHTS
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
