"""Runs for ``task: text_classification``: the same roles and run layout as ``runs.py``
(OUT/{teacher,scratch,distilled}), the same engine, with text data, tokenizers and models.

Each model reads its own tokenization: the teacher's run and the teacher source read the
teacher's tokens, the student's run the student's. ``init_from_teacher`` applies to distilled
students only, so the scratch baseline is the same architecture from its own initialisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from kdistill.checkpoint import atomic_write_text
from kdistill.config import RunConfig
from kdistill.data.text import TextBatches, TextSplits, build_text_data, encode, pad, tokenize
from kdistill.engine import Engine
from kdistill.errors import ConfigError
from kdistill.evaluate import ModelReport, compare
from kdistill.models import count_parameters, load_weights
from kdistill.precision import precision_record
from kdistill.runs import (ROLES, STUDENT_WEIGHTS, RunResult, load_trained_teacher, role_dir, save_model,
                           write_comparison)
from kdistill.models.text import WithProjections, build_text_model, init_from_teacher, load_tokenizer, unwrap
from kdistill.tasks.text import TextClassificationTask, ever_nonzero, plan_layer_terms
from kdistill.teachers.memo import default_source
from kdistill.teachers.text import TextTeacher


def tokenizer_for(spec):
    return load_tokenizer(spec.tokenizer or spec.name_or_path,
                          trust_remote_code=getattr(spec, "trust_remote_code", False))


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def _model(spec, data: TextSplits, tokenizer, attentions: bool = False, fresh: bool = False) -> nn.Module:
    if fresh:
        spec = spec.model_copy(update={"weights": None})
    return build_text_model(spec, data.num_classes, vocab_size=len(tokenizer), pad_id=_pad_id(tokenizer),
                            attentions=attentions)


def teacher_model(cfg: RunConfig, data: TextSplits, tokenizer=None, attentions: bool = False) -> nn.Module:
    """The teacher from its weights file, or this run's fine-tuned teacher."""
    if cfg.teacher is None:
        raise ConfigError("this needs a teacher: add a `teacher:` section to the config")
    spec = cfg.teacher.model
    tokenizer = tokenizer or tokenizer_for(spec)
    model = _model(spec, data, tokenizer, attentions)
    if spec.weights is None:
        load_trained_teacher(cfg, model)
    return model


def build_teacher(cfg: RunConfig, data: TextSplits, hidden_layers=(), attention_layers=(),
                  model: nn.Module | None = None) -> TextTeacher:
    t = cfg.teacher
    return TextTeacher(model if model is not None else teacher_model(cfg, data, attentions=bool(attention_layers)),
                       num_outputs=data.num_classes, hidden_layers=hidden_layers,
                       attention_layers=attention_layers, precision=t.precision,
                       compile=t.compile, device=t.device or cfg.train.device, output_device=cfg.train.device)


def _fit(cfg: RunConfig, model: nn.Module, task: TextClassificationTask, data: TextSplits, tokenizer,
         teacher_tokenizer, teacher: TextTeacher | None, out_dir: Path, resume: bool, notes: dict,
         transfer: bool = False):
    """Tokenize for this run, train with the engine, export the plain model and a summary.
    ``transfer``: train on the labelled and the unlabelled texts (a distillation with a teacher term)."""
    d = cfg.data
    encode(data, tokenizer, d.max_length, teacher_tokenizer, unlabeled=transfer)
    pad_id = _pad_id(tokenizer)
    teacher_pad = _pad_id(teacher_tokenizer) if teacher_tokenizer is not None else 0
    train_split = data.transfer_set() if transfer else data.train
    if data.unlabeled is not None:
        notes = {**notes, "train_texts": len(data.train), "unlabeled_texts": len(train_split) - len(data.train)}
    train = TextBatches(train_split, d.batch_size, shuffle=True, seed=cfg.seed,
                        pool_batches=d.length_pool_batches, pad_id=pad_id, teacher_pad_id=teacher_pad)
    val = (TextBatches(data.val, d.eval_batch_size, pad_id=pad_id, teacher_pad_id=teacher_pad)
           if data.val is not None else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
    engine = Engine(cfg, model, task, train, val, teacher=teacher, out_dir=out_dir,
                    num_outputs=data.num_classes)
    history = engine.fit(resume=resume)
    exported = unwrap(model)  # distillation-only projections are not part of the student
    save_model(exported, out_dir / STUDENT_WEIGHTS)
    summary = {"name": cfg.name, "mode": "distill" if teacher else "train", "task": cfg.task,
               "parameters": count_parameters(exported), "epochs": history,
               "teacher": teacher.describe() if teacher else None, "precision": precision_record(cfg), **notes}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return RunResult(out_dir, exported, history, data)


def train(cfg: RunConfig, *, role: str = "scratch", student: nn.Module | None = None,
          data: TextSplits | None = None, resume: bool = False, out_dir: Path | None = None):
    """Fine-tune the teacher (``role="teacher"``) or train the scratch student on labels alone."""
    if role not in ("scratch", "teacher"):
        raise ConfigError(f"role must be 'scratch' or 'teacher', got {role!r}")
    data = data or build_text_data(cfg.data)
    if role == "teacher":
        if cfg.teacher is None:
            raise ConfigError("--role teacher needs a `teacher:` section in the config")
        spec = cfg.teacher.model
        cfg = cfg.model_copy(update={
            "optim": cfg.teacher.optim or cfg.optim,
            "train": cfg.train.model_copy(update={"epochs": cfg.teacher.epochs or cfg.train.epochs})})
    else:
        spec = cfg.student
    tokenizer = tokenizer_for(spec)
    torch.manual_seed(cfg.seed)
    model = student if student is not None else _model(spec, data, tokenizer, fresh=role == "teacher")
    return _fit(cfg, model, TextClassificationTask(data.num_classes, cfg.train.device), data, tokenizer,
                None, None, Path(out_dir or role_dir(cfg, role)), resume, {"role": role})


def distill(cfg: RunConfig, *, teacher: nn.Module | TextTeacher | None = None,
            student: nn.Module | None = None, data: TextSplits | None = None,
            resume: bool = False, out_dir: Path | None = None):
    """Distil the teacher into the student: soft targets + labels, plus hidden-state and
    attention terms when their weights are set. ``teacher`` may be a ready ``TextTeacher`` (runs
    given the same one share its memoized outputs), a model, or None for the config's."""
    if cfg.teacher is None:
        raise ConfigError("distillation needs a `teacher:` section in the config")
    data = data or build_text_data(cfg.data)
    tokenizer, teacher_tokenizer = tokenizer_for(cfg.student), tokenizer_for(cfg.teacher.model)
    attentions = ever_nonzero(cfg.loss.attention_weight)
    torch.manual_seed(cfg.seed)
    model = student if student is not None else _model(cfg.student, data, tokenizer, attentions)
    t_model = teacher.model if isinstance(teacher, TextTeacher) else (
        teacher if teacher is not None else teacher_model(cfg, data, teacher_tokenizer, attentions))
    notes = {"role": "distilled"}
    same_tokens = tokenizer.get_vocab() == teacher_tokenizer.get_vocab()
    needs_same = [name for name, on in (
        ("student.init_from_teacher", getattr(cfg.student, "init_from_teacher", False)),
        ("loss.hidden_weight", ever_nonzero(cfg.loss.hidden_weight)), ("loss.attention_weight", attentions)) if on]
    if needs_same and not same_tokens:
        raise ConfigError(f"{', '.join(needs_same)} match the student to the teacher token by token: "
                          "give the student the teacher's tokenizer (student.tokenizer)")
    if getattr(cfg.student, "init_from_teacher", False):
        notes["init_from_teacher"] = init_from_teacher(model, t_model, cfg.student)
    terms, projections = plan_layer_terms(cfg.loss, model, t_model) if cfg.student.arch == "hf" else (None, None)
    if isinstance(teacher, TextTeacher):
        missing = set(terms.teacher_hidden) - set(teacher.hidden_layers) if terms else set()
        missing |= set(terms.teacher_attention) - set(teacher.attention_layers) if terms else set()
        if missing:
            raise ConfigError(f"the given TextTeacher does not return teacher layers {sorted(missing)} "
                              "that loss.layer_map needs: build it with those hidden/attention layers")
        source = teacher
    else:
        source = build_teacher(cfg, data, terms.teacher_hidden if terms else (),
                               terms.teacher_attention if terms else (), model=t_model)
    if projections:
        model = WithProjections(model, projections)
    source = default_source(cfg, source)  # a frozen teacher on fixed inputs runs once per sample
    task = TextClassificationTask(data.num_classes, cfg.train.device, teacher=source, layer_terms=terms,
                                  loss_cfg=cfg.loss, projections=projections)
    teacher_term = any(ever_nonzero(w) for w in (cfg.loss.soft_weight, cfg.loss.hidden_weight,
                                                 cfg.loss.attention_weight))  # else unlabelled texts add nothing
    return _fit(cfg, model, task, data, tokenizer, teacher_tokenizer, source,
                Path(out_dir or role_dir(cfg, "distilled")), resume, notes, transfer=teacher_term)


def timing_inputs(tokenizer, text: str, max_length: int) -> dict[str, torch.Tensor]:
    """One text as a batch of one, for latency."""
    ids, mask = pad(tokenize(tokenizer, [text], max_length), _pad_id(tokenizer))
    return {"input_ids": ids, "attention_mask": mask}


def compare_models(models: dict[str, tuple[nn.Module, str]], data: TextSplits, tokenizer, max_length: int,
                   teacher_tokenizer=None, batch_size: int = 128, teacher: str | None = "teacher",
                   device: str = "cpu") -> list[ModelReport]:
    """Accuracy, NLL, ECE, agreement, KL, size and latency on the test split, each model reading
    its own tokens: ``models`` maps a name to (model, "student" or "teacher" tokenization)."""
    split = data.test
    split.ids = tokenize(tokenizer, split.texts, max_length)
    split.teacher_ids = tokenize(teacher_tokenizer, split.texts, max_length) if teacher_tokenizer else None
    test = TextBatches(split, batch_size, pad_id=_pad_id(tokenizer),
                       teacher_pad_id=_pad_id(teacher_tokenizer) if teacher_tokenizer else 0)
    typical = sorted(split.texts, key=len)[len(split) // 2]
    tokenizers = {"student": tokenizer, "teacher": teacher_tokenizer}
    tasks = {name: TextClassificationTask(data.num_classes, device, inputs=kind)
             for name, (_, kind) in models.items()}
    timing = {name: timing_inputs(tokenizers[kind], typical, max_length) for name, (_, kind) in models.items()}
    return compare({n: m for n, (m, _) in models.items()}, tasks, test, teacher=teacher, timing_samples=timing)


def evaluate_run(cfg: RunConfig, data: TextSplits | None = None) -> list[ModelReport]:
    """Compare the run's teacher, scratch and distilled students on the test split."""
    data = data or build_text_data(cfg.data)
    tokenizer = tokenizer_for(cfg.student)
    teacher_tokenizer = tokenizer_for(cfg.teacher.model) if cfg.teacher is not None else None
    models: dict[str, tuple[nn.Module, str]] = {}
    if cfg.teacher is not None:
        try:
            models["teacher"] = (teacher_model(cfg, data, teacher_tokenizer), "teacher")
        except ConfigError:
            pass
    for role in ROLES[1:]:
        path = role_dir(cfg, role) / STUDENT_WEIGHTS
        if path.is_file():
            model = _model(cfg.student, data, tokenizer, fresh=True)
            models[role] = (load_weights(model, path), "student")
    if not models:
        raise ConfigError(f"nothing to evaluate under {cfg.train.output_dir}: run `kdistill train` "
                          "and `kdistill distill` with this config first")
    rows = compare_models(models, data, tokenizer, cfg.data.max_length, teacher_tokenizer, cfg.data.eval_batch_size,
                          teacher="teacher" if "teacher" in models else None, device=cfg.train.device)
    write_comparison(cfg, rows, len(data.test), data.class_names)
    return rows


def run_comparison(cfg: RunConfig) -> list[ModelReport]:
    """Fine-tune the teacher if it has no weights, train the scratch student, distil, compare."""
    data = build_text_data(cfg.data)
    if cfg.teacher is not None and cfg.teacher.model.weights is None \
            and not (role_dir(cfg, "teacher") / STUDENT_WEIGHTS).is_file():
        train(cfg, role="teacher", data=data)
    train(cfg, role="scratch", data=data)
    distill(cfg, data=data)
    return evaluate_run(cfg, data)
