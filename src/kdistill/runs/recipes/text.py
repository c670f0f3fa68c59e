"""Text classification: each model reads its own tokenizer's tokens (the teacher source the
teacher's, the student the student's); hidden-state and attention terms for transformer
students; unlabelled transfer texts for the soft targets; DistilBERT-style initialisation.

``init_from_teacher`` applies to distilled students only, so the scratch baseline is the same
architecture from its own initialisation.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from kdistill.data.text import TextBatches, build_text_data, encode, pad, tokenize
from kdistill.errors import ConfigError, TrainingError
from kdistill.evaluate import compare
from kdistill.losses import attention_kl, hidden_state_mse
from kdistill.losses.objectives import Term, build_objective, ever_nonzero
from kdistill.models import load_weights
from kdistill.models.text import build_text_model, encoder_of, init_from_teacher, load_tokenizer
from kdistill.runs.recipes.base import Plan, Recipe
from kdistill.runs.recipes.classification import WEIGHTS, save_state
from kdistill.runs.roles import trained_teacher_weights
from kdistill.taps import WithConnectors, unwrap
from kdistill.tasks.text import TextClassificationTask
from kdistill.teachers.base import TeacherSource
from kdistill.teachers.memo import default_source
from kdistill.teachers.text import TextTeacher


def tokenizer_for(spec):
    return load_tokenizer(spec.tokenizer or spec.name_or_path,
                          trust_remote_code=getattr(spec, "trust_remote_code", False))


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Embeddings to embeddings, then student layer i to teacher layer round(i * T / S)."""
    return [(0, 0)] + [(i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]


def _same_tokens(batch: dict, device) -> torch.Tensor:
    """The student's attention mask, after checking the teacher read the same tokens."""
    mask = batch["attention_mask"].to(device)
    teacher_mask = batch["teacher_attention_mask"].to(device)
    if teacher_mask.shape != mask.shape or not torch.equal(teacher_mask, mask):
        raise TrainingError("hidden-state and attention terms match tokens one to one: the student "
                            "must use the teacher's tokenizer (student.tokenizer)")
    return mask


def layer_terms(loss_cfg, student: nn.Module, teacher: nn.Module, device) -> tuple[list[Term], nn.ModuleDict]:
    """The kd objective's hidden-state (TinyBERT: MSE through a learned projection when widths
    differ) and attention-map (MiniLM: KL) terms on the pairs of ``loss.layer_map``, each the
    mean over its pairs so its weight does not depend on depth; and the projections to train."""
    hidden_on, attention_on = ever_nonzero(loss_cfg.hidden_weight), ever_nonzero(loss_cfg.attention_weight)
    projections = nn.ModuleDict()
    if not (hidden_on or attention_on):
        return [], projections
    s_cfg, t_cfg = encoder_of(student).config, encoder_of(teacher).config
    s_n, t_n = s_cfg.num_hidden_layers, t_cfg.num_hidden_layers
    pairs = [tuple(p) for p in loss_cfg.layer_map] if loss_cfg.layer_map else uniform_layer_map(s_n, t_n)
    for s, t in pairs:
        if not (0 <= s <= s_n and 0 <= t <= t_n):
            raise ConfigError(f"loss.layer_map pair [{s}, {t}]: the student has hidden states 0..{s_n} "
                              f"and the teacher 0..{t_n} (0 = embeddings)")
    terms = []
    if hidden_on:
        if s_cfg.hidden_size != t_cfg.hidden_size:
            for s, t in pairs:
                projections[f"s{s}_t{t}"] = nn.Linear(s_cfg.hidden_size, t_cfg.hidden_size)

        def hidden(student_out, teacher_out, batch):
            mask = _same_tokens(batch, device)
            values = []
            for s, t in pairs:
                proj = projections[f"s{s}_t{t}"] if f"s{s}_t{t}" in projections else None
                values.append(hidden_state_mse(student_out.hidden[s].float(), teacher_out.hidden[t], mask,
                                               weight=None if proj is None else proj.weight,
                                               bias=None if proj is None else proj.bias, reduction="sum"))
            return torch.stack(values).mean()

        terms.append(Term("hidden", loss_cfg.hidden_weight, hidden, teacher_hidden=tuple(sorted({t for _, t in pairs}))))
    if attention_on:
        if s_cfg.num_attention_heads != t_cfg.num_attention_heads:
            raise ConfigError(f"loss.attention_weight: the student has {s_cfg.num_attention_heads} attention "
                              f"heads and the teacher {t_cfg.num_attention_heads}; attention maps are matched "
                              "head by head: give the student as many heads")
        att_pairs = [p for p in pairs if p[0] > 0]

        def attention(student_out, teacher_out, batch):
            mask = _same_tokens(batch, device)
            return torch.stack([attention_kl(student_out.attention[s].float(), teacher_out.attention[t], mask,
                                             reduction="sum") for s, t in att_pairs]).mean()

        terms.append(Term("attention", loss_cfg.attention_weight, attention,
                          teacher_attention=tuple(sorted({t for _, t in att_pairs}))))
    return terms, projections


class TextRecipe(Recipe):
    def build_data(self, cfg):
        return build_text_data(cfg.data)

    def _model(self, spec, data, tokenizer, attentions: bool = False, fresh: bool = False) -> nn.Module:
        if fresh:
            spec = spec.model_copy(update={"weights": None})
        return build_text_model(spec, data.num_classes, vocab_size=len(tokenizer), pad_id=pad_id(tokenizer),
                                attentions=attentions)

    def teacher_needs_training(self, cfg) -> bool:
        spec = getattr(cfg.teacher, "model", None)
        return spec is not None and spec.weights is None

    def teacher_model(self, cfg, data, tokenizer=None, attentions: bool = False) -> nn.Module:
        """The teacher from its weights file, or this run's fine-tuned teacher."""
        spec = cfg.teacher.model
        model = self._model(spec, data, tokenizer or tokenizer_for(spec), attentions)
        if spec.weights is None:
            load_weights(model, trained_teacher_weights(cfg, WEIGHTS))
        return model

    def _batches(self, cfg, data, tokenizer, teacher_tokenizer, ctx, transfer: bool):
        d = cfg.data
        encode(data, tokenizer, d.max_length, teacher_tokenizer, unlabeled=transfer)
        teacher_pad = pad_id(teacher_tokenizer) if teacher_tokenizer is not None else 0
        split = data.transfer_set() if transfer else data.train
        train = TextBatches(split, d.batch_size, shuffle=True, seed=cfg.seed, pool_batches=d.length_pool_batches,
                            pad_id=pad_id(tokenizer), teacher_pad_id=teacher_pad, rank=ctx.rank,
                            world_size=ctx.world_size)
        val = (TextBatches(data.val, d.eval_batch_size, pad_id=pad_id(tokenizer), teacher_pad_id=teacher_pad)
               if data.val is not None else None)
        notes = {"train_texts": len(data.train), "unlabeled_texts": len(split) - len(data.train)} \
            if data.unlabeled is not None else {}
        return train, val, notes

    def plan(self, cfg, data, role, ctx, *, teacher=None, student=None) -> Plan:
        if role != "distilled":
            spec = cfg.teacher.model if role == "teacher" else cfg.student
            tokenizer = tokenizer_for(spec)
            model = student if student is not None else self._model(spec, data, tokenizer, fresh=role == "teacher")
            train, val, notes = self._batches(cfg, data, tokenizer, None, ctx, transfer=False)
            return Plan(model, TextClassificationTask(data.num_classes, cfg.train.device), train, val,
                        build_objective(cfg.loss, teacher=False), num_outputs=data.num_classes, notes=notes)
        return self._distill_plan(cfg, data, ctx, teacher, student)

    def _distill_plan(self, cfg, data, ctx, teacher, student) -> Plan:
        if cfg.teacher is None:
            raise ConfigError("distillation needs a `teacher:` section in the config")
        if cfg.teacher.kind == "ensemble":
            raise ConfigError("teacher.kind ensemble is wired for task classification; distil a text student "
                              "from one teacher")
        tokenizer, teacher_tokenizer = tokenizer_for(cfg.student), tokenizer_for(cfg.teacher.model)
        attentions = ever_nonzero(cfg.loss.attention_weight)
        model = student if student is not None else self._model(cfg.student, data, tokenizer, attentions)
        t_model = teacher.model if isinstance(teacher, TextTeacher) else (
            teacher if teacher is not None else self.teacher_model(cfg, data, teacher_tokenizer, attentions))
        notes = {}
        needs_same = [name for name, on in (
            ("student.init_from_teacher", getattr(cfg.student, "init_from_teacher", False)),
            ("loss.hidden_weight", ever_nonzero(cfg.loss.hidden_weight)), ("loss.attention_weight", attentions)) if on]
        if needs_same and tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
            raise ConfigError(f"{', '.join(needs_same)} match the student to the teacher token by token: "
                              "give the student the teacher's tokenizer (student.tokenizer)")
        if getattr(cfg.student, "init_from_teacher", False):
            notes["init_from_teacher"] = init_from_teacher(model, t_model, cfg.student)
        terms, projections = layer_terms(cfg.loss, model, t_model, torch.device(cfg.train.device)) \
            if cfg.student.arch == "hf" else ([], nn.ModuleDict())
        # without a soft term or a layer term, unlabelled texts add nothing
        teacher_term = cfg.loss.method != "kd" or ever_nonzero(cfg.loss.soft_weight) or bool(terms)
        train, val, more = self._batches(cfg, data, tokenizer, teacher_tokenizer, ctx, transfer=teacher_term)
        objective = build_objective(cfg.loss, terms, steps_per_epoch=math.ceil(len(train) / cfg.train.grad_accum_steps))
        if isinstance(teacher, TeacherSource):
            missing = (set(objective.teacher_hidden) - set(getattr(teacher, "hidden_layers", ()))) | \
                      (set(objective.teacher_attention) - set(getattr(teacher, "attention_layers", ())))
            if missing:
                raise ConfigError(f"the given teacher source does not return teacher layers {sorted(missing)} "
                                  "that loss.layer_map needs: build it with those hidden/attention layers")
            source = teacher
        else:
            t = cfg.teacher
            source = TextTeacher(t_model, num_outputs=data.num_classes, hidden_layers=objective.teacher_hidden,
                                 attention_layers=objective.teacher_attention, precision=t.precision,
                                 compile=t.compile, device=t.device or cfg.train.device,
                                 output_device=cfg.train.device)
        source = default_source(cfg, source)  # a frozen teacher on fixed inputs runs once per sample
        connectors = {**({"projections": projections} if len(projections) else {}), **objective.modules()}
        trained = WithConnectors(model, connectors) if connectors else model
        task = TextClassificationTask(data.num_classes, cfg.train.device, hidden=bool(objective.teacher_hidden),
                                      attentions=bool(objective.teacher_attention))
        return Plan(trained, task, train, val, objective, teacher=source, num_outputs=data.num_classes,
                    exported=lambda: unwrap(trained), notes={**notes, **more})

    def save(self, model, out_dir, data) -> None:
        save_state(unwrap(model), Path(out_dir) / WEIGHTS)

    def load_student(self, cfg, data, folder):
        path = Path(folder) / WEIGHTS
        if not path.is_file():
            return None
        return load_weights(self._model(cfg.student, data, tokenizer_for(cfg.student), fresh=True), path)

    def compare(self, cfg, data, models):
        tokenizer = tokenizer_for(cfg.student)
        teacher_tokenizer = tokenizer_for(cfg.teacher.model) if cfg.teacher is not None else None
        rows = compare_models({n: (m, "teacher" if n == "teacher" else "student") for n, m in models.items()},
                              data, tokenizer, cfg.data.max_length, teacher_tokenizer, cfg.data.eval_batch_size,
                              teacher="teacher" if "teacher" in models else None, device=cfg.train.device)
        return rows, {"split": "test", "samples": len(data.test), "class_names": data.class_names}

    def same_inputs_as_teacher(self, cfg) -> bool:
        t, s = cfg.teacher.model, cfg.student
        return (t.tokenizer or t.name_or_path) == (s.tokenizer or s.name_or_path)

    def export_inputs(self, cfg, data, samples):
        split = data.test.subset(samples) if samples else data.test
        tokenizer = tokenizer_for(cfg.student)
        ids, mask = pad(tokenize(tokenizer, split.texts, cfg.data.max_length), pad_id(tokenizer))
        return (ids, mask), torch.as_tensor(split.labels)


def timing_inputs(tokenizer, text: str, max_length: int) -> dict[str, torch.Tensor]:
    """One text as a batch of one, for latency."""
    ids, mask = pad(tokenize(tokenizer, [text], max_length), pad_id(tokenizer))
    return {"input_ids": ids, "attention_mask": mask}


def compare_models(models: dict[str, tuple[nn.Module, str]], data, tokenizer, max_length: int,
                   teacher_tokenizer=None, batch_size: int = 128, teacher: str | None = "teacher",
                   device: str = "cpu"):
    """Accuracy, NLL, ECE, agreement, KL, size and latency on the test split, each model reading
    its own tokens: ``models`` maps a name to (model, "student" or "teacher" tokenization)."""
    split = data.test
    split.ids = tokenize(tokenizer, split.texts, max_length)
    split.teacher_ids = tokenize(teacher_tokenizer, split.texts, max_length) if teacher_tokenizer else None
    test = TextBatches(split, batch_size, pad_id=pad_id(tokenizer),
                       teacher_pad_id=pad_id(teacher_tokenizer) if teacher_tokenizer else 0)
    typical = sorted(split.texts, key=len)[len(split) // 2]
    tokenizers = {"student": tokenizer, "teacher": teacher_tokenizer}
    tasks = {name: TextClassificationTask(data.num_classes, device, inputs=kind) for name, (_, kind) in models.items()}
    timing = {name: timing_inputs(tokenizers[kind], typical, max_length) for name, (_, kind) in models.items()}
    return compare({n: m for n, (m, _) in models.items()}, tasks, test, teacher=teacher, timing_samples=timing)
