"""The reasoning study: one teacher, its rejection-sampled (and unfiltered) traces, and students
trained by each recipe with the same steps, scored by exact match on held-out problems.

Used by ``bench/reasoning.py`` (the recipes of configs/reasoning_*.yaml, several seeds) and by
``kdistill demo --reasoning`` (the smallest version, built in code). Every role is reused when a
finished run with the same config exists, and generation resumes, so a study can be interrupted.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

from kdistill.errors import DataError
from kdistill.reasoning.evaluate import reasoning_fields

#: recipe -> how its student is fitted ("train": sequence level on its data; "distill": with the teacher)
FIT = {"answers": "train", "reference": "train", "traces": "train", "unfiltered": "train",
       "traces_kd": "distill", "gkd": "distill"}
LABELS = {"answers": "answers only", "reference": "reference solutions", "traces": "verified traces (R1)",
          "unfiltered": "unfiltered traces (control)", "traces_kd": "traces + token-level KD",
          "gkd": "on-policy GKD (traces' prompts)"}


def _load_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


def _scores(cfg, model) -> dict:
    from kdistill.models import count_parameters
    from kdistill.reasoning.tokenizer import bundled_tokenizer

    t0 = time.perf_counter()
    fields = reasoning_fields(cfg.reasoning, bundled_tokenizer("chars"), model, seed=cfg.seed)
    return {**fields, "parameters": count_parameters(model), "eval_seconds": time.perf_counter() - t0}


def _fit(cfg, role: str, echo) -> dict:
    """Train (or reuse) one role of ``cfg``; its saved model's scores and run facts."""
    from kdistill import runs
    from kdistill.runs.roles import SUMMARY, role_dir, trained

    folder = role_dir(cfg, role)
    result = folder / "reasoning.json"
    if trained(cfg, role) and result.is_file():
        return json.loads(result.read_text())
    echo(f"  {cfg.name} seed {cfg.seed}: {role} ({cfg.train.max_steps} steps)")
    t0 = time.perf_counter()
    if role == "distilled":
        runs.distill(cfg)
    else:
        runs.train(cfg, role=role)
    seconds = time.perf_counter() - t0
    summary = json.loads((folder / SUMMARY).read_text())
    record = {**_scores(cfg, _load_model(folder / "model")), "seed": cfg.seed, "train_seconds": seconds,
              "steps": summary["epochs"][-1]["step"],
              "train_target_tokens": summary.get("train_target_tokens")}
    result.write_text(json.dumps(record, indent=2))
    return record


def _generate(cfg, echo) -> dict:
    from kdistill import runs
    from kdistill.generation import sidecar

    t0 = time.perf_counter()
    echo(f"  {cfg.name}: sampling traces into {cfg.generate.output}")
    out = runs.generate(cfg, progress=False)
    summary = json.loads(sidecar(Path(out), "summary").read_text())
    if summary["kept"] == 0:
        raise DataError(f"{out}: the teacher's {summary['samples_drawn']} samples include no answer the checker "
                        "accepts: train the teacher longer (train.max_steps) or draw more (generate.samples)")
    return {**summary, "wall_seconds_this_invocation": time.perf_counter() - t0}


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


def run_study(teacher_cfg, recipes: dict, seeds: list[int], *, task: str, train_size: int, test_size: int,
              unfiltered_cfg=None, echo: Callable[[str], None] = print) -> dict:
    """Tasks, teacher, traces, every recipe over ``seeds``; returns the figures (see bench/reasoning.py)."""
    from kdistill.reasoning.tasks import write_task

    tasks = Path(teacher_cfg.reasoning.test).parent
    if not (tasks / "meta.json").is_file():
        write_task(task, tasks, seed=0, train=train_size, test=test_size)
    meta = json.loads((tasks / "meta.json").read_text())
    echo(f"teacher: {teacher_cfg.train.max_steps} steps on the reference solutions")
    teacher = _fit(teacher_cfg, "teacher", echo)
    generation = {"verified": _generate(teacher_cfg, echo)}
    if unfiltered_cfg is not None:
        generation["unfiltered"] = _generate(unfiltered_cfg, echo)
    runs_by_recipe = {}
    for name, cfg in recipes.items():
        per_seed = []
        for seed in seeds:
            one = cfg.model_copy(deep=True)
            one.seed = seed
            one.train.output_dir = Path(cfg.train.output_dir) / f"seed_{seed}"
            per_seed.append(_fit(one, "distilled" if FIT[name] == "distill" else "scratch", echo))
        runs_by_recipe[name] = per_seed
    figures = {name: {key: mean_std([r[key] for r in recs])
                      for key in ("exact_match", "exact_match_hard", "reasoning_tokens") if recs[0][key] is not None}
               | {"parameters": recs[0]["parameters"], "steps": recs[0]["steps"],
                  "train_target_tokens": mean_std([r["train_target_tokens"] for r in recs])["mean"],
                  "train_seconds": sum(r["train_seconds"] for r in recs)}
               for name, recs in runs_by_recipe.items()}
    return {"tasks": meta, "teacher": teacher, "generation": generation, "recipes": figures,
            "runs": runs_by_recipe, "seeds": seeds}


def format_study(result: dict, title: str) -> str:
    """The accuracy table: teacher, then each recipe's exact match (mean ± std over seeds)."""
    def pct(f):
        if f is None:
            return "-"
        if isinstance(f, dict):
            return f"{100 * f['mean']:5.1f} ± {100 * f['std']:4.1f}" if f["std"] else f"{100 * f['mean']:5.1f}"
        return f"{100 * f:5.1f}"

    t = result["teacher"]
    lines = [title, f"{'model':<38}{'params':>9}  {'exact match':>13}  {'harder split':>13}  {'answer len':>10}",
             f"{'teacher (reference solutions)':<38}{t['parameters']:>9,}  {pct(t['exact_match']):>13}  "
             f"{pct(t['exact_match_hard']):>13}  {t['reasoning_tokens']:>10.1f}"]
    for name, f in result["recipes"].items():
        length = f.get("reasoning_tokens", {}).get("mean", float("nan"))
        lines.append(f"{'student: ' + LABELS[name]:<38}{f['parameters']:>9,}  {pct(f.get('exact_match')):>13}  "
                     f"{pct(f.get('exact_match_hard')):>13}  {length:>10.1f}")
    for kind, g in result["generation"].items():
        lines.append(f"traces ({kind}): {g['samples_drawn']} samples drawn for {g['prompts']} prompts, "
                     f"{g['accepted']} accepted, {g['kept']} kept, {g['prompts_solved']} prompts solved, "
                     f"{g['cpu_seconds']:.0f} CPU s")
    return "\n".join(lines)


DEMO_STUDENT_STEPS = 1000
DEMO_SIZES = {"train_size": 1000, "test_size": 100}


def demo_configs(out: Path):
    """The demo's teacher (presets/reasoning_demo.yaml, paths under ``out``) and its two students:
    answers only and verified traces, the same student and steps."""
    from importlib import resources

    import yaml

    from kdistill.config import RunConfig

    text = resources.files("kdistill.presets").joinpath("reasoning_demo.yaml").read_text()
    raw = yaml.safe_load(text.replace("DEMO", str(out)))
    teacher = RunConfig.parse(raw, source="reasoning_demo.yaml")
    weights = str(out / "teacher" / "teacher" / "model" / "model.safetensors")
    students = {}
    for name, path, field in (("answers", "tasks/train.jsonl", "final"), ("traces", "traces.jsonl", "completion")):
        one = {**raw, "name": f"reasoning-demo-{name}", "generate": None,
               "data": {**raw["data"], "path": str(out / path), "completion_field": field},
               "train": {**raw["train"], "max_steps": DEMO_STUDENT_STEPS, "output_dir": str(out / name)},
               "teacher": {**raw["teacher"], "model": {**raw["teacher"]["model"], "weights": weights}}}
        students[name] = RunConfig.parse(one, source="reasoning_demo.yaml")
    return teacher, students


def run_demo(out: Path, echo: Callable[[str], None] = print) -> dict:
    teacher, students = demo_configs(Path(out).resolve())
    return run_study(teacher, students, [0], task="add", echo=echo, **DEMO_SIZES)
