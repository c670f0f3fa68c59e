"""Causal language models: the teacher's tokenizer for everyone, token blocks or prompt /
completion pairs, live teachers scored only at target positions (vocabularies aligned up front),
on-policy batches, Hugging Face folders in and out, held-out perplexity / agreement / KL."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdistill import distributed
from kdistill.config.training import served_cache
from kdistill.data.lm_text import LMBatches, LMSplits, build_lm_data
from kdistill.errors import ConfigError, ExportError
from kdistill.evaluate import LMReport, model_bytes
from kdistill.losses.objectives import build_objective
from kdistill.models import count_parameters, load_weights
from kdistill.reasoning.evaluate import reasoning_fields, reasoning_split
from kdistill.models.hf import (check_vocabularies, load_causal_lm, load_tokenizer, output_rows, save_hf,
                                student_from_config)
from kdistill.runs.recipes.base import Plan, Recipe
from kdistill.runs.roles import role_dir
from kdistill.tasks.causal_lm import CausalLMTask
from kdistill.teachers.base import TeacherSource
from kdistill.teachers.causal_lm import CausalLMTeacher
from kdistill.teachers.lm_cache import cache_lm_teacher, open_lm_cache
from kdistill.timing import time_models

MODEL_DIR = "model"
REFERENCE_BYTES = 2**30  # held-out teacher logits kept in memory (fp16) up to this size
GENERATION_CHECK = {"prompts": 2, "prompt_tokens": 16, "new_tokens": 16}


@dataclass
class LMData:
    """The token splits and the tokenizer that made them (the teacher's)."""

    splits: LMSplits
    tokenizer: object

    @property
    def train(self):
        return self.splits.train

    @property
    def val(self):
        return self.splits.val


class ReferenceLogits:
    """The teacher's full logits for held-out batches, computed once and kept in fp16 (bf16 would
    round near-ties of the top-1) while they fit ``max_bytes``; beyond that, recomputed."""

    def __init__(self, teacher: TeacherSource, max_bytes: int = REFERENCE_BYTES):
        self.teacher, self.max_bytes, self.stored, self.used = teacher, max_bytes, {}, 0

    def __call__(self, batch: dict) -> torch.Tensor:
        key = tuple(batch["index"].tolist())
        if key in self.stored:
            return self.stored[key].float()
        logits = self.teacher.logits(batch)
        if self.used + logits.numel() * 2 <= self.max_bytes:
            self.stored[key] = logits.to(torch.float16)
            self.used += logits.numel() * 2
        return logits


def _teacher_spec(cfg):
    """The teacher's model spec: a live teacher's, or the one a cache teacher captures from."""
    model = getattr(cfg.teacher, "model", None)
    return model if model is not None and model.arch == "hf_causal_lm" else None


def server_tokenizer(cfg, served=None):
    """The tokenizer a server teacher's student reads (the server section's tokenizer, else the
    student's source), or None when neither is given. ``served``: the server section (default
    the teacher section)."""
    name = (served or cfg.teacher).tokenizer or cfg.student.source
    return None if name is None else load_tokenizer(cfg.student.model_copy(update={"source": name,
                                                                               "config": None}))


class CausalLMRecipe(Recipe):
    def tokenizer(self, cfg):
        """The teacher's tokenizer (the student reads the same tokens), else the student's own."""
        spec = _teacher_spec(cfg)
        if spec is not None and spec.source is not None:
            return load_tokenizer(spec)
        served = cfg.teacher if getattr(cfg.teacher, "kind", None) == "server" else \
            getattr(cfg.teacher, "server", None)  # a server, or the server a cache was captured from
        if served is not None and server_tokenizer(cfg, served) is not None:
            return server_tokenizer(cfg, served)
        if cfg.student.source is not None:
            return load_tokenizer(cfg.student)
        named = {n for n in (getattr(spec, "tokenizer", None), cfg.student.tokenizer) if n is not None}
        if len(named) > 1:
            raise ConfigError(f"teacher.model.tokenizer and student.tokenizer differ ({' vs '.join(sorted(named))}): "
                              "the student reads the teacher's tokens, so give both the same")
        if named:
            from kdistill.reasoning.tokenizer import bundled_tokenizer

            return bundled_tokenizer(named.pop())
        raise ConfigError("no tokenizer: give the teacher (teacher.model.source) or the student "
                          "(student.source) a pretrained source, or a config-built one `tokenizer: chars`")

    def build_data(self, cfg):
        tokenizer = self.tokenizer(cfg)
        return LMData(build_lm_data(cfg.data, tokenizer), tokenizer)

    def _build(self, spec, cfg, tokenizer) -> nn.Module:
        if spec.config is not None:
            model = student_from_config(spec.config, tokenizer, seed=cfg.seed)
            return load_weights(model, spec.weights) if spec.weights is not None else model
        return load_causal_lm(spec)

    def teacher_needs_training(self, cfg) -> bool:
        spec = _teacher_spec(cfg)
        return spec is not None and spec.config is not None and spec.weights is None

    def teacher_model(self, cfg, data) -> nn.Module:
        """This run's trained teacher if there is one, else the teacher's pretrained source."""
        spec = _teacher_spec(cfg)
        if spec is None:
            raise ConfigError("this needs teacher.model: {arch: hf_causal_lm, ...} (a live teacher, or the "
                              "one a cache teacher captures from)")
        folder = role_dir(cfg, "teacher") / MODEL_DIR
        if spec.weights is None and folder.is_dir():
            return _from_folder(folder)
        if self.teacher_needs_training(cfg):
            raise ConfigError(f"teacher.model is built from config and {folder} does not exist: train it "
                              "first with `kdistill train CONFIG --role teacher`, or set teacher.model.weights")
        return self._build(spec, cfg, data.tokenizer)

    def _live(self, cfg, model: nn.Module, vocab: int, shard: bool = False) -> CausalLMTeacher:
        t = cfg.teacher  # None when the teacher module is given from Python
        return CausalLMTeacher(model, vocab, precision=getattr(t, "precision", "fp32"),
                               device=getattr(t, "device", None) or cfg.train.device, output_device=cfg.train.device,
                               shard=shard)

    def cache_teacher(self, cfg, data):
        """Scored over the tokenizer's vocabulary (the output layer's padding rows dropped), so
        every student reading the same tokenizer fits the cache; a served teacher (teacher.server)
        gives its top-k log-probabilities, after the tokenizer check."""
        if cfg.teacher.server is not None:
            from kdistill.teachers.server import ServerTeacher

            vocab = len(data.tokenizer.get_vocab())
            return cache_lm_teacher(cfg, data, ServerTeacher(cfg.teacher.server, data.tokenizer, vocab))
        model = self.teacher_model(cfg, data)
        rows = output_rows(model)
        check_vocabularies(data.tokenizer, None, rows, rows)  # the tokenizer fits the model
        return cache_lm_teacher(cfg, data, self._live(cfg, model, len(data.tokenizer.get_vocab())))

    def plan(self, cfg, data, role, ctx, *, teacher=None, student=None) -> Plan:
        spec = cfg.teacher.model if role == "teacher" else cfg.student
        if role == "teacher" and spec.arch != "hf_causal_lm":
            raise ConfigError("--role teacher trains teacher.model: it must be an hf_causal_lm")
        model = student if student is not None else self._build(
            spec.model_copy(update={"weights": None}) if role == "teacher" else spec, cfg, data.tokenizer)
        d = cfg.data
        train = LMBatches(data.train, d.batch_size, shuffle=True, seed=cfg.seed, rank=ctx.rank,
                          world_size=ctx.world_size)
        val = LMBatches(data.val, d.eval_batch_size)
        source, vocab, reference = None, output_rows(model), None
        if role == "distilled":
            source, vocab = self._source(cfg, data, teacher, model)
            reference = ReferenceLogits(source) if isinstance(source, CausalLMTeacher) else None
            if cfg.loss.on_policy_fraction > 0:
                train = self._on_policy(cfg, train, model, source, data.tokenizer)
        loss = cfg.loss
        task = CausalLMTask(vocab, divergence=loss.divergence, jsd_beta=loss.jsd_beta, skew=loss.skew,
                            chunk_tokens=loss.chunk_tokens, device=cfg.train.device, reference=reference)
        notes = {"train_target_tokens": data.train.target_tokens(), "data": data.splits.identity}
        return Plan(model, task, train, val, build_objective(cfg.loss, teacher=source is not None),
                    teacher=source, notes=notes)

    def _source(self, cfg, data, teacher, student) -> tuple[TeacherSource, int]:
        if isinstance(teacher, TeacherSource):
            return teacher, teacher.num_outputs
        if teacher is None and getattr(cfg.teacher, "kind", None) == "server":
            return self._server(cfg, data, student)
        student_tok = load_tokenizer(cfg.student) if cfg.student.source is not None else None
        if teacher is None and cfg.teacher.kind == "cache":
            cache = open_lm_cache(cfg, data, output_rows(student), student_tok)
            return cache, cache.num_outputs
        model = teacher if teacher is not None else self.teacher_model(cfg, data)
        alignment = check_vocabularies(data.tokenizer, student_tok, output_rows(model), output_rows(student))
        # train.parallel: fsdp shards the teacher beside the student (every rank runs each batch)
        shard = cfg.train.parallel == "fsdp" and distributed.current().world_size > 1
        return self._live(cfg, model, alignment.size, shard=shard), alignment.size

    def _server(self, cfg, data, student) -> tuple[TeacherSource | None, int]:
        """No source when the loss never reads the teacher (sequence-level: the student trains on
        the server's answers, written by `kdistill generate`), else the server's top-k."""
        from kdistill.losses.objectives import ever_nonzero
        from kdistill.teachers.server import ServerTeacher

        vocab = min(output_rows(student), len(data.tokenizer))
        if not ever_nonzero(cfg.loss.soft_weight):
            return None, vocab
        if cfg.teacher.cache is not None:  # captured by `kdistill cache-teacher`: read, no requests
            cached = cfg.model_copy(update={"teacher": served_cache(cfg.teacher)})
            student_tok = load_tokenizer(cfg.student) if cfg.student.source is not None else None
            cache = open_lm_cache(cached, data, output_rows(student), student_tok)
            return cache, cache.num_outputs
        return ServerTeacher(cfg.teacher, data.tokenizer, vocab), vocab

    def _on_policy(self, cfg, train, student, source, tokenizer):
        from kdistill.generation import OnPolicyBatches

        if cfg.data.dataset != "completions_jsonl" or not isinstance(source, CausalLMTeacher):
            raise ConfigError("loss.on_policy_fraction needs prompt data (data.dataset: completions_jsonl) "
                              "and a live teacher to score the student's samples")
        return OnPolicyBatches(train, student, fraction=cfg.loss.on_policy_fraction,
                               max_new_tokens=cfg.loss.on_policy_max_new_tokens, pad_id=tokenizer.pad_token_id,
                               eos_id=tokenizer.eos_token_id, seed=cfg.seed)

    def save(self, model, out_dir, data) -> None:
        save_hf(model, data.tokenizer, Path(out_dir) / MODEL_DIR)

    def load_student(self, cfg, data, folder):
        folder = Path(folder) / MODEL_DIR
        return _from_folder(folder) if folder.is_dir() else None

    def compare(self, cfg, data, models):
        """Held-out perplexity, top-1 agreement and KL(teacher || model) per token, parameters,
        size and forward tokens/s for each model, on the same held-out blocks."""
        vocab = min(output_rows(m) for m in models.values())
        reference = ReferenceLogits(self._live(cfg, models["teacher"], vocab)) if "teacher" in models else None
        task = CausalLMTask(vocab, device=cfg.train.device, reference=reference)
        batches = LMBatches(data.val, cfg.data.eval_batch_size)
        sample = next(iter(batches))
        timed = {"input_ids": sample["input_ids"], "attention_mask": sample["attention_mask"]}
        # forward passes over one held-out batch, every model timed by the shared harness
        speed = time_models(models, dict.fromkeys(models, timed), large_batch=len(sample["input_ids"]))
        rows = []
        for name, model in models.items():
            t0 = time.perf_counter()
            metrics = task.evaluate(model, batches)
            seconds = time.perf_counter() - t0
            rate = speed[name].throughput_per_s * sample["input_ids"].shape[1]
            solved = reasoning_fields(cfg.reasoning, data.tokenizer, model, cfg.seed) if cfg.reasoning else {}
            rows.append(LMReport(name=name, ppl=metrics["ppl"], nll=metrics["nll"],
                                 agreement=metrics.get("agreement"), kl_to_teacher=metrics.get("kl_to_teacher"),
                                 parameters=count_parameters(model), size_bytes=model_bytes(model),
                                 tokens_per_s=rate, tokens=metrics["tokens"], eval_seconds=seconds, **solved))
        return rows, {"split": "held-out", "samples": len(data.val), "dataset": data.splits.identity,
                      "train_target_tokens": data.train.target_tokens(),
                      **({"reasoning": reasoning_split(cfg.reasoning)} if cfg.reasoning else {})}

    def export_checks(self, model, folder, name, inputs, quantize) -> dict:
        return {"generation": greedy_parity(model, folder, name, inputs, quantize)}

    def export_inputs(self, cfg, data, samples):
        ids = data.val.input_ids
        return ids[: samples or len(ids)], None


def _from_folder(folder: Path) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


def greedy_parity(model, folder: Path, name: str, token_ids: torch.Tensor, quantize: str | None) -> dict:
    """Greedy continuations of a few held-out prompts from ONNX Runtime against PyTorch: the
    fp32 export must produce the same tokens; int8 is reported (its argmax may differ)."""
    from kdistill.export import onnx_generate, ort_session

    c = GENERATION_CHECK
    prompts = token_ids[: c["prompts"], : c["prompt_tokens"]]
    with torch.no_grad():
        ids = prompts
        for _ in range(c["new_tokens"]):  # plain greedy, no cache: the same computation ONNX runs
            ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    out = {"prompts": int(prompts.shape[0]), "new_tokens": c["new_tokens"]}
    variants = {"onnx_fp32": folder / f"{name}.onnx"}
    if quantize == "int8":
        variants["onnx_int8"] = folder / f"{name}.int8.onnx"
    for key, path in variants.items():
        got = onnx_generate(ort_session(path), prompts, c["new_tokens"])
        out[key] = {"same_tokens": float((got[:, prompts.shape[1]:] == ids[:, prompts.shape[1]:]).float().mean())}
    if out["onnx_fp32"]["same_tokens"] < 1.0:
        raise ExportError(f"greedy generation from {variants['onnx_fp32']} differs from PyTorch "
                          f"({100 * out['onnx_fp32']['same_tokens']:.1f}% of tokens the same)")
    return out
