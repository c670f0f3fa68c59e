"""``kdistill generate``: the teacher answers prompts into JSONL, the data of sequence-level
distillation (train on it with data.dataset: completions_jsonl)."""

from __future__ import annotations

from pathlib import Path

from kdistill.errors import ConfigError


def generate(cfg, *, progress: bool = True) -> Path:
    """The teacher answers ``generate.prompts`` into ``generate.output`` (JSONL, resumable): a
    model loaded here, or a server (``teacher.kind: server``)."""
    from kdistill.generation import generate_answers, read_prompts
    from kdistill.models.hf import load_causal_lm, load_tokenizer

    g = cfg.generate
    server = getattr(cfg.teacher, "kind", None) == "server"
    spec = getattr(cfg.teacher, "model", None)
    if g is None or not (server or (spec is not None and spec.arch == "hf_causal_lm")):
        raise ConfigError("`kdistill generate` needs a `generate:` section and teacher.model: hf_causal_lm "
                          "or teacher.kind: server")
    prompts = read_prompts(g.prompts, getattr(cfg.data, "prompt_field", "prompt"))
    if g.limit:
        prompts = prompts[: g.limit]
    if server:
        from kdistill.runs.recipes.causal_lm import server_tokenizer
        from kdistill.teachers.server import answer_prompts

        answer_prompts(cfg.teacher, g, prompts, tokenizer=server_tokenizer(cfg), seed=cfg.seed, progress=progress)
        return Path(g.output)
    generate_answers(load_causal_lm(spec), load_tokenizer(spec), prompts, g.output,
                     max_new_tokens=g.max_new_tokens, do_sample=g.do_sample, temperature=g.temperature,
                     top_p=g.top_p, batch_size=g.batch_size, chat_template=g.chat_template, seed=cfg.seed,
                     source=spec.source, progress=progress, samples=g.samples)
    return Path(g.output)
