"""The proof, for every task: teacher vs the student from scratch vs the distilled student on
held-out data, in comparison.json and report.html; over seeds as mean ± std; trained roles reused
when their config has not changed."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

from kdistill.checkpoint import atomic_write_text
from kdistill.engine import METRICS
from kdistill.errors import ConfigError
from kdistill.evaluate import aggregate_rows
from kdistill.runs.pipeline import distill, train
from kdistill.runs.recipes import ROLES, recipe_for
from kdistill.runs.roles import trained

COMPARISON = "comparison.json"


def evaluate_run(cfg, data=None) -> list:
    """Compare the run's trained roles on held-out data; write comparison.json (everything the
    report plots, so it never re-trains) and report.html."""
    recipe = recipe_for(cfg)
    data = data if data is not None else recipe.build_data(cfg)
    models = {role: m for role in ROLES if (m := recipe.load(cfg, data, role)) is not None}
    if not models:
        raise ConfigError(f"nothing to evaluate under {cfg.train.output_dir}: run `kdistill train` "
                          "and `kdistill distill` with this config first")
    rows, split = recipe.compare(cfg, data, models)
    write_comparison(cfg, rows, split)
    return rows


def write_comparison(cfg, rows: list, split: dict) -> None:
    out = Path(cfg.train.output_dir)
    logs = {r.name: f"{r.name}/{METRICS}" if (out / r.name / METRICS).is_file() else None for r in rows}
    atomic_write_text(out / "config.yaml", cfg.to_yaml())
    atomic_write_text(out / COMPARISON, json.dumps({
        "name": cfg.name, "task": cfg.task, "seed": cfg.seed, **split, "logs": logs,
        "models": [asdict(r) for r in rows]}, indent=2))
    write_report(out)


def write_report(out: Path) -> None:
    """The HTML report beside comparison.json; without matplotlib (the `report` extra) a note."""
    if importlib.util.find_spec("matplotlib") is None:
        print(f"note: no report.html in {out}: install kdistill[report] for matplotlib", file=sys.stderr)
        return
    from kdistill.report import write_report as write

    write(out)


def run_comparison(cfg) -> list:
    """The whole proof: the teacher (trained if it needs training and is not yet), the scratch
    student, the distilled student, then the comparison. A role already trained from the same
    config (same fingerprint of what shapes it) is reused, not retrained."""
    recipe = recipe_for(cfg)
    data = recipe.build_data(cfg)
    fresh_teacher = recipe.teacher_needs_training(cfg) and not trained(cfg, "teacher")
    if fresh_teacher:
        train(cfg, role="teacher", data=data)
    if cfg.teacher is not None and cfg.teacher.kind == "cache" and (
            fresh_teacher or not Path(cfg.teacher.path).exists()):
        from kdistill.teachers.cache import cache_teacher

        cache_teacher(cfg, data)  # a freshly trained teacher makes any older cache stale
    if not trained(cfg, "scratch"):
        train(cfg, role="scratch", data=data)
    if cfg.teacher is not None and (fresh_teacher or not trained(cfg, "distilled")):
        distill(cfg, data=data)
    return evaluate_run(cfg, data)


def seed_config(cfg, seed: int):
    """The config of one seed of a multi-seed run: its own seed and OUT/seed_<seed>/."""
    one = cfg.model_copy(deep=True)
    one.seed = seed
    one.train.output_dir = Path(cfg.train.output_dir) / f"seed_{seed}"
    return one


def run_seeds(cfg, seeds: int) -> list[dict]:
    """``run_comparison`` over seeds cfg.seed, cfg.seed+1, ... in OUT/seed_<k>/; OUT/comparison.json
    and OUT/report.html give each metric of the last-epoch models as mean ± std over the seeds."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    configs = [seed_config(cfg, cfg.seed + k) for k in range(seeds)]
    runs = [run_comparison(c) for c in configs]
    out = Path(cfg.train.output_dir)
    aggregate = aggregate_rows(runs)
    atomic_write_text(out / "config.yaml", cfg.to_yaml())
    atomic_write_text(out / COMPARISON, json.dumps({
        "name": cfg.name, "task": cfg.task, "split": "test", "seeds": [c.seed for c in configs],
        "runs": [Path(c.train.output_dir).name for c in configs], "epoch": "last",
        "models": aggregate}, indent=2))
    write_report(out)
    return aggregate
