"""``kdistill generate``: the teacher answers prompts into JSONL, the data of sequence-level
distillation (train on it with data.dataset: completions_jsonl)."""

from __future__ import annotations

from pathlib import Path

from kdistill.errors import ConfigError


def generate(cfg, *, progress: bool = True) -> Path:
    """The teacher answers ``generate.prompts`` into ``generate.output`` (JSONL, resumable)."""
    from kdistill.generation import generate_answers, read_prompts
    from kdistill.models.hf import load_causal_lm, load_tokenizer

    g = cfg.generate
    spec = getattr(cfg.teacher, "model", None)
    if g is None or spec is None or spec.arch != "hf_causal_lm":
        raise ConfigError("`kdistill generate` needs a `generate:` section and teacher.model: hf_causal_lm")
    prompts = read_prompts(g.prompts, getattr(cfg.data, "prompt_field", "prompt"))
    if g.limit:
        prompts = prompts[: g.limit]
    generate_answers(load_causal_lm(spec), load_tokenizer(spec), prompts, g.output,
                     max_new_tokens=g.max_new_tokens, do_sample=g.do_sample, temperature=g.temperature,
                     top_p=g.top_p, batch_size=g.batch_size, chat_template=g.chat_template, seed=cfg.seed,
                     source=spec.source, progress=progress)
    return Path(g.output)
