"""Scale-out and fault benchmark: distillation throughput with 1 and 2 processes, and every
fault case tried with its observed outcome.

    PYTHONPATH=src python bench/scale.py [--quick]

Throughput: the Hinton MNIST pair (teacher MLP 1200-1200, random weights: a trained teacher
costs the same per batch; student MLP 800-800), the same global batch (128 = 1 x 128 = 2 x 64),
each variant a real `kdistill distill` process (`--nproc 2` execs torchrun, gloo), variants
interleaved round by round. samples/s = training samples / training-loop seconds of the last
epoch, from the run's own metrics.jsonl. Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the small-run helpers the fault tests use
from scale_helpers import cli, weights, write_config, write_teacher  # noqa: E402

from kdistill.checkpoint import load_checkpoint  # noqa: E402
from kdistill.config import RunConfig  # noqa: E402
from kdistill.data.sources import splits_from_tensors  # noqa: E402
from kdistill.errors import KDistillError  # noqa: E402
from kdistill.models import MLP, load_weights  # noqa: E402
from kdistill.runs import distill  # noqa: E402

VARIANTS = {  # name: (processes, threads per process)
    "1 process x 2 threads": (1, 2),
    "1 process x 1 thread": (1, 1),
    "2 processes x 1 thread": (2, 1),
}


def run_cli(*args, threads=1, timeout=1800):
    proc = cli(*args, threads=threads)
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def last_line(out: str) -> str:
    lines = [ln for ln in out.strip().splitlines() if ln.startswith(("error:", "stopped:"))]
    return (lines or out.strip().splitlines() or [""])[-1][:300]


# ---------------------------------------------------------------- throughput
def throughput(tmp: Path, limit: int, rounds: int) -> dict:
    teacher = write_teacher(tmp / "hinton_teacher.safetensors", hidden=(1200, 1200))
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    loads = []
    for r in range(rounds):
        for name, (nproc, threads) in VARIANTS.items():
            tag = f"tp_{nproc}x{threads}_{r}"
            cfg = write_config(tmp, tag, teacher=teacher, teacher_hidden=(1200, 1200),
                               student_hidden=(800, 800), batch_size=128 // nproc,
                               limit_train=limit, epochs=2)
            load_before = os.getloadavg()[0]
            args = ["distill", str(cfg)] + (["--nproc", str(nproc)] if nproc > 1 else [])
            env_threads = threads if nproc == 1 else None  # torchrun sets 1 thread per worker
            code, out = run_cli(*args, threads=env_threads)
            if code != 0:
                raise SystemExit(f"{name} failed:\n{out}")
            evals = [json.loads(ln)["eval"] for ln in
                     (tmp / tag / "distilled" / "metrics.jsonl").read_text().splitlines() if '"eval"' in ln]
            seconds = evals[-1]["seconds"]
            samples[name].append(limit / seconds)
            loads.append((load_before, os.getloadavg()[0]))
            print(f"  round {r + 1} {name:24s} {limit / seconds:8.0f} samples/s  "
                  f"(epoch {seconds:.1f}s, load {load_before:.1f})", flush=True)
    base = statistics.median(samples["1 process x 2 threads"])
    return {
        name: {"processes": VARIANTS[name][0], "threads_per_process": VARIANTS[name][1],
               "samples_per_s": [round(v, 1) for v in vals],
               "median_samples_per_s": round(statistics.median(vals), 1),
               "vs_1_process_2_threads": round(statistics.median(vals) / base, 3)}
        for name, vals in samples.items()
    } | {"load_average_1min_before_after_each_run": [[round(a, 1), round(b, 1)] for a, b in loads]}


# ---------------------------------------------------------------- faults
def _wait(path: Path, proc, accept, timeout=600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if accept(state):
                return state
        except (FileNotFoundError, RuntimeError, EOFError):
            pass
        time.sleep(0.01)
    return None


def _signal_case(tmp, name, cfg, signum, nproc=1):
    run_dir = tmp / name
    args = ["distill", str(cfg), "--output-dir", str(run_dir)] + (["--nproc", str(nproc)] if nproc > 1 else [])
    proc = cli(*args)
    ckpt = run_dir / "distilled" / "checkpoint.pt"
    if _wait(ckpt, proc, lambda s: s["step"] > 0) is None:
        return f"not injected: the run ended first (exit {proc.wait()})", run_dir, args
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=600)
    state = load_checkpoint(ckpt)
    if "Traceback" not in out:
        traceback = "none"
    elif "SignalException" in out and out.count("Traceback") == 1:
        traceback = "torchrun's own SignalException only"
    else:
        traceback = "yes"
    stopped = sum(line.startswith("stopped:") for line in out.splitlines())
    return (f"exit {proc.returncode}; checkpoint at step {state['step']} (epoch {state['epoch'] + 1}, "
            f"step {state['step_in_epoch']} in epoch) by {state['world_size']} process(es); "
            f"{stopped} process(es) stopped cleanly; traceback: {traceback}; says: {last_line(out)}"), run_dir, args


def faults(tmp: Path) -> list[dict]:
    cases = []

    def record(case, outcome):
        cases.append({"case": case, "outcome": outcome})
        print(f"  {case}: {outcome}", flush=True)

    teacher = write_teacher(tmp / "fault_teacher.safetensors", hidden=(256,))
    cfg = write_config(tmp, "fault_ref", teacher=teacher, teacher_hidden=(256,), batch_size=20,
                       limit_train=4000, epochs=2, checkpoint_every_steps=10)
    code, out = run_cli("distill", str(cfg))
    reference = weights(tmp / "fault_ref")

    outcome, run_dir, args = _signal_case(tmp, "sigterm", cfg, signal.SIGTERM)
    code, out = run_cli(*args, "--resume")
    same = code == 0 and all(torch.equal(weights(run_dir)[k], v) for k, v in reference.items())
    record("SIGTERM mid-epoch (1 process), then --resume",
           f"{outcome}; resume exit {code}, final weights identical to uninterrupted: {same}")

    outcome, run_dir, args = _signal_case(tmp, "sigint", cfg, signal.SIGINT)
    record("Ctrl-C (SIGINT) mid-epoch (1 process)", outcome)

    run_dir = tmp / "sigkill"
    args = ["distill", str(cfg), "--output-dir", str(run_dir)]
    proc = cli(*args)
    state = _wait(run_dir / "distilled" / "checkpoint.pt", proc, lambda s: s["step_in_epoch"] > 0)
    proc.kill()
    proc.wait()
    if state is None:
        record("SIGKILL mid-epoch, then --resume", "not injected: the run ended first")
    else:
        kept = load_checkpoint(run_dir / "distilled" / "checkpoint.pt")
        code, out = run_cli(*args, "--resume")
        same = code == 0 and all(torch.equal(weights(run_dir)[k], v) for k, v in reference.items())
        record("SIGKILL mid-epoch, then --resume",
               f"killed (exit {proc.returncode}); last checkpoint step {kept['step']} "
               f"(step {kept['step_in_epoch']} in epoch {kept['epoch'] + 1}) verified; resume exit {code}; "
               f"final weights identical to uninterrupted: {same}")

    outcome, run_dir, args = _signal_case(tmp, "ddp_sigterm", cfg, signal.SIGTERM, nproc=2)
    code, out = run_cli(*args[:-2], "--resume")  # the same command without --nproc
    record("SIGTERM to torchrun (2 processes), then resume with 1 process",
           f"{outcome}; 1-process resume exit {code}: {last_line(out)}")
    code, out = run_cli(*args, "--resume")
    record("... then --resume --nproc 2", f"exit {code}; final weights written: "
           f"{(run_dir / 'distilled' / 'model.safetensors').is_file()}")

    for damage in ("flip one byte", "truncate to a third", "delete the .sha256"):
        run_dir = tmp / f"damaged_{damage.split()[0]}"
        code, _ = run_cli("distill", str(cfg), "--output-dir", str(run_dir))
        path = run_dir / "distilled" / "checkpoint.pt"
        blob = bytearray(path.read_bytes())
        if damage.startswith("flip"):
            blob[len(blob) // 2] ^= 0xFF
            path.write_bytes(bytes(blob))
        elif damage.startswith("truncate"):
            path.write_bytes(bytes(blob[: len(blob) // 3]))
        else:
            Path(f"{path}.sha256").unlink()
        code, out = run_cli("distill", str(cfg), "--output-dir", str(run_dir), "--resume")
        record(f"damaged checkpoint ({damage}), --resume", f"exit {code}: {last_line(out)}")

    edited = cfg.with_name("fault_edited.yaml")
    edited.write_text(cfg.read_text().replace("lr: 0.1", "lr: 0.05"))
    code, out = run_cli("distill", str(edited), "--output-dir", str(tmp / "sigterm"), "--resume")
    record("--resume with a changed config (lr)", f"exit {code}: {last_line(out)}")

    x = torch.randn(96, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x[5] = float("nan")
    data = splits_from_tensors({"train_inputs": x, "train_labels": torch.arange(96) % 3,
                                "test_inputs": x[:8], "test_labels": torch.arange(8) % 3}, num_classes=3)
    for mode in ("stop", "skip"):
        small = RunConfig.parse({"data": {"dataset": "tensors", "batch_size": 8},
                                 "student": {"arch": "mlp", "hidden": [8]},
                                 "train": {"epochs": 2, "progress": False, "on_nonfinite": mode,
                                           "output_dir": str(tmp / f"nan_{mode}")}})
        try:
            distill(small, teacher=MLP(16, [12], 3), data=data)
            log = (tmp / f"nan_{mode}" / "distilled" / "metrics.jsonl").read_text()
            record(f"NaN input -> non-finite loss, on_nonfinite={mode}",
                   f"finished; {log.count('skipped')} steps skipped, weights finite")
        except KDistillError as exc:
            record(f"NaN input -> non-finite loss, on_nonfinite={mode}", f"stopped: {exc}")

    marker = tmp / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp / "evil.pt"
    torch.save({"net.1.weight": Exploit()}, evil)
    try:
        load_weights(MLP(4, [3], 2), evil)
        outcome = "LOADED"
    except KDistillError as exc:
        outcome = f"refused: {str(exc)[:160]}"
    record("malicious pickle as model weights (os.system in __reduce__)",
           f"{outcome}; code ran: {marker.exists()}")
    bad = tmp / "evil_cfg.yaml"
    bad.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    code, out = run_cli("distill", str(bad))
    record("config with a !!python/object/apply tag", f"exit {code}: {last_line(out)[:160]}; "
           f"code ran: {marker.exists()}")
    bad.write_text("train: {epochs: 1, import_module: os}\n")
    code, out = run_cli("distill", str(bad))
    record("config with an unknown key", f"exit {code}: {last_line(out)}")
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer samples, one round: same code path (a few minutes on a busy 2-core "
                    "machine, mostly process start-up)")
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/scale[_quick].json")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_scale")
    a = ap.parse_args()
    a.out = a.out or ROOT / "bench" / "results" / ("scale_quick.json" if a.quick else "scale.json")
    limit, rounds = (2000, 1) if a.quick else (6000, 2)
    import shutil

    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"throughput: MNIST {limit} samples, 2 epochs (last one timed), {rounds} round(s)")
    tp = throughput(a.work, limit, rounds)
    print("faults:")
    fl = faults(a.work)
    result = {
        "benchmark": "scale", "started": started, "quick": a.quick,
        "command": "PYTHONPATH=src python bench/scale.py" + (" --quick" if a.quick else ""),
        "config": {"teacher": "MLP 784-1200-1200-10, random weights (throughput only)",
                   "student": "MLP 784-800-800-10", "global_batch": 128, "train_samples": limit,
                   "epochs": 2, "timed": "training loop of the last epoch (no eval, no start-up)",
                   "optimizer": "sgd lr 0.1 momentum 0.9", "seed": 3, "backend": "gloo (CPU)"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_average_at_end": os.getloadavg()},
        "throughput": tp,
        "faults": fl,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print()
    print(f"{'variant':26s} {'samples/s (median)':>20s} {'vs 1x2 threads':>15s}")
    for name in VARIANTS:
        t = tp[name]
        print(f"{name:26s} {t['median_samples_per_s']:>20.0f} {t['vs_1_process_2_threads']:>15.2f}")
    print()
    print(f"{'fault case':62s} outcome")
    for c in fl:
        print(f"{c['case'][:62]:62s} {c['outcome'][:200]}")
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
