"""Runs for causal language models: config -> tokenizer, text, teacher, student -> engine ->
saved Hugging Face student; plus the teacher-vs-students comparison and ``generate``.

``runs.train`` / ``runs.distill`` / ``runs.evaluate_run`` hand configs with ``task: causal_lm``
to the functions here, so the CLI commands are the same for classifiers and LMs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from kdistill import distributed
from kdistill.checkpoint import atomic_write_text
from kdistill.config import RunConfig
from kdistill.data.lm_text import LMBatches, LMSplits, build_lm_data
from kdistill.engine import Engine
from kdistill.errors import ConfigError
from kdistill.models import count_parameters
from kdistill.models.hf import (VocabAlignment, check_vocabularies, load_causal_lm, load_tokenizer,
                                output_rows, save_hf, student_from_config)
from kdistill.tasks.causal_lm import CausalLMTask
from kdistill.teachers.base import TeacherSource
from kdistill.teachers.causal_lm import CausalLMTeacher

MODEL_DIR = "model"


@dataclass
class LMRunResult:
    out_dir: Path
    model: nn.Module
    history: list[dict]
    data: LMSplits


def _teacher_spec(cfg: RunConfig):
    if cfg.teacher is None or cfg.teacher.kind != "live" or cfg.teacher.model.arch != "hf_causal_lm":
        return None
    return cfg.teacher.model


def tokenizer_for(cfg: RunConfig):
    """The teacher's tokenizer (the student reads the same tokens), else the student's own."""
    spec = _teacher_spec(cfg)
    if spec is not None and spec.source is not None:
        return load_tokenizer(spec)
    if cfg.student.source is not None:
        return load_tokenizer(cfg.student)
    raise ConfigError("no tokenizer: give the teacher (teacher.model.source) or the student "
                      "(student.source) a pretrained source")


def build_student(cfg: RunConfig, tokenizer) -> nn.Module:
    spec = cfg.student
    if spec.config is not None:
        model = student_from_config(spec.config, tokenizer, seed=cfg.seed)
        if spec.weights is not None:
            from kdistill.models.builders import load_weights

            load_weights(model, spec.weights)
        return model
    return load_causal_lm(spec)


def align(cfg: RunConfig, tokenizer, teacher: nn.Module, student: nn.Module) -> VocabAlignment:
    student_tok = load_tokenizer(cfg.student) if cfg.student.source is not None else None
    return check_vocabularies(tokenizer, student_tok, output_rows(teacher), output_rows(student))


def make_task(cfg: RunConfig, vocab_size: int, reference=None) -> CausalLMTask:
    loss = cfg.loss
    return CausalLMTask(vocab_size, divergence=loss.divergence, jsd_beta=loss.jsd_beta, skew=loss.skew,
                        chunk_tokens=loss.chunk_tokens, device=cfg.train.device, reference=reference)


def live_teacher(cfg: RunConfig, model: nn.Module, vocab_size: int) -> CausalLMTeacher:
    t = cfg.teacher
    return CausalLMTeacher(model, vocab_size, precision=t.precision, device=t.device or cfg.train.device,
                           output_device=cfg.train.device)


def run(cfg: RunConfig, *, teacher: TeacherSource | None, student: nn.Module, tokenizer,
        data: LMSplits, vocab_size: int, out_dir: Path, resume: bool = False,
        reference=None) -> LMRunResult:
    """Train ``student`` (with ``teacher`` soft targets, or none: cross-entropy only) through the
    engine and save it with save_pretrained under ``out_dir/model``."""
    with distributed.session(cfg.train.device) as ctx:  # joins torchrun's process group, if any
        return _run_here(cfg, teacher, student, tokenizer, data, vocab_size, Path(out_dir), resume,
                         reference, ctx)


def _run_here(cfg: RunConfig, teacher: TeacherSource | None, student: nn.Module, tokenizer,
              data: LMSplits, vocab_size: int, out_dir: Path, resume: bool, reference,
              ctx: distributed.Context) -> LMRunResult:
    """One run in this process; under torchrun each rank trains on its share of the blocks (the
    engine normalises by the global token count) and rank 0 alone writes files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
    d = cfg.data
    train_batches = LMBatches(data.train, d.batch_size, shuffle=True, seed=cfg.seed,
                              rank=ctx.rank, world_size=ctx.world_size)
    if teacher is not None and cfg.loss.on_policy_fraction > 0:
        from kdistill.generation import OnPolicyBatches

        if d.dataset != "completions_jsonl" or not isinstance(teacher, CausalLMTeacher):
            raise ConfigError("loss.on_policy_fraction needs prompt data (data.dataset: completions_jsonl) and a "
                              "live teacher to score the student's samples")
        train_batches = OnPolicyBatches(train_batches, student, fraction=cfg.loss.on_policy_fraction,
                                        max_new_tokens=cfg.loss.on_policy_max_new_tokens,
                                        pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                                        seed=cfg.seed)
    val_batches = LMBatches(data.val, d.eval_batch_size)
    engine = Engine(cfg, student, make_task(cfg, vocab_size, reference), train_batches, val_batches,
                    teacher=teacher, out_dir=out_dir)
    history = engine.fit(resume=resume)
    if not ctx.is_main:
        return LMRunResult(out_dir, student, history, data)
    save_hf(student, tokenizer, out_dir / MODEL_DIR)
    summary = {"name": cfg.name, "mode": "distill" if teacher else "train", "task": "causal_lm",
               "parameters": count_parameters(student), "epochs": history,
               "train_target_tokens": data.train.target_tokens(), "data": data.identity,
               "teacher": teacher.describe() if teacher else None}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    return LMRunResult(out_dir, student, history, data)


def train(cfg: RunConfig, *, role: str = "scratch", resume: bool = False,
          out_dir: Path | None = None) -> LMRunResult:
    """The student on the text alone (cross-entropy): the baseline, or sequence-level distillation
    when the text is the teacher's generated answers (data.dataset: completions_jsonl)."""
    if role != "scratch":
        raise ConfigError("causal_lm runs train the student only (role scratch); the teacher is pretrained")
    tokenizer = tokenizer_for(cfg)
    data = build_lm_data(cfg.data, tokenizer)
    student = build_student(cfg, tokenizer)
    return run(cfg, teacher=None, student=student, tokenizer=tokenizer, data=data,
               vocab_size=output_rows(student), out_dir=out_dir or Path(cfg.train.output_dir) / "scratch",
               resume=resume)


def distill(cfg: RunConfig, *, resume: bool = False, out_dir: Path | None = None) -> LMRunResult:
    """Token-level distillation of the config's teacher into its student."""
    spec = _teacher_spec(cfg)
    if spec is None:
        raise ConfigError("causal_lm distillation needs teacher: {kind: live, model: {arch: hf_causal_lm, ...}}")
    tokenizer = tokenizer_for(cfg)
    data = build_lm_data(cfg.data, tokenizer)
    teacher_model = load_causal_lm(spec)
    student = build_student(cfg, tokenizer)
    alignment = align(cfg, tokenizer, teacher_model, student)
    teacher = live_teacher(cfg, teacher_model, alignment.size)
    return run(cfg, teacher=teacher, student=student, tokenizer=tokenizer, data=data,
               vocab_size=alignment.size, out_dir=out_dir or Path(cfg.train.output_dir) / "distilled",
               resume=resume, reference=teacher.logits)


def compare_lm(models: dict[str, nn.Module], teacher: TeacherSource, batches, vocab_size: int,
               device: str = "cpu", reference=None) -> list[dict]:
    """Held-out perplexity, top-1 agreement and KL(teacher || model) per token for each model.
    ``reference`` (teacher logits for a batch) defaults to the live teacher."""
    task = CausalLMTask(vocab_size, device=device, reference=reference or teacher.logits)
    rows = []
    for name, model in models.items():
        t0 = time.perf_counter()
        metrics = task.evaluate(model, batches)
        rows.append({"model": name, "parameters": count_parameters(model), **metrics,
                     "eval_seconds": time.perf_counter() - t0})
    return rows


def format_lm_table(rows: list[dict], title: str = "") -> str:
    from kdistill.present import format_table

    return format_table(rows, title)


def evaluate_run(cfg: RunConfig) -> list[dict]:
    """Teacher, scratch and distilled students of a run on the held-out text."""
    from transformers import AutoModelForCausalLM

    spec = _teacher_spec(cfg)
    if spec is None:
        raise ConfigError("evaluating a causal_lm run needs its teacher (teacher.model: hf_causal_lm)")
    tokenizer = tokenizer_for(cfg)
    data = build_lm_data(cfg.data, tokenizer)
    teacher_model = load_causal_lm(spec)
    models = {"teacher": teacher_model}
    for role in ("scratch", "distilled"):
        folder = Path(cfg.train.output_dir) / role / MODEL_DIR
        if folder.is_dir():
            models[role] = AutoModelForCausalLM.from_pretrained(folder)
    size = min(output_rows(m) for m in models.values())
    teacher = live_teacher(cfg, teacher_model, size)
    rows = compare_lm(models, teacher, LMBatches(data.val, cfg.data.eval_batch_size), size, cfg.train.device)
    atomic_write_text(Path(cfg.train.output_dir) / "comparison.json",
                      json.dumps({"split": "held-out", "models": rows}, indent=2))
    return rows


def generate(cfg: RunConfig, *, progress: bool = True) -> Path:
    """The teacher answers ``generate.prompts`` into ``generate.output`` (JSONL, resumable)."""
    from kdistill.generation import generate_answers, read_prompts

    g = cfg.generate
    spec = _teacher_spec(cfg)
    if g is None or spec is None:
        raise ConfigError("`kdistill generate` needs a `generate:` section and teacher.model: hf_causal_lm")
    prompts = read_prompts(g.prompts, getattr(cfg.data, "prompt_field", "prompt"))
    if g.limit:
        prompts = prompts[: g.limit]
    tokenizer = load_tokenizer(spec)
    model = load_causal_lm(spec)
    generate_answers(model, tokenizer, prompts, g.output, max_new_tokens=g.max_new_tokens,
                     do_sample=g.do_sample, temperature=g.temperature, top_p=g.top_p,
                     batch_size=g.batch_size, chat_template=g.chat_template, seed=cfg.seed,
                     source=spec.source, progress=progress)
    return Path(g.output)
