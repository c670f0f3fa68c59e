"""Sections every task shares: optimizer, training loop, logging, generation, the teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from kdistill.config.base import Strict
from kdistill.config.models import ModelSpec
from kdistill.guard import DivergenceGuardConfig
from kdistill.config.reasoning import CheckerConfig
from kdistill.schedules import ScheduleSpec


class OptimConfig(Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: ScheduleSpec = 0.1
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: Optional[float] = Field(None, gt=0)
    max_norm: Optional[float] = Field(None, gt=0, description="cap each unit's incoming weight norm "
                                      "after every step (dropout nets, Srivastava et al. 2014)")


class LogConfig(Strict):
    """Trackers beside the always-on metrics.jsonl (they need the `track` extra)."""

    tensorboard: bool = Field(False, description="event files in <role dir>/tensorboard")
    mlflow: bool = Field(False, description="runs in the sqlite store <output_dir>/mlflow.db")


class TrainConfig(Strict):
    epochs: int = Field(10, gt=0)
    grad_accum_steps: int = Field(1, gt=0)
    device: str = "cpu"
    parallel: Literal["ddp", "fsdp"] = Field("ddp", description="under torchrun: replicate the student "
                                             "(ddp) or shard it per transformer block with FSDP2 (fsdp)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast the forward passes; auto: bf16 where the device runs it "
                            "natively, else fp32 (kdistill.precision)")
    deterministic: bool = True
    output_dir: Path = Path("runs/run")
    log_every_steps: int = Field(1, gt=0, description="JSONL metrics every N optimizer steps")
    progress: bool = True
    on_nonfinite: Literal["stop", "skip"] = "stop"
    log: LogConfig = Field(default_factory=LogConfig)
    max_steps: Optional[int] = Field(
        None, gt=0, description="stop after this many optimizer steps (schedules span min(epochs, "
        "max_steps)); a checkpoint is written there")
    checkpoint_every_steps: Optional[int] = Field(
        None, gt=0, description="also checkpoint every N optimizer steps, mid-epoch (a checkpoint is "
        "always written at each epoch's end and on SIGTERM / Ctrl-C)")
    divergence_guard: DivergenceGuardConfig = Field(
        default_factory=DivergenceGuardConfig, description="stop a finite run whose loss climbs far "
        "above its start or whose validation accuracy stays at chance (see guard.py)")


class GenerateConfig(Strict):
    """``kdistill generate``: the teacher answers ``prompts`` (JSONL with a prompt field, or a
    text file with one prompt per line) into ``output`` (JSONL), resumably."""

    prompts: Path
    output: Path
    max_new_tokens: int = Field(128, gt=0)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(8, gt=0)
    chat_template: bool = Field(True, description="wrap prompts in the tokenizer's chat template if it has one")
    limit: Optional[int] = Field(None, gt=0, description="answer only the first N prompts")
    samples: int = Field(1, gt=0, description="answers drawn per prompt (rejection sampling: > 1, do_sample)")
    keep: Literal["all", "first_correct", "all_correct", "shortest_correct"] = Field(
        "all", description="which answers are written: all (unfiltered), or those the checker accepts "
                           "(the first, every one, or the shortest); per-prompt pass rates go beside")
    checker: Optional[CheckerConfig] = Field(
        None, description="accepts an answer against the prompt record's `answer` (JSONL prompts)")
    answer_field: str = "answer"

    @model_validator(mode="after")
    def _sampling_fits(self):
        if self.samples > 1 and not self.do_sample:
            raise ValueError("samples > 1 needs do_sample: true (greedy answers would all be the same)")
        if self.keep != "all" and self.prompts.suffix != ".jsonl":
            raise ValueError(f"keep: {self.keep} checks answers: prompts must be JSONL records with "
                             f"an `{self.answer_field}` field")
        return self

    @property
    def checked(self) -> bool:
        """Whether answers are checked (rejection sampling) rather than written as they come."""
        return self.samples > 1 or self.keep != "all" or self.checker is not None


class LiveTeacherConfig(Strict):
    kind: Literal["live"] = "live"
    model: ModelSpec
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "fp32", description="auto: bf16 where the device runs it natively, else fp32 (kdistill.precision)")
    compile: bool = False
    device: Optional[str] = Field(None, description="defaults to the student's device")
    reuse: Literal["auto", "off"] = Field(
        "auto", description="auto: a frozen teacher on inputs that never change (no augmentation) runs "
                            "once per training sample and later epochs reuse its outputs; off: run it "
                            "on every batch (kdistill.teachers.memo)")
    optim: Optional[OptimConfig] = Field(
        None, description="--role teacher: the teacher's own optimizer (else the run's optim)")
    epochs: Optional[int] = Field(
        None, gt=0, description="--role teacher: the teacher's own epochs (else train.epochs)")


class CacheTeacherConfig(Strict):
    """Teacher outputs read from a cache on disk, written once by ``kdistill cache-teacher``."""

    kind: Literal["cache"] = "cache"
    path: Path = Field(..., description="the cache folder (written by `kdistill cache-teacher`)")
    model: Optional[ModelSpec] = Field(None, description="the teacher that cache-teacher runs")
    server: Optional["ServerTeacherConfig"] = Field(
        None, description="causal LMs: cache-teacher captures a served teacher's top-k log-probabilities "
                          "instead of running teacher.model (format topk, k <= server.top_k)")
    format: Literal["dense", "topk"] = Field("dense", description="topk: k classes + tail mass")
    dtype: Literal["fp32", "bf16", "fp16", "u8"] = Field(
        "fp32", description="how outputs are stored; u8 (causal LMs): log-probs below the top-1 in `step`s")
    k: Optional[int] = Field(None, gt=0, le=65535, description="classes kept per sample when format is topk "
                             "(causal LMs: at most, per token)")
    mass: float = Field(1.0, gt=0, le=1, description="causal LMs: keep a token's top classes only until "
                        "they hold this probability mass (1: always k)")
    step: float = Field(1 / 16, gt=0, le=1, description="u8: nats per quantisation step (255 steps)")
    min_prob: float = Field(0.0, ge=0, lt=1, description="causal LMs: keep a token's top classes only while "
                            "they are at least this likely (the top-1 always)")
    tail: Literal["even", "prior"] = Field(
        "even", description="causal LMs: how the mass beyond the kept classes spreads: evenly, or by the "
                            "teacher's mean distribution to a fitted power (stored once)")
    codec: Literal["raw", "packed"] = Field(
        "raw", description="causal LMs: packed codes ids as gaps between their ranks under the prior and "
                           "LZMA-compresses each block (needs dtype u8 and tail prior)")
    shard_tokens: int = Field(2**20, gt=0, description="causal LMs: target tokens per shard file")
    verify_checksum: bool = Field(True, description="hash the cache files before training")

    @model_validator(mode="after")
    def _k_with_topk(self):
        if self.format == "topk" and self.k is None:
            raise ValueError("format 'topk' needs k (the number of classes kept per sample)")
        if self.format == "dense" and self.k is not None:
            raise ValueError("k applies to format 'topk' only: remove k or set format: topk")
        if self.server is not None:
            if self.model is not None:
                raise ValueError("give teacher.model (run here) or teacher.server (served), not both")
            if self.format != "topk" or self.k > self.server.top_k:
                raise ValueError(f"a served teacher gives top-{self.server.top_k} log-probabilities: set "
                                 f"format: topk with k <= teacher.server.top_k")
        return self


class ServerTeacherConfig(Strict):
    """A teacher behind an OpenAI-compatible HTTP server (vLLM, SGLang, llama.cpp, TGI, a hosted
    API). The API key is read from the environment variable ``api_key_env`` when a request is
    made, never from this file, so it reaches no config, log, report or checkpoint."""

    kind: Literal["server"] = "server"
    base_url: str = Field(..., description="e.g. http://127.0.0.1:8000 (the /v1 routes are added)")
    model_name: str = Field(..., description="the served model (the `model` field of each request)")
    api_key_env: Optional[str] = Field(None, description="name of the environment variable holding the key")
    timeout_s: float = Field(120.0, gt=0, description="per request (connect + read)")
    concurrency: int = Field(4, gt=0, description="requests in flight at once")
    max_retries: int = Field(4, ge=0, description="retries of a request on 429 / 5xx / a dropped connection")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay, doubled each retry")
    max_requests: Optional[int] = Field(None, gt=0, description="budget: stop the run after this many requests")
    top_k: int = Field(20, gt=0, description="log-probabilities kept per token for token-level distillation")
    tokenizer: Optional[str] = Field(None, description="the tokenizer the student reads (hub id, folder or "
                                     "smollm2-135m-instruct); default: the student's source")
    cache: Optional[Path] = Field(
        None, description="causal LMs: `kdistill cache-teacher` writes the server's top-k log-probabilities "
                          "here (top_k per token, fp16) and training reads them from there, not the server")
    extra_body: dict = Field(default_factory=dict, description="fields added to every request (e.g. "
                             "llama.cpp's {top_k: 0, min_p: 0} for plain sampling)")

    @model_validator(mode="after")
    def _no_key_in_url(self):
        if "@" in self.base_url.split("//", 1)[-1].split("/", 1)[0]:
            raise ValueError("teacher.base_url holds credentials: put the key in an environment "
                             "variable and name it in teacher.api_key_env")
        return self


CacheTeacherConfig.model_rebuild()  # its `server` field names the class above


def served_cache(server: ServerTeacherConfig) -> CacheTeacherConfig:
    """The LM teacher cache a server section's ``cache`` names: its top-k in fp16."""
    return CacheTeacherConfig(path=server.cache, format="topk", k=server.top_k, dtype="fp16", server=server)


def _teacher_kind(value) -> str:
    """A teacher section without ``kind`` is a live teacher (as before caches existed)."""
    return value.get("kind", "live") if isinstance(value, dict) else getattr(value, "kind", "live")


MemberConfig = Annotated[
    Union[Annotated[LiveTeacherConfig, Tag("live")], Annotated[CacheTeacherConfig, Tag("cache")]],
    Discriminator(_teacher_kind),
]


class EnsembleTeacherConfig(Strict):
    """Several teachers as one (Hinton et al. 2015, section 3): the weighted mean of their
    probabilities at ``temperature`` (``mean_probs``) or of their logits (``mean_logits``).
    Each member is live (with its weights) or a dense cache."""

    kind: Literal["ensemble"] = "ensemble"
    members: list[MemberConfig] = Field(..., min_length=1)
    weights: Optional[list[float]] = Field(None, description="one positive weight per member (default equal)")
    combine: Literal["mean_probs", "mean_logits"] = "mean_probs"
    temperature: float = Field(1.0, gt=0, description="mean_probs: the temperature the probabilities are "
                               "averaged at (set it to the soft term's for the paper's definition)")

    @field_validator("weights", mode="after")
    @classmethod
    def _one_weight_each(cls, weights, info):
        members = info.data.get("members")
        if weights is not None and members is not None and len(weights) != len(members):
            raise ValueError(f"{len(weights)} weights for {len(members)} members: give one per member")
        if weights is not None and not all(w > 0 for w in weights):
            raise ValueError("weights must be positive")
        return weights


TeacherConfig = Annotated[
    Union[Annotated[LiveTeacherConfig, Tag("live")], Annotated[CacheTeacherConfig, Tag("cache")],
          Annotated[ServerTeacherConfig, Tag("server")],
          Annotated[EnsembleTeacherConfig, Tag("ensemble")]],
    Discriminator(_teacher_kind),
]
