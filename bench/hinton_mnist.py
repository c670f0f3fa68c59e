"""Hinton, Vinyals & Dean 2015, section 3, on MNIST: test errors out of 10,000.

    teacher   784-1200-1200-10, dropout, transformed inputs  paper:  67
    scratch   784-800-800-10, labels only, no regularisation  paper: 146
    distilled the same student, soft targets at T=20          paper:  74

plus a control the paper does not have: the student trained on the labels alone under the same
random transforms as the distilled student's transfer set ("augmented"). The distilled student
sees transformed images, so only this row tells what the teacher adds beyond the augmentation.

The three recipes are the ready configs ``configs/hinton_{teacher,scratch,distilled}.yaml`` (the
same files work with the CLI); this script only runs them through the kdistill API for one teacher
and several student seeds, reads the test errors of the last epoch (nothing is selected on the
test set, and with ``train_on_val`` there is no val split to select on), and writes
``bench/results/hinton_mnist.json``; the control is the scratch recipe with the distilled
recipe's ``data`` section.

    python bench/hinton_mnist.py                     # full run
    python bench/hinton_mnist.py --quick             # ~1 minute, same code path
    python bench/hinton_mnist.py --roles scratch     # one part only (e.g. in a parallel process)

Every finished run is kept under ``--out`` with its config; a later invocation with the same
config reuses it instead of training again, and an interrupted run resumes from its last epoch
checkpoint, so parts can run in separate processes and a final plain invocation assembles the
table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from kdistill.config import RunConfig
from kdistill.data import Batches, DataSplits, build_data
from kdistill.engine import CHECKPOINT
from kdistill.errors import CheckpointError
from kdistill.models import build_model, count_parameters, load_weights
from kdistill.runs import distill, train
from kdistill.runs.recipes.classification import WEIGHTS
from kdistill.tasks import ClassificationTask

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {role: ROOT / "configs" / f"hinton_{role}.yaml" for role in ("teacher", "scratch", "distilled")}
PAPER = {"teacher": 67, "scratch": 146, "distilled": 74}
ROLES = ("teacher", "scratch", "augmented", "distilled")
RESULT = "result.json"


def load_configs(quick: bool, teacher: str = "mlp", student_epochs: int | None = None) -> dict[str, RunConfig]:
    """The three YAML recipes and the augmentation control; ``--quick`` shrinks data and epochs
    but keeps every setting.
    ``teacher="ccexam"`` swaps in the bundled pretrained CNN teacher (no teacher training);
    ``student_epochs`` trains the students longer or shorter (always the same for all)."""
    cfgs = {role: RunConfig.from_yaml(path) for role, path in CONFIGS.items()}
    if teacher == "ccexam":
        cfgs["distilled"] = RunConfig.from_yaml(ROOT / "configs" / "hinton_distilled_ccexam.yaml")
        cfgs["teacher"] = cfgs["distilled"].model_copy(deep=True)
    cfgs["augmented"] = cfgs["scratch"].model_copy(
        update={"name": "hinton-scratch-augmented", "data": cfgs["distilled"].data}, deep=True)
    if student_epochs:
        for role in ("scratch", "augmented", "distilled"):
            cfgs[role].train.epochs = student_epochs
    for cfg in cfgs.values():
        cfg.train.progress = False
        if quick:
            # limit_train applies before train_on_val would append val, so keep val as val here
            cfg.data.train_on_val = False
            cfg.data.limit_train = 2000
            cfg.train.epochs = 2
            cfg.optim.lr = cfg.optim.lr.model_copy(update={"warmup_steps": 4}) \
                if hasattr(cfg.optim.lr, "warmup_steps") else cfg.optim.lr
    return cfgs


def test_errors(model: torch.nn.Module, data: DataSplits, cfg: RunConfig) -> int:
    task = ClassificationTask(data.num_classes, cfg.train.device)
    return int(task.evaluate(model, Batches(data.test, cfg.data.eval_batch_size))["errors"])


def cached(run_dir: Path, cfg: RunConfig) -> dict | None:
    """A finished run's record, if it was made by exactly this config."""
    path = run_dir / RESULT
    if not (path.is_file() and (run_dir / WEIGHTS).is_file()):
        return None
    record = json.loads(path.read_text())
    return record if record["config"] == cfg.model_dump(mode="json") else None


def run_role(role: str, cfg: RunConfig, data: DataSplits, run_dir: Path,
             teacher: torch.nn.Module | None = None) -> dict:
    """Train (or reuse) one run and record its last-epoch test errors."""
    if role == "teacher" and cfg.teacher.model.arch == "pretrained":  # nothing to train
        model = load_teacher(cfg, data, run_dir)
        return {"role": role, "seed": cfg.seed, "errors": test_errors(model, data, cfg),
                "parameters": count_parameters(model), "seconds": 0.0, "pretrained": True,
                "config": cfg.model_dump(mode="json")}
    if (record := cached(run_dir, cfg)) is not None:
        print(f"  {run_dir.name}: reusing finished run ({record['errors']} errors)", flush=True)
        return record
    # the model's initial weights come from the global generator: seed it per run
    torch.manual_seed(cfg.seed)
    resume = (run_dir / CHECKPOINT).is_file()  # an interrupted run continues from its last epoch
    try:
        result = fit(role, cfg, data, run_dir, teacher, resume)
    except CheckpointError as exc:  # a checkpoint left by another config: start afresh
        print(f"  {run_dir.name}: not resuming ({exc})", flush=True)
        torch.manual_seed(cfg.seed)
        result = fit(role, cfg, data, run_dir, teacher, False)
    seconds = sum(epoch["seconds"] for epoch in result.history)  # training time, across resumes
    record = {"role": role, "seed": cfg.seed, "errors": test_errors(result.model, data, cfg),
              "parameters": count_parameters(result.model), "seconds": round(seconds, 1),
              "resumed": resume, "epochs": cfg.train.epochs, "config": cfg.model_dump(mode="json")}
    (run_dir / RESULT).write_text(json.dumps(record, indent=2))
    print(f"  {run_dir.name}: {record['errors']} test errors after {seconds:.0f}s of training", flush=True)
    return record


def fit(role: str, cfg: RunConfig, data: DataSplits, run_dir: Path,
        teacher: torch.nn.Module | None, resume: bool):
    if role == "distilled":
        return distill(cfg, teacher=teacher, data=data, out_dir=run_dir, resume=resume)
    return train(cfg, role="teacher" if role == "teacher" else "scratch", data=data, out_dir=run_dir,
                 resume=resume)


def load_teacher(cfg: RunConfig, data: DataSplits, run_dir: Path) -> torch.nn.Module:
    if cfg.teacher.model.arch == "pretrained":
        return build_model(cfg.teacher.model, data.input_shape, data.num_classes)
    spec = cfg.teacher.model.model_copy(update={"weights": None})
    return load_weights(build_model(spec, data.input_shape, data.num_classes), run_dir / WEIGHTS)


def summary(records: list[dict]) -> dict:
    errors = [r["errors"] for r in records]
    return {"mean": statistics.fmean(errors), "std": statistics.stdev(errors) if len(errors) > 1 else 0.0,
            "per_seed": {str(r["seed"]): r["errors"] for r in records}}


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "loadavg_at_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny subset and 2 epochs (~1 minute)")
    p.add_argument("--seeds", default="0,1,2", help="student seeds (the teacher uses its config's seed)")
    p.add_argument("--roles", default=",".join(ROLES),
                   help="which runs to do now; the table needs all four (finished runs are reused)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's); 1 is far faster on a shared machine")
    p.add_argument("--teacher", choices=["mlp", "ccexam"], default="mlp",
                   help="mlp: the paper's 1200-1200 dropout teacher, trained here (the main table); "
                        "ccexam: the bundled pretrained CNN (a variant, not the paper's teacher)")
    p.add_argument("--student-epochs", type=int, default=None,
                   help="epochs of both students (default: the configs'); use another --out, with the "
                        "teacher's run folder copied in, to keep both tables")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/hinton-bench[-quick])")
    p.add_argument("--json", type=Path, default=None, help="results file (default bench/results/hinton_mnist[_quick].json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    suffix = ("-ccexam" if args.teacher == "ccexam" else "") + ("-quick" if args.quick else "")
    out = args.out or ROOT / "runs" / f"hinton-bench{'-quick' if args.quick else ''}"
    json_path = args.json or ROOT / "bench" / "results" / f"hinton_mnist{suffix.replace('-', '_')}.json"
    seeds = [int(s) for s in args.seeds.split(",")]
    roles = set(args.roles.split(","))
    cfgs = load_configs(args.quick, args.teacher, args.student_epochs)
    info = machine()
    t_start = time.perf_counter()

    data_plain = build_data(cfgs["scratch"].data)
    data_transformed = build_data(cfgs["distilled"].data)  # same tensors; the transforms happen per batch
    records: dict[str, list[dict]] = {role: [] for role in ROLES}

    # the scratch student is the same for every teacher variant; the other runs depend on it
    variant = "" if args.teacher == "mlp" else f"-{args.teacher}"
    teacher_dir = out / f"teacher{variant}"
    if "teacher" in roles or args.teacher != "mlp":
        records["teacher"].append(run_role("teacher", cfgs["teacher"], data_transformed, teacher_dir))
    elif (r := cached(teacher_dir, cfgs["teacher"])) is not None:
        records["teacher"].append(r)
    for role, data, suffix in (("scratch", data_plain, ""), ("augmented", data_transformed, variant)):
        for seed in seeds:
            cfg = cfgs[role].model_copy(update={"seed": seed}, deep=True)
            run_dir = out / f"{role}{suffix}-seed{seed}"
            if role in roles:
                records[role].append(run_role(role, cfg, data, run_dir))
            elif (r := cached(run_dir, cfg)) is not None:
                records[role].append(r)
    for seed in seeds:
        cfg = cfgs["distilled"].model_copy(update={"seed": seed}, deep=True)
        run_dir = out / f"distilled{variant}-seed{seed}"
        if "distilled" in roles:
            if not records["teacher"]:
                print("no finished teacher run: run with --roles teacher first", file=sys.stderr)
                return 2
            teacher = load_teacher(cfgs["teacher"], data_transformed, teacher_dir)
            records["distilled"].append(run_role("distilled", cfg, data_transformed, run_dir, teacher))
        elif (r := cached(run_dir, cfg)) is not None:
            records["distilled"].append(r)

    missing = [role for role, recs in records.items() if len(recs) < (1 if role == "teacher" else len(seeds))]
    if missing:
        print(f"partial: {', '.join(missing)} not finished yet; no table written", flush=True)
        return 0

    figures = {role: summary(recs) for role, recs in records.items()}
    t, s, a, d = (figures[r]["mean"] for r in ROLES)
    gap_closed = (s - d) / (s - t) if s != t else float("nan")
    # what the teacher adds on top of the augmentation: positive when distillation beats the control
    teacher_gain = a - d
    met = d <= PAPER["distilled"] and gap_closed >= 0.8
    info["loadavg_at_end"] = os.getloadavg()
    result = {
        "benchmark": "hinton_mnist", "quick": args.quick,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/hinton_mnist.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "teacher_errors": figures["teacher"], "scratch_errors": figures["scratch"],
        "augmented_errors": figures["augmented"], "distilled_errors": figures["distilled"],
        "gap_closed": gap_closed, "errors_saved_over_augmented": teacher_gain,
        "paper": PAPER, "target": "distilled <= 74 errors and gap_closed >= 0.8", "target_met": met,
        "test_images": len(data_plain.test), "train_images": len(data_plain.train),
        "teacher": args.teacher, "seeds": seeds, "teacher_seed": cfgs["teacher"].seed,
        "run_seconds": {f"{r['role']}-seed{r['seed']}": r["seconds"] for recs in records.values() for r in recs},
        "sum_run_seconds": round(sum(r["seconds"] for recs in records.values() for r in recs), 1),
        "wall_seconds_this_invocation": round(time.perf_counter() - t_start, 1),
        "machine": info,
        "config": {role: cfgs[role].model_dump(mode="json") for role in cfgs},
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2))

    def fmt(f: dict) -> str:
        return f"{f['mean']:7.1f} ± {f['std']:5.1f}  ({', '.join(str(v) for v in f['per_seed'].values())})"

    print(f"\nHinton et al. 2015 §3 on MNIST: test errors out of {len(data_plain.test)}, last epoch"
          f"{'  [QUICK: tiny subset, not comparable]' if args.quick else ''}")
    print(f"{'model':<34}{'paper':>6}  {'ours: mean ± std (per seed)'}")
    teacher_name = "teacher 1200-1200 dropout+affine" if args.teacher == "mlp" else "teacher: pretrained ccexam CNN"
    print(f"{teacher_name:<34}{PAPER['teacher']:>6}  {fmt(figures['teacher'])}")
    print(f"{'student 800-800 from scratch':<34}{PAPER['scratch']:>6}  {fmt(figures['scratch'])}")
    print(f"{'  control: labels + augmentation':<34}{'-':>6}  {fmt(figures['augmented'])}")
    print(f"{'student 800-800 distilled T=20':<34}{PAPER['distilled']:>6}  {fmt(figures['distilled'])}")
    print(f"gap closed: {gap_closed:.1%}   target (<= 74 errors and >= 80% of the gap): "
          f"{'met' if met else 'MISSED'}")
    print(f"distilled vs the same student on labels + augmentation: {abs(teacher_gain):.1f} errors "
          + ("fewer: the teacher helps beyond the augmentation" if teacher_gain > 0
             else "more: the teacher adds nothing beyond the augmentation"))
    print(f"run time: {result['sum_run_seconds']:.0f}s summed over runs; "
          f"{result['wall_seconds_this_invocation']:.0f}s this invocation; wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
