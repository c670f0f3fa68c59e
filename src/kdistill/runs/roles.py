"""Run directories and roles: where each role lives, which config trains it, and whether a
trained one can be reused (its summary.json records the fingerprint of what shaped it)."""

from __future__ import annotations

import json
from pathlib import Path

from kdistill.errors import ConfigError
from kdistill.runs.recipes.base import ROLES

SUMMARY = "summary.json"
# what a resumed or reused role may differ in without changing its result
NOT_SHAPING = ("train.output_dir", "train.progress", "train.log", "train.checkpoint_every_steps", "name")
# the sections that shape each role (the distilled student: all of them)
SHAPING = {"teacher": ("task", "seed", "data", "teacher.model", "optim", "train"),
           "scratch": ("task", "seed", "data", "student", "optim", "train")}


def role_dir(cfg, role: str) -> Path:
    """Where a run's teacher, scratch student and distilled student live."""
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return Path(cfg.train.output_dir) / role


def role_config(cfg, role: str):
    """The config a role trains with: the teacher may have its own optimizer and epochs."""
    if role != "teacher":
        return cfg
    if cfg.teacher is None or getattr(cfg.teacher, "model", None) is None:
        raise ConfigError("--role teacher needs a `teacher:` section with teacher.model in the config")
    t = cfg.teacher
    return cfg.model_copy(update={
        "optim": getattr(t, "optim", None) or cfg.optim,
        "train": cfg.train.model_copy(update={"epochs": getattr(t, "epochs", None) or cfg.train.epochs})})


def role_fingerprint(cfg, role: str) -> str:
    """A hash of what shapes ``role``'s model (not where it is written or how it is shown)."""
    cfg = role_config(cfg, role)
    return cfg.fingerprint(exclude=NOT_SHAPING, only=SHAPING.get(role, ()))


def trained(cfg, role: str) -> bool:
    """Whether OUT/<role> holds a finished model trained from the same shaping config."""
    path = role_dir(cfg, role) / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return summary.get("fingerprint") == role_fingerprint(cfg, role)


def trained_teacher_weights(cfg, name: str) -> Path:
    """The weights ``kdistill train --role teacher`` left in this run's teacher folder."""
    path = role_dir(cfg, "teacher") / name
    if not path.exists():
        raise ConfigError(f"teacher.model has no weights and {path} does not exist: train it first "
                          "with `kdistill train CONFIG --role teacher`, or set teacher.model.weights")
    return path
