"""``kdistill generate``: the teacher answers prompts into JSONL, the data of sequence-level
distillation (train on it with data.dataset: completions_jsonl). With ``generate.samples`` /
``keep`` / ``checker`` it is rejection sampling: N answers per problem, only verified ones kept."""

from __future__ import annotations

from pathlib import Path

from kdistill.errors import ConfigError


def generate(cfg, *, progress: bool = True) -> Path:
    """The teacher answers ``generate.prompts`` into ``generate.output`` (JSONL, resumable): a
    pretrained source, a config-built LM trained by ``kdistill train --role teacher``, or a server
    (``teacher.kind: server``)."""
    from kdistill.config import CausalLMConfig
    from kdistill.generation import generate_answers, read_prompts, sample_traces
    from kdistill.reasoning.checkers import checker_from_config
    from kdistill.reasoning.tasks import read_problems
    from kdistill.runs.recipes.causal_lm import CausalLMRecipe, LMData

    g = cfg.generate
    server = getattr(cfg.teacher, "kind", None) == "server"
    spec = getattr(cfg.teacher, "model", None)
    if g is None or not isinstance(cfg, CausalLMConfig) or not (
            server or (spec is not None and spec.arch == "hf_causal_lm")):
        raise ConfigError("`kdistill generate` needs task: causal_lm, a `generate:` section and "
                          "teacher.model: hf_causal_lm or teacher.kind: server")
    field = getattr(cfg.data, "prompt_field", "prompt")
    if server:
        if g.keep != "all" or g.checker is not None:
            raise ConfigError("generate.keep / generate.checker (rejection sampling) run with a teacher "
                              "loaded here; with teacher.kind: server write all samples (keep: all) and "
                              "filter them afterwards")
        from kdistill.runs.recipes.causal_lm import server_tokenizer
        from kdistill.teachers.server import answer_prompts

        prompts = read_prompts(g.prompts, field)
        answer_prompts(cfg.teacher, g, prompts[: g.limit] if g.limit else prompts,
                       tokenizer=server_tokenizer(cfg), seed=cfg.seed, progress=progress)
        return Path(g.output)
    recipe = CausalLMRecipe()
    tokenizer = recipe.tokenizer(cfg)
    model = recipe.teacher_model(cfg, LMData(splits=None, tokenizer=tokenizer))
    common = {"max_new_tokens": g.max_new_tokens, "do_sample": g.do_sample, "temperature": g.temperature,
              "top_p": g.top_p, "batch_size": g.batch_size, "chat_template": g.chat_template, "seed": cfg.seed,
              "source": spec.source or "trained teacher", "progress": progress}
    if g.checked:
        records = read_problems(g.prompts, field, g.answer_field)
        sample_traces(model, tokenizer, records[: g.limit] if g.limit else records, g.output,
                      checker=checker_from_config(g.checker), samples=g.samples, keep=g.keep, **common)
        return Path(g.output)
    prompts = read_prompts(g.prompts, field)
    generate_answers(model, tokenizer, prompts[: g.limit] if g.limit else prompts, g.output, **common)
    return Path(g.output)
