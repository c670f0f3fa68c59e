"""Benchmark: distil a fine-tuned MiniLM-L6 teacher into a small BERT on Rotten Tomatoes.

Rows: the teacher (all-MiniLM-L6-v2 fine-tuned with a mean-pooled classification head, ~22.7M
parameters), the student trained on labels alone (from its own random initialisation), the
student distilled on logits, and the student distilled on logits + hidden states (uniform layer
map). The default student (``--student wide``) is a 2-layer BERT as wide as the teacher (384,
12 heads) with factorized token embeddings (30,522 x 60, then 60 -> 384), 0.248 of the
teacher's parameters; distilled students start DistilBERT-style from the teacher: its layers 2
and 4, and its token embeddings' best rank-60 approximation. ``--student narrow`` is the earlier
4-layer, 128-wide student (embeddings PCA-projected, hidden states through a learned 128 -> 384
projection). The scratch row has no teacher initialisation; the ablation row
scratch+teacher-init has it but learns from labels only. Every student runs with each seed; the teacher is fine-tuned once and
cached in the run folder. Figures: test accuracy (mean, std over seeds, last epoch), parameters,
CPU latency at batch 1 on a median-length review.

    python bench/text_cls.py --threads 2   # full run: ~12 min on 2 idle cores with the wide student (wall time
                                           # depends on how loaded the shared CPU is)
    python bench/text_cls.py --quick       # the same code path on a small subset (~1 CPU-minute)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from kdistill.config import RunConfig  # noqa: E402
from kdistill.data.text import build_text_data  # noqa: E402
from kdistill.evaluate import format_table, latency_ms  # noqa: E402
from kdistill.runs import STUDENT_WEIGHTS, role_dir  # noqa: E402
from kdistill import runs_text  # noqa: E402
from kdistill.tasks.text import plan_layer_terms  # noqa: E402

TEACHER = {"arch": "hf", "name_or_path": "all-MiniLM-L6-v2", "head": "mean", "freeze_embeddings": True}
STUDENTS = {
    "wide": {"arch": "hf", "tokenizer": "all-MiniLM-L6-v2", "head": "mean", "embedding_size": 60,
             "config": {"hidden_size": 384, "num_hidden_layers": 2, "num_attention_heads": 12,
                        "intermediate_size": 1536, "max_position_embeddings": 64}},
    "narrow": {"arch": "hf", "tokenizer": "all-MiniLM-L6-v2", "head": "mean",
               "config": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                          "intermediate_size": 512, "max_position_embeddings": 64}},
}
VARIANTS = {  # loss settings; None: the scratch baseline (random initialisation, labels only)
    "scratch": None,
    # ablation: labels only, but from the teacher's embeddings (separates initialisation from soft targets)
    "scratch+teacher-init": {"soft_weight": 0.0, "hard_weight": 1.0},
    "distilled-logits": {"soft_weight": 0.5, "hard_weight": 0.5},
    "distilled-logits+hidden": {"soft_weight": 0.5, "hard_weight": 0.5, "hidden_weight": 1.0},
}
DISTILLED = ("distilled-logits", "distilled-logits+hidden")
UNLABELED_FIELDS = {"unlabeled_path", "unlabeled_from_train", "limit_unlabeled"}


def settings(quick: bool) -> dict:
    if quick:
        return dict(limit_train=300, limit_eval=200, unlabeled=0, teacher_epochs=1, student_epochs=2, seeds=[0, 1])
    # 12 students x ~1 min on 2 threads (wide student); 5 epochs: 3 left the narrow student 0.5 points short
    return dict(limit_train=2000, limit_eval=1000, unlabeled=0, teacher_epochs=1, student_epochs=5, seeds=[0, 1, 2])


def base_config(s: dict, out: Path, student: str = "wide") -> dict:
    return {
        "name": "bench-text-cls", "task": "text_classification",
        "data": {"dataset": "rotten_tomatoes", "max_length": 64, "batch_size": 32, "eval_batch_size": 128,
                 "limit_train": s["limit_train"], "limit_eval": s["limit_eval"], "split_seed": 0,
                 "unlabeled_from_train": bool(s["unlabeled"]), "limit_unlabeled": s["unlabeled"] or None},
        "teacher": {"kind": "live", "model": TEACHER, "epochs": s["teacher_epochs"],
                    "optim": {"name": "adamw", "weight_decay": 0.01, "max_grad_norm": 1.0,
                              "lr": {"kind": "linear", "start": 3e-4, "end": 3e-6, "warmup_steps": 10}}},
        "student": STUDENTS[student],
        "loss": {"temperature": 2.0},
        "optim": {"name": "adamw", "lr": {"kind": "linear", "start": 1e-3, "end": 1e-5, "warmup_steps": 20},
                  "weight_decay": 0.01, "max_grad_norm": 1.0},
        "train": {"epochs": s["student_epochs"], "output_dir": str(out), "progress": False},
    }


def student_config(base: dict, variant: str, seed: int, out: Path) -> RunConfig:
    raw = json.loads(json.dumps(base))
    raw["seed"] = seed
    raw["train"]["output_dir"] = str(out / f"{variant}-seed{seed}")
    if VARIANTS[variant] is not None:
        raw["loss"].update(VARIANTS[variant])
        raw["student"] = {**raw["student"], "init_from_teacher": True}
    return RunConfig.parse(raw, source=f"bench {variant}")


def ensure_teacher(cfg: RunConfig, data) -> tuple[torch.nn.Module, float, bool]:
    """The fine-tuned teacher, trained once per configuration and then read from the run folder."""
    weights = role_dir(cfg, "teacher") / STUDENT_WEIGHTS
    key_file = role_dir(cfg, "teacher") / "bench_key.json"
    # the teacher never reads the unlabelled texts: they are not part of its key
    key = {"data": cfg.data.model_dump(mode="json", exclude=UNLABELED_FIELDS),
           "teacher": cfg.teacher.model_dump(mode="json"),
           "seed": cfg.seed}
    cached = weights.is_file() and key_file.is_file() and json.loads(key_file.read_text()) == key
    t0 = time.perf_counter()
    if not cached:
        runs_text.train(cfg, role="teacher", data=data)
        key_file.write_text(json.dumps(key))
    return runs_text.teacher_model(cfg, data), time.perf_counter() - t0, cached


def interleaved_latency(models: dict, rounds: int = 5, repeats: int = 10) -> dict[str, float]:
    """Batch-1 latency per model, measured round-robin so a shared CPU's load swings hit all alike."""
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, (model, sample) in models.items():
            times[name].append(latency_ms(model, sample, repeats)[0])  # the median
    return {name: statistics.median(t) for name, t in times.items()}


def mean_std(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "runs": xs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small subset, same code path (~1-2 min)")
    ap.add_argument("--out", type=Path, default=None, help="run folder (the teacher is cached there)")
    ap.add_argument("--limit-train", type=int, default=None, help="training texts (default 2000; quick 300)")
    ap.add_argument("--student", choices=sorted(STUDENTS), default="wide",
                    help="wide: 2 x 384 from the teacher's layers, factorized embeddings; narrow: 4 x 128")
    ap.add_argument("--unlabeled", type=int, default=None,
                    help="distil also on this many of the remaining training texts, labels dropped")
    ap.add_argument("--json", type=Path, default=None, help="results file (default bench/results/text_cls.json)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is much faster than 2 on a shared, oversubscribed CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["HF_HUB_OFFLINE"] = "1"
    s = settings(args.quick)
    if args.limit_train:
        s["limit_train"] = args.limit_train
    if args.unlabeled is not None:
        s["unlabeled"] = args.unlabeled
    out = args.out or ROOT.parent / "runs" / ("bench-text-quick" if args.quick else "bench-text")
    started = time.perf_counter()
    s["student"] = args.student
    base = base_config(s, out, args.student)
    t_cfg = RunConfig.parse(base, source="bench teacher")
    data = build_text_data(t_cfg.data)
    teacher, teacher_seconds, cached = ensure_teacher(t_cfg, data)
    print(f"teacher: {'cached' if cached else 'fine-tuned'} in {teacher_seconds:.0f}s", flush=True)

    # one memoizing teacher for every distilled run: its outputs on each training text are
    # computed once, with the hidden states the logits+hidden students need
    hidden_cfg = student_config(base, "distilled-logits+hidden", 0, out)
    probe = runs_text._model(hidden_cfg.student, data, runs_text.tokenizer_for(hidden_cfg.student))
    terms, _ = plan_layer_terms(hidden_cfg.loss, probe, teacher)
    source = runs_text.build_teacher(hidden_cfg, data, hidden_layers=terms.teacher_hidden, model=teacher)

    students, seconds = {}, {}
    for seed in s["seeds"]:
        for variant in VARIANTS:
            cfg = student_config(base, variant, seed, out)
            t0 = time.perf_counter()
            if VARIANTS[variant] is None:
                result = runs_text.train(cfg, role="scratch", data=data, out_dir=Path(cfg.train.output_dir))
            else:
                result = runs_text.distill(cfg, teacher=source, data=data, out_dir=Path(cfg.train.output_dir))
            seconds[f"{variant}-seed{seed}"] = time.perf_counter() - t0
            students[f"{variant}-seed{seed}"] = result.model
            print(f"{variant} seed {seed}: val {result.history[-1].get('val_accuracy', float('nan')):.4f} "
                  f"in {seconds[f'{variant}-seed{seed}']:.0f}s", flush=True)

    tok, t_tok = runs_text.tokenizer_for(hidden_cfg.student), runs_text.tokenizer_for(t_cfg.teacher.model)
    models = {"teacher": (teacher, "teacher"), **{n: (m, "student") for n, m in students.items()}}
    rows = runs_text.compare_models(models, data, tok, 64, t_tok, batch_size=128)
    samples = {kind: runs_text.timing_inputs(t, sorted(data.test.texts, key=len)[len(data.test) // 2], 64)
               for kind, t in (("student", tok), ("teacher", t_tok))}
    latency = interleaved_latency({n: (m, samples[kind]) for n, (m, kind) in models.items()})
    by_name = {r.name: r for r in rows}
    teacher_row = by_name["teacher"]
    summary = {"teacher": {"accuracy": teacher_row.accuracy, "parameters": teacher_row.parameters,
                           "latency_ms_b1": latency["teacher"]}}
    for variant in VARIANTS:
        runs = [by_name[f"{variant}-seed{seed}"] for seed in s["seeds"]]
        summary[variant] = {"accuracy": mean_std([r.accuracy for r in runs]),
                            "agreement": mean_std([r.agreement for r in runs]),
                            "latency_ms_b1": mean_std([latency[r.name] for r in runs]),
                            "parameters": runs[0].parameters}
    distilled = list(DISTILLED)
    best = max(distilled, key=lambda v: summary[v]["accuracy"]["mean"])
    scratch = summary["scratch"]["accuracy"]
    margins = {}
    for v in distilled:
        acc = summary[v]["accuracy"]
        spread = max(acc["std"], scratch["std"])
        margins[v] = {"gain": acc["mean"] - scratch["mean"], "std_used": spread,
                      "gain_in_std": (acc["mean"] - scratch["mean"]) / spread if spread else float("inf")}
    retention = summary[best]["accuracy"]["mean"] / teacher_row.accuracy
    param_ratio = summary[best]["parameters"] / teacher_row.parameters
    targets = {
        "distilled_beat_scratch_by_2_std": all(m["gain_in_std"] > 2 for m in margins.values()),
        "best_student_retention_ge_0.97": retention >= 0.97,
        "best_student_param_ratio_le_0.25": param_ratio <= 0.25,
    }
    result = {
        "benchmark": "text_cls", "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "bench/text_cls.py", *sys.argv[1:]]),
        "best_student": best, "best_student_retention": retention, "best_student_param_ratio": param_ratio,
        "teacher_over_best_student_latency": summary["teacher"]["latency_ms_b1"] / summary[best]["latency_ms_b1"]["mean"],
        "models": summary, "margins_over_scratch": margins, "targets_met": targets,
        "settings": s, "seeds": s["seeds"], "teacher_cached": cached, "teacher_seconds": teacher_seconds,
        "student_seconds": seconds, "total_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time(),
        "test_samples": len(data.test), "train_samples": len(data.train),
        "config": {"base": base, "variants": VARIANTS, "layer_map": terms.hidden_pairs},
        "per_run": [r.__dict__ for r in rows],
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_average_end": os.getloadavg(),
                    "caveat": "shared, loaded CPU: summary latencies are medians over 5 rounds that "
                              "cycle through every model (10 timed batch-1 runs each), so load changes "
                              "hit all models alike; compare them as ratios. per_run latencies were "
                              "measured one model after another"},
    }
    path = args.json or ROOT / "results" / ("text_cls_quick.json" if args.quick else "text_cls.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(format_table(rows, "Rotten Tomatoes test split (one row per seed)", with_verdict=False))
    print(markdown(result))
    print(f"wrote {path}")


def markdown(r: dict) -> str:
    m, lines = r["models"], []
    lines.append("| model | test accuracy (mean ± std) | agreement w/ teacher | parameters | "
                 "latency b1 (ms) |")
    lines.append("|---|---|---|---|---|")
    t = m["teacher"]
    lines.append(f"| teacher: MiniLM-L6 fine-tuned | {100 * t['accuracy']:.2f}% | - | "
                 f"{t['parameters']:,} | {t['latency_ms_b1']:.2f} |")
    for v in VARIANTS:
        a, g = m[v]["accuracy"], m[v]["agreement"]
        lines.append(f"| student: {v} | {100 * a['mean']:.2f} ± {100 * a['std']:.2f}% | "
                     f"{100 * g['mean']:.1f}% | {m[v]['parameters']:,} | {m[v]['latency_ms_b1']['mean']:.2f} |")
    lines.append("")
    lines.append(f"best student: {r['best_student']}, retention {100 * r['best_student_retention']:.1f}% "
                 f"of the teacher's accuracy at {r['best_student_param_ratio']:.3f} of its parameters, "
                 f"{r['teacher_over_best_student_latency']:.1f}x faster at batch 1.")
    for v, g in r["margins_over_scratch"].items():
        lines.append(f"{v}: {100 * g['gain']:+.2f} points over scratch = {g['gain_in_std']:.1f} std.")
    lines.append("targets: " + ", ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in r["targets_met"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
