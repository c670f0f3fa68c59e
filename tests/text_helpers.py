"""Shared builders for the text tests: a tiny WordPiece vocabulary, a toy sentiment corpus and
tiny BERT configs, all made offline in a temporary folder."""

from __future__ import annotations

import csv
import random
from pathlib import Path

POSITIVE = ["good", "great", "fun", "moving", "clever", "warm"]
NEGATIVE = ["bad", "awful", "dull", "boring", "clumsy", "cold"]
NEUTRAL = ["the", "film", "movie", "plot", "is", "was", "a", "very", "story", "and"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_vocab(folder: Path) -> Path:
    path = folder / "vocab.txt"
    path.write_text("\n".join(SPECIALS + POSITIVE + NEGATIVE + NEUTRAL) + "\n")
    return path


def toy_rows(n: int, seed: int = 0) -> list[dict]:
    """Sentences whose label is the sentiment of the words they contain."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(POSITIVE if label == "pos" else NEGATIVE, 2) + rng.sample(NEUTRAL, rng.randint(1, 6))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_csv(path: Path, rows: list[dict], columns=("text", "label")) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def tiny_bert(hidden: int = 16, layers: int = 2, heads: int = 2) -> dict:
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "intermediate_size": 2 * hidden, "vocab_size": len(SPECIALS + POSITIVE + NEGATIVE + NEUTRAL),
            "max_position_embeddings": 32}


def text_config(tmp_path: Path, *, n: int = 96, student: dict | None = None, loss: dict | None = None,
                epochs: int = 2) -> dict:
    """A full text_classification run config over a toy CSV corpus and tiny BERTs."""
    vocab = write_vocab(tmp_path)
    data = write_csv(tmp_path / "toy.csv", toy_rows(n))
    return {
        "name": "toy-text", "seed": 0, "task": "text_classification",
        "data": {"dataset": "csv", "path": str(data), "max_length": 16, "batch_size": 16,
                 "eval_batch_size": 32},
        "teacher": {"kind": "live", "model": {"arch": "hf", "config": tiny_bert(32, 4, 4),
                                              "tokenizer": str(vocab), "head": "mean"}},
        "student": student or {"arch": "hf", "config": tiny_bert(16, 2, 4), "tokenizer": str(vocab)},
        "loss": loss or {"temperature": 2.0, "soft_weight": 0.5, "hard_weight": 0.5},
        "optim": {"name": "adamw", "lr": 3e-3},
        "train": {"epochs": epochs, "output_dir": str(tmp_path / "run"), "progress": False},
    }
