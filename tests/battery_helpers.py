"""Builders for the bad-input battery: tiny tensors datasets, tiny MLP teachers, configs as dicts
with overrides, and the real CLI entry point (``kdistill.cli.main``) run in this process."""

from __future__ import annotations

import copy
import io
import os
import pickle
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from kdistill.models import MLP

DELETE = object()  # an override value that removes the key


def tensors_file(path: Path, n: int = 240, shape=(1, 4, 4), classes: int = 3, seed: int = 0, *,
                 test_shape=None, val: int = 0, val_shape=None, nan_at: int | None = None) -> Path:
    """A ``data.dataset: tensors`` file of random samples (labels random too unless learnable)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    if nan_at is not None:
        x[nan_at] = float("nan")
    y = torch.randint(0, classes, (n,), generator=g)
    t = {"train_inputs": x, "train_labels": y,
         "test_inputs": torch.randn(32, *(test_shape or shape), generator=g),
         "test_labels": torch.randint(0, classes, (32,), generator=g)}
    if val:
        t.update(val_inputs=torch.randn(val, *(val_shape or shape), generator=g),
                 val_labels=torch.randint(0, classes, (val,), generator=g))
    save_file(t, str(path))
    return path


def teacher_file(path: Path, in_features: int = 16, hidden=(8,), classes: int = 3) -> Path:
    torch.manual_seed(5)
    save_file({k: v.contiguous() for k, v in MLP(in_features, list(hidden), classes).state_dict().items()},
              str(path))
    return path


class Exploit:
    """Unpickling this runs ``touch marker``: no loader may ever do it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps({"net.1.weight": Exploit(marker)})


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def base_config(files: dict, out: Path) -> dict:
    return {"name": "battery", "seed": 0,
            "data": {"dataset": "tensors", "path": str(files["data"]), "batch_size": 16,
                     "eval_batch_size": 64},
            "student": {"arch": "mlp", "hidden": [8]},
            "teacher": {"model": {"arch": "mlp", "hidden": [8], "weights": str(files["teacher"])}},
            "loss": {"temperature": 2.0, "soft_weight": 0.5, "hard_weight": 0.5},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "train": {"epochs": 1, "progress": False, "output_dir": str(out)}}


def write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@dataclass
class Result:
    code: int
    out: str
    err: str


def invoke(*args: str) -> Result:
    """``kdistill ARGS`` through ``kdistill.cli.main`` in this process (exit status, stdout,
    stderr); anything main lets through (an internal bug) propagates and fails the test."""
    from kdistill.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Result(code, out.getvalue(), err.getvalue())


def assert_error(res: Result, *needles: str) -> str:
    """Exit 2 and a single ``error: ...`` line on stderr holding every needle."""
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert res.code == 2, (res.code, res.out, res.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.err
    assert "Traceback" not in res.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def temporaries(folder: Path) -> list[Path]:
    """Half-written files an atomic write left behind (there must be none)."""
    return [p for p in Path(folder).rglob("*") if p.name.endswith(".tmp") or ".lock." in p.name]
