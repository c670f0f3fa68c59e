"""``kdistill generate``: the teacher answers prompts into JSONL, the data of sequence-level
distillation (train on it with data.dataset: completions_jsonl). With ``generate.samples`` /
``keep`` / ``checker`` it is rejection sampling: N answers per problem, only verified ones kept."""

from __future__ import annotations

from pathlib import Path

from kdistill.errors import ConfigError


def generate(cfg, *, progress: bool = True) -> Path:
    """The teacher answers ``generate.prompts`` into ``generate.output`` (JSONL, resumable). The
    teacher is a pretrained source, or a config-built LM trained by ``kdistill train --role teacher``."""
    from kdistill.generation import generate_answers, read_prompts, sample_traces
    from kdistill.reasoning.checkers import checker_from_config
    from kdistill.reasoning.tasks import read_problems
    from kdistill.runs.recipes.causal_lm import CausalLMRecipe, LMData

    g = cfg.generate
    spec = getattr(cfg.teacher, "model", None)
    if g is None or cfg.task != "causal_lm" or spec is None or spec.arch != "hf_causal_lm":
        raise ConfigError("`kdistill generate` needs task: causal_lm, a `generate:` section and "
                          "teacher.model: hf_causal_lm")
    recipe = CausalLMRecipe()
    tokenizer = recipe.tokenizer(cfg)
    model = recipe.teacher_model(cfg, LMData(splits=None, tokenizer=tokenizer))
    common = {"max_new_tokens": g.max_new_tokens, "do_sample": g.do_sample, "temperature": g.temperature,
              "top_p": g.top_p, "batch_size": g.batch_size, "chat_template": g.chat_template, "seed": cfg.seed,
              "source": spec.source or "trained teacher", "progress": progress}
    if g.checked:
        records = read_problems(g.prompts, getattr(cfg.data, "prompt_field", "prompt"), g.answer_field)
        sample_traces(model, tokenizer, records[: g.limit] if g.limit else records, g.output,
                      checker=checker_from_config(g.checker), samples=g.samples, keep=g.keep, **common)
        return Path(g.output)
    prompts = read_prompts(g.prompts, getattr(cfg.data, "prompt_field", "prompt"))
    generate_answers(model, tokenizer, prompts[: g.limit] if g.limit else prompts, g.output, **common)
    return Path(g.output)
