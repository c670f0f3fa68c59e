"""Small MNIST distillation runs for the distributed and fault tests (and bench/scale.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from kdistill.models import MLP

SRC = Path(__file__).resolve().parents[1] / "src"


def write_teacher(path: Path, hidden=(64,), seed: int = 1) -> Path:
    """A random MLP teacher's weights (the tests need a fixed teacher, not a good one)."""
    torch.manual_seed(seed)
    teacher = MLP(784, list(hidden), 10)
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(path))
    return path


def write_config(tmp: Path, name: str = "run", *, teacher: Path, batch_size: int = 16,
                 limit_train: int = 256, epochs: int = 1, student_hidden=(32,),
                 teacher_hidden=(64,), **train) -> Path:
    """A distillation config on the first ``limit_train`` MNIST digits; returns its YAML path."""
    cfg = {
        "name": name, "seed": 3,
        "data": {"dataset": "mnist", "batch_size": batch_size, "limit_train": limit_train,
                 "eval_batch_size": 2000},
        "teacher": {"kind": "live", "model": {"arch": "mlp", "hidden": list(teacher_hidden),
                                              "weights": str(teacher)}},
        "student": {"arch": "mlp", "hidden": list(student_hidden)},
        "loss": {"temperature": 4.0, "soft_weight": 0.7, "hard_weight": 0.3},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "train": {"epochs": epochs, "progress": False, "output_dir": str(tmp / name), **train},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli_env(threads: int | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


@contextlib.contextmanager
def torch_threads(n: int):
    """Run this process's reference with the subprocesses' thread count: results then match bit
    for bit, and on a busy 2-core machine one thread avoids OpenMP spinning (10x the CPU time)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cli(*args: str, threads: int | None = 1, **kw) -> subprocess.Popen:
    """``python -m kdistill ARGS`` as a real subprocess (one thread per process, as torchrun
    sets for several processes)."""
    return subprocess.Popen([sys.executable, "-m", "kdistill", *args], env=cli_env(threads),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "distilled" / "model.safetensors"))
