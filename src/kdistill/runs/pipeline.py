"""The run pipeline, written once for every task: a role's config -> the recipe's plan -> the
engine -> the saved model and summary.json, inside a torchrun session with rank-0 gating, leaving
the caller's global random state and determinism setting as it found them."""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdistill import distributed
from kdistill.checkpoint import atomic_write_text
from kdistill.config.training import served_cache
from kdistill.engine import Engine
from kdistill.errors import ConfigError
from kdistill.models import count_parameters
from kdistill.precision import precision_record
from kdistill.runs.recipes import recipe_for
from kdistill.runs.roles import SUMMARY, role_config, role_dir, role_fingerprint
from kdistill.validate import require_teacher


@dataclass
class RunResult:
    out_dir: Path
    model: nn.Module
    history: list[dict]
    data: object


@contextlib.contextmanager
def preserved_global_state():
    """A run seeds torch (and may turn on deterministic algorithms): a library call must leave
    the caller's random streams and settings as they were."""
    state = (torch.get_rng_state(), random.getstate(), np.random.get_state(),
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(state[0])
        random.setstate(state[1])
        np.random.set_state(state[2])
        torch.use_deterministic_algorithms(state[3], warn_only=state[4])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def fit(cfg, role: str, *, teacher=None, student: nn.Module | None = None, data=None,
        resume: bool = False, out_dir: Path | None = None, loggers: list | None = None) -> RunResult:
    """Train one role of a run: ``teacher`` (the config's teacher model on labels), ``scratch``
    (the student on labels alone) or ``distilled`` (the student towards the config's method).
    ``loggers``: per-step hooks (``tracking.StepLogger``) fed beside metrics.jsonl."""
    recipe = recipe_for(cfg)
    if role == "distilled" and teacher is None:
        require_teacher(cfg)
    cfg = role_config(cfg, role)
    out_dir = Path(out_dir or role_dir(cfg, role))
    with preserved_global_state(), distributed.session(cfg.train.device) as ctx:
        return _fit_in_session(cfg, role, recipe, ctx, out_dir, teacher=teacher, student=student, data=data,
                               resume=resume, loggers=loggers)


def _fit_in_session(cfg, role, recipe, ctx, out_dir, *, teacher, student, data, resume, loggers) -> RunResult:
    """The body of ``fit`` inside the torchrun session. A function of its own so that the engine,
    the sharded / DDP-wrapped model and their communication buffers are released before the
    session destroys the process group (gloo threads freeing them after that abort the process)."""
    data = data if data is not None else recipe.build_data(cfg)
    torch.manual_seed(cfg.seed)  # before the model's initialisation: same seed, same student
    plan = recipe.plan(cfg, data, role, ctx, teacher=teacher, student=student)
    out_dir.mkdir(parents=True, exist_ok=True)
    if ctx.is_main:
        atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
        if hasattr(plan.teacher, "announce"):  # which teacher source, and why
            print(plan.teacher.announce(), flush=True)
    torch.manual_seed(cfg.seed)
    engine = Engine(cfg, plan.model, plan.task, plan.train_batches, plan.val_batches, teacher=plan.teacher,
                    objective=plan.objective, out_dir=out_dir, num_outputs=plan.num_outputs,
                    loggers=loggers)
    history = engine.fit(resume=resume)
    model = plan.saved_model()
    if ctx.is_main:
        recipe.save(model, out_dir, data)
        summary = {"name": cfg.name, "task": cfg.task, "role": role, "method": plan.objective.name,
                   "mode": "distill" if plan.teacher else "train", "parameters": count_parameters(model),
                   "epochs": history, "teacher": plan.teacher.describe() if plan.teacher else None,
                   "precision": precision_record(cfg), "processes": engine.dist.world_size,
                   "fingerprint": role_fingerprint(cfg, role),
                   **plan.notes}
        atomic_write_text(out_dir / SUMMARY, json.dumps(summary, indent=2))
    return RunResult(out_dir, model, history, data)


def cache_teacher(cfg, data=None):
    """``kdistill cache-teacher``: run the config's teacher once over the training split into
    the cache that ``teacher.path`` names (``teacher.kind: cache``); the recipe says how."""
    if getattr(cfg.teacher, "kind", None) == "server" and cfg.teacher.cache is not None:
        cfg = cfg.model_copy(update={"teacher": served_cache(cfg.teacher)})  # the server's top-k, cached
    if cfg.teacher is None or cfg.teacher.kind != "cache":
        raise ConfigError("this needs `teacher.kind: cache` with teacher.path (where the cache lives) and "
                          "teacher.model (the teacher to run), or `teacher.kind: server` with teacher.cache")
    if cfg.teacher.model is None and getattr(cfg.teacher, "server", None) is None:
        raise ConfigError("teacher.model is not set: cache-teacher needs the teacher to run (teacher.path "
                          "only says where its outputs go; a causal LM's may be teacher.server)")
    recipe = recipe_for(cfg)
    with preserved_global_state():
        data = data if data is not None else recipe.build_data(cfg)
        return recipe.cache_teacher(cfg, data)


def train(cfg, *, role: str = "scratch", student: nn.Module | None = None, data=None, resume: bool = False,
          out_dir: Path | None = None, loggers: list | None = None) -> RunResult:
    """Fit a model on hard labels only: the student-from-scratch baseline (``role="scratch"``)
    or the config's teacher architecture (``role="teacher"``)."""
    if role not in ("scratch", "teacher"):
        raise ConfigError(f"role must be 'scratch' or 'teacher', got {role!r}")
    if role == "teacher" and not recipe_for(cfg).teacher_needs_training(cfg) and \
            getattr(getattr(cfg.teacher, "model", None), "arch", None) == "pretrained":
        raise ConfigError("teacher.model is a bundled pretrained model: it needs no training")
    return fit(cfg, role, student=student, data=data, resume=resume, out_dir=out_dir, loggers=loggers)


def distill(cfg, *, teacher=None, student: nn.Module | None = None, data=None, resume: bool = False,
            out_dir: Path | None = None, loggers: list | None = None) -> RunResult:
    """Distil the teacher (the config's, or a given module / source) into the student."""
    return fit(cfg, "distilled", teacher=teacher, student=student, data=data, resume=resume, out_dir=out_dir,
               loggers=loggers)
