"""Edge benchmark: is the distilled student, exported and quantized, small, fast and still right?

Two pairs, each trained here from the bundled data (no downloads):
- ``mnist_mlp``: the demo pair, the bundled ccexam MNIST CNN teacher distilled into an MLP [128];
- ``fashion_cnn``: a CNN [64, 128] / 256 teacher trained briefly (2 epochs on 10,000 Fashion-MNIST
  images: the 2-core budget), distilled into a CNN [8, 16] / 128 student on the same images.
Each distilled student goes through ``kdistill.export.export_run`` (ONNX fp32 + int8, parity on
the whole test split, interleaved timing with PyTorch and ONNX Runtime pinned to 1 intra-op
thread), then the batch-1 timing is repeated in extra trials to show how stable the speed-up is.

Targets (issue "Edge deployment"): int8 student >= 10x faster than the teacher at batch 1 on CPU,
int8 file >= 3.5x smaller than the fp32 student's, int8 accuracy within 0.5 point of fp32.

    python bench/edge.py            # full run (a few minutes on 2 cores)
    python bench/edge.py --quick    # ~1-2 minutes: fewer samples and epochs, same code path
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

from kdistill import export as ex
from kdistill.config import RunConfig
from kdistill.runs import distill, recipe_for, train
from kdistill.runs.export import export_run

HERE = Path(__file__).resolve().parent
TARGETS = {"speedup_int8_vs_teacher_b1": 10.0, "size_ratio_fp32_to_int8": 3.5, "abs_acc_delta_int8": 0.5}


def pair_configs(quick: bool, out_root: Path) -> dict[str, tuple[RunConfig, bool]]:
    """Each pair's run config and whether its teacher must be trained first."""
    limit = 2000 if quick else None
    mnist = RunConfig.parse({
        "name": "edge-mnist-mlp", "seed": 0,
        "data": {"dataset": "mnist", "batch_size": 128, "limit_train": limit},
        "teacher": {"model": {"arch": "pretrained", "name": "ccexam-mnist"}},
        "student": {"arch": "mlp", "hidden": [128]},
        "loss": {"temperature": {"kind": "cosine", "start": 8, "end": 2}, "soft_weight": 0.7, "hard_weight": 0.3},
        "optim": {"name": "sgd", "lr": {"kind": "cosine", "start": 0.1, "end": 0.001}, "momentum": 0.9},
        "train": {"epochs": 1 if quick else 2, "output_dir": str(out_root / "mnist_mlp"), "progress": False},
    })
    fashion = RunConfig.parse({
        "name": "edge-fashion-cnn", "seed": 0,
        "data": {"dataset": "fashion_mnist", "batch_size": 128, "limit_train": 2000 if quick else 10000,
                 "val_size": 1000 if quick else 2000},
        "teacher": {"model": {"arch": "cnn", "channels": [64, 128], "hidden": 256, "dropout": 0.3}},
        "student": {"arch": "cnn", "channels": [8, 16], "hidden": 128},
        "loss": {"temperature": 4.0, "soft_weight": 0.7, "hard_weight": 0.3},
        "optim": {"name": "adamw", "lr": {"kind": "cosine", "start": 0.002, "end": 0.0001}},
        "train": {"epochs": 1 if quick else 3, "output_dir": str(out_root / "fashion_cnn"), "progress": False},
    })
    return {"mnist_mlp": (mnist, False), "fashion_cnn": (fashion, True)}


def stability_trials(run_dir: Path, report: dict, teacher, student, sample: torch.Tensor, trials: int,
                     repeats: int) -> list[float]:
    """The batch-1 timing of ``export_run`` again (same four variants, interleaved the same way),
    ``trials`` times: the int8-vs-teacher speed-up of each trial shows how stable it is."""
    sessions = {k: ex.ort_session(run_dir / report["artifacts"][f"onnx_{k}"]["path"], threads=1)
                for k in ("fp32", "int8")}
    runners = {"teacher": ex.torch_runner(teacher), "student": ex.torch_runner(student),
               **{k: ex.onnx_runner(s) for k, s in sessions.items()}}
    x = sample[:1]
    out = []
    for _ in range(trials):
        t = ex.time_variants(runners, x, x, threads=1, repeats_b1=repeats, repeats_large=1)
        out.append(t["teacher"].latency_ms_b1_median / t["int8"].latency_ms_b1_median)
    return out


def thread_check(run_dir: Path, report: dict, sample: torch.Tensor, repeats: int) -> dict:
    """Why 1 intra-op thread: the int8 student's batch-1 latency with 1 and with 2 ONNX Runtime
    threads, interleaved; p95 / median is the spread (1 = perfectly stable)."""
    path = run_dir / report["artifacts"]["onnx_int8"]["path"]
    runners = {f"threads_{n}": ex.onnx_runner(ex.ort_session(path, threads=n)) for n in (1, 2)}
    t = ex.time_variants(runners, sample[:1], sample[:1], repeats_b1=repeats, repeats_large=1)
    return {k: {"median_ms": v.latency_ms_b1_median, "p95_ms": v.latency_ms_b1_p95,
                "p95_over_median": v.latency_ms_b1_p95 / v.latency_ms_b1_median} for k, v in t.items()}


def figures(report: dict) -> dict:
    rows = {r["name"].replace("distilled", "student"): r for r in report["rows"]}
    t, s, f, q = rows["teacher"], rows["student"], rows["student onnx fp32"], rows["student onnx int8"]
    return {
        "speedup_int8_vs_teacher_b1": t["latency_ms_b1_median"] / q["latency_ms_b1_median"],
        "speedup_fp32_vs_teacher_b1": t["latency_ms_b1_median"] / f["latency_ms_b1_median"],
        "speedup_torch_student_vs_teacher_b1": t["latency_ms_b1_median"] / s["latency_ms_b1_median"],
        "size_ratio_fp32_to_int8": f["size_bytes"] / q["size_bytes"],
        "acc_delta_int8": 100 * (q["accuracy"] - f["accuracy"]),
        "throughput_ratio_int8_vs_teacher": q["throughput_per_s"] / t["throughput_per_s"],
    }


def machine() -> dict:
    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "processor": platform.processor(), "torch_threads_default": torch.get_num_threads(),
            **ex.library_versions()}


def markdown(results: dict) -> str:
    lines = ["| pair | variant | size (kB) | accuracy | b1 median (ms) | b1 p95 (ms) | throughput (/s, b256) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for pair, m in results["models"].items():
        for r in m["rows"]:
            lines.append(f"| {pair} | {r['name']} ({r['runtime']} {r['precision']}) | {r['size_bytes'] / 1e3:,.1f} | "
                         f"{100 * r['accuracy']:.2f}% | {r['latency_ms_b1_median']:.4f} | "
                         f"{r['latency_ms_b1_p95']:.4f} | {r['throughput_per_s']:,.0f} |")
    lines += ["", "| pair | int8 vs teacher, b1 (target >= 10x) | fp32 / int8 size (target >= 3.5x) | "
              "int8 - fp32 accuracy (target within 0.5 pt) | speed-up over trials | met |",
              "|---|---:|---:|---:|---|---|"]
    for pair, m in results["models"].items():
        trials = ", ".join(f"{v:.1f}x" for v in m["speedup_trials"])
        met = "yes" if all(m["met"].values()) else "no: " + ", ".join(k for k, v in m["met"].items() if not v)
        lines.append(f"| {pair} | {m['speedup_int8_vs_teacher_b1']:.1f}x | {m['size_ratio_fp32_to_int8']:.2f}x | "
                     f"{m['acc_delta_int8']:+.2f} pt | {trials} | {met} |")
    lines += ["", "| pair | int8 b1 median, 1 thread (ms) | p95 / median | int8 b1 median, 2 threads (ms) | p95 / median |",
              "|---|---:|---:|---:|---:|"]
    for pair, m in results["models"].items():
        a, b = m["int8_b1_by_ort_threads"]["threads_1"], m["int8_b1_by_ort_threads"]["threads_2"]
        lines.append(f"| {pair} | {a['median_ms']:.4f} | {a['p95_over_median']:.2f} | {b['median_ms']:.4f} | "
                     f"{b['p95_over_median']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples, epochs and repeats")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-edge"), help="run directories")
    ap.add_argument("--results", type=Path, default=None, help="default bench/results/edge[_quick].json")
    args = ap.parse_args()
    args.results = args.results or HERE / "results" / ("edge_quick.json" if args.quick else "edge.json")
    repeats_b1, repeats_large, trials = (200, 5, 2) if args.quick else (1000, 20, 3)
    started = time.time()
    load_before = os.getloadavg()
    results = {"benchmark": "edge", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "command": "python bench/edge.py" + (" --quick" if args.quick else ""),
               "quick": args.quick, "seed": 0, "machine": machine(), "targets": TARGETS,
               "timing": {"threads": 1, "note": "PyTorch and ONNX Runtime both pinned to 1 intra-op thread "
                          "while timing; variants interleaved in the same loop", "repeats_b1": repeats_b1,
                          "repeats_large": repeats_large, "batch_size_large": 256, "stability_trials": trials},
               "models": {}}
    for pair, (cfg, train_teacher) in pair_configs(args.quick, args.out).items():
        t0 = time.time()
        if train_teacher:
            teacher_cfg = cfg.model_copy(deep=True)
            teacher_cfg.train.epochs = 1 if args.quick else 2
            train(teacher_cfg, role="teacher")
        run = distill(cfg)
        trained_s = time.time() - t0
        report = export_run(cfg.train.output_dir, quantize="int8", threads=1, repeats_b1=repeats_b1,
                               repeats_large=repeats_large, large_batch=256)
        teacher = recipe_for(cfg).load(cfg, run.data, "teacher")
        trial_speedups = stability_trials(Path(cfg.train.output_dir), report, teacher, run.model.eval(),
                                          run.data.test.inputs, trials, repeats_b1 // 2)
        threads = thread_check(Path(cfg.train.output_dir), report, run.data.test.inputs, repeats_b1)
        fig = figures(report)
        met = {"speedup_int8_vs_teacher_b1": fig["speedup_int8_vs_teacher_b1"] >= TARGETS["speedup_int8_vs_teacher_b1"],
               "size_ratio_fp32_to_int8": fig["size_ratio_fp32_to_int8"] >= TARGETS["size_ratio_fp32_to_int8"],
               "acc_delta_int8": abs(fig["acc_delta_int8"]) <= TARGETS["abs_acc_delta_int8"]}
        results["models"][pair] = {**fig, "speedup_trials": trial_speedups, "met": met,
                                   "int8_b1_by_ort_threads": threads,
                                   "train_seconds": round(trained_s, 1), "config": cfg.model_dump(mode="json"),
                                   "rows": report["rows"], "parity": report["parity"],
                                   "artifacts": report["artifacts"]}
    results["load_average_before_after"] = [load_before, os.getloadavg()]
    results["seconds"] = round(time.time() - started, 1)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    print(f"\nload average (1, 5, 15 min) before {load_before}, after {os.getloadavg()}; "
          f"{results['seconds']} s; wrote {args.results}")


if __name__ == "__main__":
    main()
