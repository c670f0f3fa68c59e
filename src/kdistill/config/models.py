"""Model specs: a fixed set of architectures plus weight files, so a config never names code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, PositiveInt, field_validator, model_validator

from kdistill import validate

from kdistill.config.base import Strict


class _ModelBase(Strict):
    weights: Optional[Path] = Field(
        None, description="a .safetensors file, or a torch file loadable with weights_only=True"
    )


class MLPSpec(_ModelBase):
    arch: Literal["mlp"] = "mlp"
    hidden: list[PositiveInt] = Field(default_factory=lambda: [800, 800])
    dropout: float = Field(0.0, ge=0, lt=1)
    input_dropout: float = Field(0.0, ge=0, lt=1)


class CNNSpec(_ModelBase):
    arch: Literal["cnn"] = "cnn"
    channels: list[PositiveInt] = Field(default_factory=lambda: [32, 64], min_length=1)
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
    _no_code = field_validator("config")(validate.check_model_config)

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
    kernel_sizes: list[PositiveInt] = Field(default_factory=lambda: [3, 4, 5], min_length=1)
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
    _no_code = field_validator("config")(validate.check_model_config)
    tokenizer: Optional[Literal["chars"]] = Field(
        None, description="a config-built model without a pretrained tokenizer: chars = one token per "
                          "character of the reasoning tasks' alphabet (kdistill.reasoning.tokenizer)")

    @model_validator(mode="after")
    def _one_origin(self) -> "HFCausalLMSpec":
        if (self.source is None) == (self.config is None):
            raise ValueError("give exactly one of source (pretrained) or config (a new model)")
        if self.tokenizer is not None and self.source is not None:
            raise ValueError("tokenizer applies to a model built from config (a pretrained source has its own)")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("config needs a model_type (e.g. llama)")
        return self


ImageModelSpec = Annotated[Union[MLPSpec, CNNSpec, PretrainedSpec], Field(discriminator="arch")]
TextModelSpec = Annotated[Union[HFSpec, TextCNNSpec], Field(discriminator="arch")]
ModelSpec = Annotated[Union[MLPSpec, CNNSpec, PretrainedSpec, HFSpec, TextCNNSpec, HFCausalLMSpec],
                      Field(discriminator="arch")]



