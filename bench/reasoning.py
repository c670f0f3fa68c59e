"""Reasoning distillation as DeepSeek-R1 did it, measured by exact match on held-out problems.

One teacher (a 4-layer Llama on the character tokenizer, trained here on the reference worked
solutions of 3-digit addition) writes rejection-sampled traces; students of at most 1/8 of its
parameters are trained by each recipe with the same optimizer steps and batch size:

    answers only              prompt -> "answer: N", no reasoning
    reference solutions       the worked solutions the teacher learnt from
    verified traces (R1)      teacher samples the checker accepted (4 per prompt, first correct)
    unfiltered traces         one teacher sample per prompt, right or wrong (the control)
    traces + token-level KD   the verified traces plus forward KL to the teacher at every token
    on-policy GKD             half the batches the student's own samples, scored by the teacher

The recipes are configs/reasoning_*.yaml (the same files work with the CLI); this script runs them
through kdistill's API with every ``runs/reasoning`` path moved under ``--out``, over ``--seeds``
(the teacher and its traces are one, seed 0), and writes bench/results/reasoning.json: exact match
in distribution and on the harder split (5-digit numbers), mean ± std over seeds, answer lengths,
trained target tokens, and the generation cost of the traces (samples drawn, accepted, CPU s).

    python bench/reasoning.py              # full: 3 seeds (about 45 minutes on 2 idle cores)
    python bench/reasoning.py --quick      # a few minutes on 2 idle cores, same code path, tiny budgets

Finished roles are reused (same config), generation resumes: an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml

from kdistill.config import RunConfig
from kdistill.reasoning.study import FIT, format_study, run_study

ROOT = Path(__file__).resolve().parent.parent
RECIPES = tuple(FIT)
QUICK = {"train_size": 240, "test_size": 24, "teacher_steps": 300, "student_steps": 60, "batch_size": 16,
         "eval_limit": 24, "samples": 2}
FULL = {"train_size": 2000, "test_size": 200}


def load(name: str, out: Path, quick: bool, sample_temperature: float | None = None,
         teacher_steps: int | None = None, student_steps: int | None = None) -> RunConfig:
    """configs/reasoning_NAME.yaml with its paths under ``out``; --quick shrinks steps and sizes;
    ``sample_temperature`` replaces the temperature traces are drawn at, ``teacher_steps`` the
    teacher's training steps, ``student_steps`` every student's."""
    text = (ROOT / "configs" / f"reasoning_{name}.yaml").read_text().replace("runs/reasoning", str(out))
    raw = yaml.safe_load(text)
    if sample_temperature is not None and raw.get("generate"):
        raw["generate"]["temperature"] = sample_temperature
    if teacher_steps is not None and name == "teacher":
        raw["train"]["max_steps"] = teacher_steps
    if student_steps is not None and name != "teacher":
        raw["train"]["max_steps"] = student_steps
    raw["train"]["progress"] = False
    if quick:
        q = QUICK
        raw["train"]["max_steps"] = q["teacher_steps"] if name == "teacher" else q["student_steps"]
        raw["data"]["batch_size"] = q["batch_size"]
        raw["reasoning"]["limit"] = q["eval_limit"]
        if "generate" in raw and raw["generate"]["samples"] > 1:
            raw["generate"]["samples"] = q["samples"]
        if raw.get("loss", {}).get("on_policy_fraction"):
            raw["loss"]["on_policy_max_new_tokens"] = 48
    return RunConfig.parse(raw, source=f"configs/reasoning_{name}.yaml")


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg_at_start": os.getloadavg()}


def targets(recipes: dict) -> dict:
    """The issue's targets, judged on the means (and whether the gap beats the seed spreads)."""
    def em(name):
        f = recipes[name]["exact_match"]
        return f["mean"], f["std"]

    out = {}
    for key, (a, b, margin) in {"traces_beat_answers_by_20_points": ("traces", "answers", 0.20),
                                "traces_kd_at_least_traces": ("traces_kd", "traces", 0.0),
                                "rejection_sampling_beats_unfiltered": ("traces", "unfiltered", 1e-9)}.items():
        if a not in recipes or b not in recipes:
            continue
        (ma, sa), (mb, sb) = em(a), em(b)
        paired = [100 * (x - y) for x, y in zip(recipes[a]["exact_match"]["per_seed"],
                                                recipes[b]["exact_match"]["per_seed"])]  # same seed, same data order
        out[key] = {"met": ma - mb >= margin, "gap_points": 100 * (ma - mb), "beyond_seed_spread": abs(ma - mb) > sa + sb,
                    "paired_gap_points": paired}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets (a few minutes): the code path, not the figures")
    p.add_argument("--seeds", default=None, help="student seeds (default 0,1,2; --quick: 0)")
    p.add_argument("--recipes", default=",".join(RECIPES), help="which recipes (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 is best on a shared machine)")
    p.add_argument("--sample-temperature", type=float, default=None,
                   help="draw the traces (verified and unfiltered) at this temperature (the configs: 1.0); "
                        "a hotter one makes the teacher err more, the case rejection sampling is for")
    p.add_argument("--teacher-steps", type=int, default=None,
                   help="train the teacher this many steps (the config: 1500); fewer leave an imperfect teacher, "
                        "whose greedy answers are often wrong while some samples are right: R1's setting")
    p.add_argument("--student-steps", type=int, default=None,
                   help="train every student this many steps (the configs: 800); fewer leave the traces "
                        "student below the ceiling, where a denser teacher signal (KD) can show")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/reasoning-bench[-quick])")
    p.add_argument("--json", type=Path, default=None, help="results file (default bench/results/reasoning[_quick].json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = (args.out or ROOT / "runs" / f"reasoning-bench{'-quick' if args.quick else ''}").resolve()
    json_path = args.json or ROOT / "bench" / "results" / f"reasoning{'_quick' if args.quick else ''}.json"
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    names = [n for n in args.recipes.split(",") if n]
    unknown = set(names) - set(RECIPES)
    if unknown:
        p.error(f"unknown recipes {sorted(unknown)}; choose from {','.join(RECIPES)}")
    info, t0 = machine(), time.perf_counter()
    teacher = load("teacher", out, args.quick, args.sample_temperature, args.teacher_steps)
    recipes = {n: load(n, out, args.quick, args.sample_temperature, student_steps=args.student_steps) for n in names}
    sizes = QUICK if args.quick else FULL
    result = run_study(teacher, recipes, seeds, task="add", train_size=sizes["train_size"],
                       test_size=sizes["test_size"], unfiltered_cfg=recipes.get("unfiltered"),
                       echo=lambda s: print(s, flush=True))
    ratio = result["teacher"]["parameters"] / max(f["parameters"] for f in result["recipes"].values())
    judged = targets(result["recipes"])
    info["loadavg_at_end"] = os.getloadavg()
    record = {"benchmark": "reasoning", "quick": args.quick,
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python bench/reasoning.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              **result, "teacher_to_student_parameters": ratio, "targets": judged,
              "wall_seconds_this_invocation": round(time.perf_counter() - t0, 1), "machine": info,
              "config": {"teacher": teacher.model_dump(mode="json"),
                         **{n: c.model_dump(mode="json") for n, c in recipes.items()}}}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(record, indent=2, default=str))
    problems = min(teacher.reasoning.limit or sizes["test_size"], sizes["test_size"])
    title = (f"Reasoning distillation on {result['tasks']['task']} (tasks v{result['tasks']['version']}): greedy "
             f"exact match on {problems} held-out problems per split, seeds {','.join(map(str, seeds))}"
             + ("  [QUICK: tiny budgets, not comparable]" if args.quick else ""))
    print("\n" + format_study(result, title))
    print(f"teacher / student parameters: {ratio:.1f}x")
    for key, t in (judged or {}).items():
        print(f"target {key}: {'met' if t['met'] else 'MISSED'} ({t['gap_points']:+.1f} points"
              f"{', beyond the seed spread' if t['beyond_seed_spread'] else ', within the seed spread'}; "
              f"paired by seed {', '.join(f'{g:+.1f}' for g in t['paired_gap_points'])})")
    print(f"{record['wall_seconds_this_invocation']:.0f}s this invocation; wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
