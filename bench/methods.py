"""Which distillation methods beat plain KD, on the same budget and over seeds.

Fashion-MNIST: a CNN teacher (32-64 channels, 256 hidden, dropout; trained here once per seed and
reused) -> a small CNN student (8-16 channels, 64 hidden), every row with the same data, epochs
and optimiser (the configs ``configs/methods_*.yaml``, which run the same with ``kdistill
distill``): scratch, KD, each feature method (FitNets hints, attention transfer, RKD, PKT), DKD,
DIST, logit standardisation, KD + the best feature method, 3-teacher ensembles (teachers of
seeds 0, 1, 2: the mean of their probabilities, and of their logits; and bagged teachers, each
trained on a bootstrap resample of the training split; and seed 0 trained without augmentation,
with shifts and with rotations / scaling), KD from each single teacher (the best of
them is what an ensemble must beat), and the temperature strategies (constant T = 4 = the KD
row, cosine 20 -> 2, per-sample, learned). Per row: last-epoch
test accuracy mean ± std over the seeds (nothing is selected on the test set), agreement with
the row's teacher, training seconds per epoch relative to KD. A second, smaller table on MNIST: the bundled ccexam CNN -> an MLP
(784-256-10).

    python bench/methods.py                  # full table (about an hour on one idle core)
    python bench/methods.py --quick          # ~1 minute: tiny subset, 1 epoch, 1 seed; same code path
    python bench/methods.py --rows kd,dkd    # some rows only (finished runs are reused)
    python bench/methods.py --labelled 2000  # teachers (and scratch) on 2,000 labelled images; the
                                             # distilled students on the other 48,000 unlabelled too

Every finished run is kept under ``--out`` with a result.json; a later invocation with the same
config reuses it, so rows can run in separate processes and a plain invocation assembles the table.
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

from kdistill import distributed
from kdistill.config import RunConfig
from kdistill.data import Batches, build_data
from kdistill.engine import Engine
from kdistill.models import build_model, load_weights
from kdistill.runs import distill, train
from kdistill.runs.recipes import recipe_for
from kdistill.runs.roles import role_config, trained
from kdistill.tasks import ClassificationTask
from kdistill.teachers import combine_logits

ROOT = Path(__file__).resolve().parent.parent
RESULT = "result.json"
TEACHER_SEEDS = (0, 1, 2)
# The teachers' folders under --out -> (seed, bagged, augmentation): the same config of each seed, on the
# whole training split and on a bootstrap resample of it (data.bootstrap_seed = the seed: bagging),
# and seed 0 trained on shifted / rotated and scaled views (data.augment)
TEACHER_FOLDERS = {**{f"teacher-{kind}seed{s}": (s, kind == "bagged-", "none")
                      for kind in ("", "bagged-") for s in TEACHER_SEEDS},
                   **{f"teacher-{aug}-seed0": (0, False, aug) for aug in ("jitter", "affine")}}
# Fashion-MNIST rows: name -> config file (configs/methods_<file>.yaml); "kd_best" is built from the best feature row,
# "kd_teacher<N>" / "kd_bagged" are KD from one other teacher (the candidates for the best single-teacher student)
FASHION_ROWS = {"scratch": "kd", "kd": "kd", "hint": "hint", "attention": "attention", "rkd": "rkd", "pkt": "pkt",
                "dkd": "dkd", "dist": "dist", "standardize": "standardize", "kd_best": None, "ensemble": "ensemble",
                "ensemble_logits": "ensemble", "ensemble_bagged": "ensemble_bagged",
                "ensemble_augment": "ensemble_augment",
                "kd_teacher1": "kd", "kd_teacher2": "kd", "kd_bagged": "kd", "kd_jitter": "kd", "kd_affine": "kd",
                "cosine_t": "cosine_t", "per_sample_t": "per_sample_t", "learned_t": "learned_t"}
SINGLE_TEACHER_KD = {"kd": "teacher-seed0", "kd_teacher1": "teacher-seed1", "kd_teacher2": "teacher-seed2",
                     "kd_bagged": "teacher-bagged-seed0", "kd_jitter": "teacher-jitter-seed0",
                     "kd_affine": "teacher-affine-seed0"}
ENSEMBLE_ROWS = ("ensemble", "ensemble_logits", "ensemble_bagged", "ensemble_augment")
FEATURE_ROWS = ("hint", "attention", "rkd", "pkt")
# MNIST: the bundled CNN's penultimate ReLU (classifier.1, 128 wide) and the MLP's hidden ReLU (net.2)
MNIST_LOSSES = {
    "scratch": {}, "kd": {"temperature": 4, "soft_weight": 0.9, "hard_weight": 0.1},
    "dkd": {"method": "dkd", "alpha": 1, "beta": 8, "temperature": 4, "warmup_epochs": 1},
    "dist": {"method": "dist", "beta": 2, "gamma": 2, "temperature": 4},
    "standardize": {"temperature": 2, "soft_weight": 0.9, "hard_weight": 0.1, "standardize": True},
    "hint": {"soft_weight": 0, "hard_weight": 1,
             "terms": [{"kind": "hint", "student": "net.2", "teacher": "classifier.1", "weight": 100}]},
    "pkt": {"soft_weight": 0, "hard_weight": 1,
            "terms": [{"kind": "pkt", "student": "net.2", "teacher": "classifier.1", "weight": 234}]},
}


def quick_data(data, quick: bool):
    """The splits a run is scored on; --quick (whose configs train on 512 images) scores on 500
    test images and skips the per-epoch val pass."""
    if quick:
        data.val, data.test = None, data.test.subset(500)
    return data


def shrink(cfg: RunConfig, quick: bool, epochs: int | None) -> RunConfig:
    cfg = cfg.model_copy(deep=True)
    cfg.train.progress = False
    if epochs:
        cfg.train.epochs = epochs
    if quick:
        cfg.train.epochs = 1
        cfg.data.limit_train, cfg.data.val_size = 512, 0
        if isinstance(cfg.loss.warmup_epochs, float):
            cfg.loss.warmup_epochs = 0.5
        if getattr(cfg.optim.lr, "warmup_steps", 0):  # 4 steps in all: a 100-step warm-up never reaches the lr
            cfg.optim.lr = cfg.optim.lr.model_copy(update={"warmup_steps": 1})
        if getattr(cfg.loss.temperature, "kind", None) == "learned":
            cfg.loss.temperature = cfg.loss.temperature.model_copy(update={"loops_epochs": 0.5})
    return cfg


def teacher_folders(cfg: RunConfig) -> list[str]:
    """The folder (a key of TEACHER_FOLDERS) of each of the config's teachers."""
    members = cfg.teacher.members if cfg.teacher.kind == "ensemble" else [cfg.teacher]
    return [Path(m.model.weights).parts[-3] for m in members]


def point_teachers(cfg: RunConfig, out: Path, suffix: str = "") -> RunConfig:
    """Make the config's teacher weights those this bench trained under ``out`` (in the folders
    with ``suffix``: teachers of a --labelled run)."""
    members = cfg.teacher.members if cfg.teacher.kind == "ensemble" else [cfg.teacher]
    for member, folder in zip(members, teacher_folders(cfg)):
        member.model.weights = out / f"{folder}{suffix}" / "teacher" / "model.safetensors"
    return cfg


def labelled_data(cfg: RunConfig, labelled: int, quick: bool, unlabeled: bool) -> RunConfig:
    """``cfg`` trained on the first ``labelled`` training images (--quick: 256 of them), the rest
    of the split (--quick: 256 images) joining a student's transfer set without labels if
    ``unlabeled``: the setting of Bucila et al.'s model compression, where a teacher (an
    ensemble) labels images nobody labelled."""
    update = {"limit_train": min(labelled, 256) if quick else labelled, "unlabeled_from_train": unlabeled,
              "limit_unlabeled": 256 if quick and unlabeled else None}
    return cfg.model_copy(update={"data": cfg.data.model_copy(update=update)})


def row_target(cfg: RunConfig, teachers: dict[str, torch.Tensor]) -> torch.Tensor:
    """The test logits the row's student is compared with: its teacher's, or its ensemble's combination."""
    found = [teachers[f] for f in teacher_folders(cfg)]
    if cfg.teacher.kind != "ensemble":
        return found[0]
    return combine_logits(found, [1 / len(found)] * len(found), cfg.teacher.combine, cfg.teacher.temperature)


def logits(model, data, cfg) -> torch.Tensor:
    return ClassificationTask(data.num_classes).predict(model, Batches(data.test, cfg.data.eval_batch_size))[0]


def cached(run_dir: Path, cfg: RunConfig) -> dict | None:
    path = run_dir / RESULT
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record["config"] == cfg.model_dump(mode="json") else None


def run_student(row: str, cfg: RunConfig, data, run_dir: Path, teacher_logits: torch.Tensor) -> dict:
    if (record := cached(run_dir, cfg)) is not None:
        return record
    t0 = time.perf_counter()
    result = (train(cfg, data=data, out_dir=run_dir) if row == "scratch"
              else distill(cfg, data=data, out_dir=run_dir))
    student = logits(result.model, data, cfg)
    record = {"row": row, "seed": cfg.seed,
              "accuracy": float((student.argmax(-1) == data.test.labels).float().mean()),
              "agreement": float((student.argmax(-1) == teacher_logits.argmax(-1)).float().mean()),
              "seconds_per_epoch": statistics.fmean(e["seconds"] for e in result.history),
              "wall_seconds": round(time.perf_counter() - t0, 1), "config": cfg.model_dump(mode="json")}
    (run_dir / RESULT).write_text(json.dumps(record, indent=2))
    print(f"  {row} seed {cfg.seed}: {record['accuracy']:.4f} test accuracy", flush=True)
    return record


def fashion_teachers(out: Path, data, quick: bool, epochs: int | None, folders: set[str],
                     labelled: int | None = None) -> dict[str, torch.Tensor]:
    """Train (or reuse) the teachers in ``folders`` (keys of TEACHER_FOLDERS; with ``labelled``,
    on that many images, in folders with an -l<N> suffix); their test logits, by folder name."""
    base = shrink(RunConfig.from_yaml(ROOT / "configs" / "methods_teacher.yaml"), quick, epochs)
    if labelled:  # as many steps as on the whole split, no val pass (nothing is selected on it)
        base = labelled_data(base, labelled, quick, unlabeled=False)
        base.data.val_size = 0  # the val images are the split's last: the first N stay the same
        if not quick:
            base.train.epochs = round(base.train.epochs * len(data.train) / labelled)
    found = {}
    for folder in sorted(folders):
        seed, bagged, augment = TEACHER_FOLDERS[folder]
        cfg = base.model_copy(update={"seed": seed}, deep=True)
        cfg.data.augment = augment
        cfg.train.output_dir = out / (f"{folder}-l{labelled}" if labelled else folder)
        if bagged:
            cfg.data.bootstrap_seed = seed
        if not trained(cfg, "teacher"):
            print(f"  training {cfg.train.output_dir.name}", flush=True)
            train(cfg, role="teacher", data=data if not (bagged or labelled) else None)
        spec = cfg.teacher.model
        model = load_weights(build_model(spec, data.input_shape, data.num_classes),
                             cfg.train.output_dir / "teacher" / "model.safetensors")
        found[cfg.train.output_dir.name] = logits(model, data, cfg)
    return found


def summarise(records: list[dict], kd_seconds: float | None) -> dict:
    acc = [r["accuracy"] for r in records]
    sec = statistics.fmean(r["seconds_per_epoch"] for r in records)
    return {"accuracy_mean": statistics.fmean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "agreement_mean": statistics.fmean(r["agreement"] for r in records),
            "seconds_per_epoch": sec, "epoch_time_vs_kd": sec / kd_seconds if kd_seconds else None,
            "per_seed": {str(r["seed"]): r["accuracy"] for r in records}}


def step_costs(cfgs: dict[str, RunConfig], data, steps: int, rounds: int) -> dict[str, dict]:
    """Each row's training step once its teacher's outputs are memoized (every epoch after the
    first), in milliseconds: one engine per row on the same ``steps`` batches, the rows taking
    turns for ``rounds`` rounds (the median round counts), so that the machine's drift over
    minutes, which swings whole-run epoch times by a third, falls on every row alike. Also the
    teacher's pass per batch (the first epoch's extra cost: one pass per ensemble member)."""
    engines, teacher_ms = {}, {}
    with distributed.session("cpu") as ctx:
        for row, cfg in cfgs.items():
            role = "scratch" if row == "scratch" else "distilled"
            cfg = role_config(cfg, role)
            torch.manual_seed(cfg.seed)
            plan = recipe_for(cfg).plan(cfg, data, role, ctx)
            engine = Engine(cfg, plan.model, plan.task, plan.train_batches, teacher=plan.teacher,
                            objective=plan.objective, out_dir=Path(os.devnull), num_outputs=plan.num_outputs)
            engine.train_batches.set_epoch(0)
            batches = [b for _, b in zip(range(steps), engine.train_batches)]
            if engine.teacher is not None:  # the first epoch's pass, memoized for the rounds
                # the first call's one-time set-up untimed (unless it is the only batch)
                warm, timed = (batches[:1], batches[1:]) if len(batches) > 1 else ([], batches)
                for b in warm:
                    engine.teacher.outputs(b)
                t0 = time.perf_counter()
                for b in timed:
                    engine.teacher.outputs(b)
                teacher_ms[row] = 1e3 * (time.perf_counter() - t0) / len(timed)
            engines[row] = (engine, batches, engine.hparams(engine.total_steps // 2))  # every term switched on
        per_round: dict[str, list[float]] = {row: [] for row in engines}
        for _ in range(rounds + 1):  # round 0 warms up
            for row, (engine, batches, hp) in engines.items():
                t0 = time.perf_counter()
                for b in batches:
                    engine.train_step([b], hp)
                per_round[row].append(1e3 * (time.perf_counter() - t0) / len(batches))
        for engine, _, _ in engines.values():
            engine.objective.close()
    kd = statistics.median(per_round["kd"][1:]) if "kd" in per_round else None
    return {row: {"step_ms": statistics.median(ms[1:]), "step_vs_kd": statistics.median(ms[1:]) / kd if kd else None,
                  "rounds_ms": ms[1:], **({"teacher_pass_ms_per_batch": teacher_ms[row]} if row in teacher_ms else {})}
            for row, ms in per_round.items()}


def row_config(row: str, records: dict) -> RunConfig | None:
    """The row's config (``kd_best``: KD plus the terms of the most accurate feature row so far)."""
    if row in SINGLE_TEACHER_KD and row != "kd":  # KD from another single teacher
        cfg = RunConfig.from_yaml(ROOT / "configs" / "methods_kd.yaml")
        cfg.teacher.model.weights = Path("runs/methods-fmnist") / SINGLE_TEACHER_KD[row] / "teacher" / "model.safetensors"
        cfg.name = f"methods-{row.replace('_', '-')}"
        return cfg
    if row == "ensemble_logits":  # the same members, their mean logit (a product of experts)
        cfg = RunConfig.from_yaml(ROOT / "configs" / "methods_ensemble.yaml")
        cfg.teacher.combine, cfg.name = "mean_logits", "methods-ensemble-logits"
        return cfg
    if row != "kd_best":
        return RunConfig.from_yaml(ROOT / "configs" / f"methods_{FASHION_ROWS[row]}.yaml")
    done = {r: statistics.fmean(x["accuracy"] for x in records[r]) for r in FEATURE_ROWS if r in records}
    if not done:
        return None
    best = max(done, key=done.get)
    cfg = RunConfig.from_yaml(ROOT / "configs" / "methods_kd.yaml")
    terms = RunConfig.from_yaml(ROOT / "configs" / f"methods_{FASHION_ROWS[best]}.yaml").loss.terms
    cfg.loss = cfg.loss.model_copy(update={"terms": terms})
    cfg.name = f"methods-kd-{best}"
    return cfg


def fashion_table(out: Path, rows: set[str], seeds: list[int], quick: bool, epochs: int | None,
                  timing: tuple[int, int] | None = None, student_epochs: int | None = None,
                  student_width: tuple[list[int], int] | None = None, labelled: int | None = None) -> dict:
    data = quick_data(build_data(shrink(RunConfig.from_yaml(ROOT / "configs" / "methods_kd.yaml"), quick, epochs).data),
                      quick)
    wanted = {"teacher-seed0"} | {f for r in rows & set(SINGLE_TEACHER_KD) for f in [SINGLE_TEACHER_KD[r]]} | \
        {f for r in rows & set(ENSEMBLE_ROWS) for f in teacher_folders(row_config(r, {}))}
    teachers = fashion_teachers(out, data, quick, epochs, wanted, labelled)
    datasets: dict[str, object] = {}  # the students' splits by data section (--labelled: with and without unlabelled)

    def splits_for(cfg: RunConfig):
        key = cfg.data.model_dump_json()
        if key not in datasets:
            datasets[key] = quick_data(build_data(cfg.data), quick)
        return datasets[key]

    records: dict[str, list[dict]] = {}
    cfgs: dict[str, RunConfig] = {}
    for row in FASHION_ROWS:
        if row not in rows:
            continue
        if (cfg := row_config(row, records)) is None:
            continue
        cfg = point_teachers(shrink(cfg, quick, epochs), out, f"-l{labelled}" if labelled else "")
        folder = row
        if student_epochs:  # kept beside the configs' own runs
            cfg.train.epochs, folder = student_epochs, f"{folder}-e{student_epochs}"
        if student_width:
            channels, hidden = student_width
            cfg.student = type(cfg.student).model_validate({**cfg.student.model_dump(), "channels": channels,
                                                            "hidden": hidden})
            folder = f"{folder}-c{'x'.join(map(str, channels))}h{hidden}"
        student_data = data
        if labelled:  # the distilled students learn on every image, the scratch one on the labelled alone
            transfer = labelled_data(cfg, labelled, quick, unlabeled=True)
            cfg = transfer if row != "scratch" else labelled_data(cfg, labelled, quick, unlabeled=False)
            folder, student_data = f"{folder}-l{labelled}", splits_for(cfg)
            if row == "scratch":  # and as many steps as they take
                images = len(splits_for(transfer).transfer_set())
                cfg.train.epochs = round(cfg.train.epochs * images / len(student_data.train))
        if folder != row:
            cfg.train.output_dir = out / folder
        cfgs[row] = cfg
        target = row_target(cfg, teachers)
        records[row] = [run_student(row, cfg.model_copy(update={"seed": s}, deep=True), student_data,
                                    out / folder / f"seed{s}", target) for s in seeds]
    kd = statistics.fmean(r["seconds_per_epoch"] for r in records["kd"]) if "kd" in records else None
    table = {row: summarise(recs, kd) for row, recs in records.items()}
    if timing and "kd" in cfgs:
        for row, cost in step_costs(cfgs, data, *timing).items():
            table[row].update(cost)
    if "kd_best" in table:
        table["kd_best"]["feature_method"] = records["kd_best"][0]["config"]["name"].removeprefix("methods-kd-")
    test_accuracy = lambda t: float((t.argmax(-1) == data.test.labels).float().mean())
    for folder, teacher in teachers.items():
        table[folder.replace("-", "_")] = {"accuracy_mean": test_accuracy(teacher)}
    for row in ENSEMBLE_ROWS:
        if row in cfgs:
            table[f"teacher_{row}"] = {"accuracy_mean": test_accuracy(row_target(cfgs[row], teachers))}
    with_unlabeled = [d for d in datasets.values() if d.unlabeled is not None]
    labels = {"labelled_samples": len(with_unlabeled[0].train), "unlabeled_samples": len(with_unlabeled[0].unlabeled)} \
        if with_unlabeled else {}
    return {"table": table, "train_samples": len(data.train), "test_samples": len(data.test), **labels,
            "ensemble_target": ensemble_target(records)}


def ensemble_target(records: dict[str, list[dict]]) -> dict | None:
    """Issue 16's target: the best 3-teacher ensemble student against the best single-teacher KD
    student (of every teacher run here), by mean test accuracy; met when it is ahead by more than
    twice the larger seed std (the bar of the methods' target). The gaps paired by seed too."""
    singles = {r: records[r] for r in SINGLE_TEACHER_KD if r in records}
    ensembles = {r: records[r] for r in ENSEMBLE_ROWS if r in records}
    if not singles or not ensembles:
        return None
    mean = lambda recs: statistics.fmean(x["accuracy"] for x in recs)
    single, ensemble = max(singles, key=lambda r: mean(singles[r])), max(ensembles, key=lambda r: mean(ensembles[r]))
    by_seed = {x["seed"]: x["accuracy"] for x in singles[single]}
    gaps = [x["accuracy"] - by_seed[x["seed"]] for x in ensembles[ensemble] if x["seed"] in by_seed]
    stds = [statistics.stdev(x["accuracy"] for x in recs) if len(recs) > 1 else 0.0
            for recs in (singles[single], ensembles[ensemble])]
    gap = mean(ensembles[ensemble]) - mean(singles[single])
    return {"best_single_teacher_kd": single, "best_ensemble": ensemble, "gap": gap, "larger_std": max(stds),
            "gap_per_seed": gaps, "ensemble_ahead_in_every_seed": bool(gaps) and min(gaps) > 0,
            "met": gap > 2 * max(stds)}


def mnist_table(out: Path, rows: set[str], seeds: list[int], quick: bool, epochs: int | None,
                student_epochs: int | None = None) -> dict:
    base = RunConfig.from_yaml(ROOT / "configs" / "methods_kd.yaml").model_dump(mode="json")
    base.update(name="methods-mnist", data={"dataset": "mnist", "batch_size": 128},
                teacher={"kind": "live", "model": {"arch": "pretrained", "name": "ccexam-mnist"}},
                student={"arch": "mlp", "hidden": [256]})
    base["optim"]["lr"] = {"kind": "cosine", "start": 0.015, "end": 0.0, "warmup_steps": 100}  # ccexam's large logits diverge at 0.05
    base["train"]["epochs"] = student_epochs or 5
    data = quick_data(build_data(shrink(RunConfig.parse(base), quick, epochs).data), quick)
    teacher_cfg = RunConfig.parse(base)
    teacher = logits(build_model(teacher_cfg.teacher.model, data.input_shape, data.num_classes), data, teacher_cfg)
    records = {}
    for row, loss in MNIST_LOSSES.items():
        if row not in rows:
            continue
        cfg = shrink(RunConfig.parse({**base, "name": f"methods-mnist-{row}", "loss": loss}), quick, epochs)
        folder = out / "mnist" / (f"{row}-e{student_epochs}" if student_epochs else row)
        records[row] = [run_student(row, cfg.model_copy(update={"seed": s}, deep=True), data, folder / f"seed{s}",
                                    teacher) for s in seeds]
    kd = statistics.fmean(r["seconds_per_epoch"] for r in records["kd"]) if "kd" in records else None
    table = {row: summarise(recs, kd) for row, recs in records.items()}
    table["teacher"] = {"accuracy_mean": float((teacher.argmax(-1) == data.test.labels).float().mean())}
    return {"table": table, "train_samples": len(data.train), "test_samples": len(data.test)}


def print_table(title: str, table: dict, kd_row: str = "kd") -> None:
    print(f"\n{title}")
    print(f"{'row':<24}{'test accuracy':>22}{'agreement':>11}{'epoch time vs KD':>18}{'step vs KD':>12}")
    ranked = sorted((r for r in table if "per_seed" in table[r]), key=lambda r: -table[r]["accuracy_mean"])
    for row in ranked:
        f = table[row]
        name = row + (f" ({f['feature_method']})" if "feature_method" in f else "")
        rel = f"{f['epoch_time_vs_kd']:.2f}x" if f.get("epoch_time_vs_kd") else "-"
        step = f"{f['step_vs_kd']:.2f}x" if f.get("step_vs_kd") else "-"
        print(f"{name:<24}{f['accuracy_mean']:>14.4f} ± {f['accuracy_std']:.4f}{f['agreement_mean']:>11.4f}{rel:>18}"
              f"{step:>12}")
    for row in (r for r in table if r.startswith("teacher")):
        print(f"{row:<24}{table[row]['accuracy_mean']:>14.4f}")


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "loadavg": os.getloadavg()}


def cnn_width(text: str) -> tuple[list[int], int]:
    """``--student-width``: "16,32:128" -> ([16, 32], 128)."""
    channels, _, hidden = text.partition(":")
    try:
        return [int(c) for c in channels.split(",")], int(hidden)
    except ValueError:
        raise argparse.ArgumentTypeError(f"channels and hidden width as C1,C2:HIDDEN (e.g. 16,32:128), got {text!r}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="512 training images, 1 epoch, 1 seed (~1 minute)")
    p.add_argument("--seeds", default="0,1,2", help="student seeds (--quick: 0)")
    p.add_argument("--rows", default=",".join([*FASHION_ROWS, *MNIST_LOSSES]), help="rows to run now")
    p.add_argument("--epochs", type=int, default=None, help="override every run's epochs (teachers too)")
    p.add_argument("--student-epochs", type=int, default=None, help="override the students' epochs only "
                   "(the teachers keep theirs; run folders get an -e<N> suffix)")
    p.add_argument("--student-width", type=cnn_width, default=None, metavar="C1,C2:HIDDEN", help="the Fashion students' CNN "
                   "channels and hidden width instead of the configs' 8,16:64 (run folders get a -c<C1>x<C2>h<H> suffix)")
    p.add_argument("--labelled", type=int, default=None, metavar="N", help="the Fashion teachers (as many steps as "
                   "on the whole split) and the scratch student (as many as the distilled ones) train on the first N "
                   "training images, the distilled students on those and the rest without labels (run folders get "
                   "an -l<N> suffix)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--tables", default="fashion_mnist,mnist", help="which tables to run now")
    p.add_argument("--timing", default=None, help="steps,rounds of the Fashion rows' step timing "
                   "(default 40,7; --quick 10,2; 0 skips it)")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/methods-fmnist[-quick])")
    p.add_argument("--json", type=Path, default=None, help="results (default bench/results/methods[_quick].json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or ROOT / "runs" / f"methods-fmnist{'-quick' if args.quick else ''}"
    json_path = args.json or ROOT / "bench" / "results" / f"methods{'_quick' if args.quick else ''}.json"
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    rows = set(args.rows.split(","))
    info, t0 = machine(), time.perf_counter()
    tables = set(args.tables.split(","))
    if args.labelled is not None and args.labelled <= 0:
        p.error(f"--labelled: a positive number of labelled images, got {args.labelled}")
    if tables - {"fashion_mnist", "mnist"}:
        p.error(f"--tables: fashion_mnist and/or mnist, got {args.tables!r}")
    empty = {"table": {}, "train_samples": 0, "test_samples": 0}
    timing = tuple(int(x) for x in (args.timing or ("10,2" if args.quick else "40,7")).split(","))
    timing = timing if timing[0] > 0 else None
    fashion = (fashion_table(out, rows, seeds, args.quick, args.epochs, timing, args.student_epochs, args.student_width,
                             args.labelled)
               if "fashion_mnist" in tables else empty)
    mnist = mnist_table(out, rows, seeds, args.quick, args.epochs, args.student_epochs) if "mnist" in tables else empty
    result = {"benchmark": "methods", "quick": args.quick, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python bench/methods.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "seeds": seeds, "teacher_seeds": list(TEACHER_SEEDS), "fashion_mnist": fashion, "mnist": mnist,
              "configs": {row: f"configs/methods_{name}.yaml" for row, name in FASHION_ROWS.items() if name},
              "mnist_losses": MNIST_LOSSES, "wall_seconds": round(time.perf_counter() - t0, 1),
              "machine": {**info, "loadavg_at_end": os.getloadavg()}}
    if json_path.is_file():  # a table not run now keeps the figures of the run that made it
        earlier = json.loads(json_path.read_text())
        for name in ("fashion_mnist", "mnist"):
            if name not in tables and earlier.get(name, {}).get("table"):
                result[name] = {**earlier[name], "from_earlier_run": earlier.get(f"{name}_date", earlier["date"])}
                result[f"{name}_date"] = earlier.get(f"{name}_date", earlier["date"])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2))
    quick = "  [QUICK: tiny subset, 1 epoch, not comparable]" if args.quick else ""
    print_table(f"Fashion-MNIST, CNN teacher -> small CNN, {len(seeds)} seed(s), last-epoch test accuracy "
                f"({result['fashion_mnist']['test_samples']} images){quick}", result["fashion_mnist"]["table"])
    print_table(f"MNIST, bundled ccexam CNN -> MLP 784-256-10{quick}", result["mnist"]["table"])
    if (target := result["fashion_mnist"].get("ensemble_target")):
        print(f"\nensemble target: {target['best_ensemble']} - {target['best_single_teacher_kd']} = "
              f"{100 * target['gap']:+.2f} points (2 x larger std {200 * target['larger_std']:.2f}; per seed "
              f"{', '.join(f'{100 * g:+.2f}' for g in target['gap_per_seed'])}): {'met' if target['met'] else 'missed'}")
    print(f"\n{result['wall_seconds']:.0f}s; wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
