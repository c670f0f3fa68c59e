"""Generation-based evaluation: the model answers held-out problems and a checker scores them.

Greedy exact match (the headline), pass@k from sampled answers (the unbiased estimator of Chen
et al. 2021), the mean length of the greedy answers in tokens (how much it reasons) and
generation speed. These are the figures reasoning is measured by; perplexity is not one."""

from __future__ import annotations

import math
import time
from pathlib import Path

from torch import nn

from kdistill.generation import left_padding, sample_completions
from kdistill.reasoning.checkers import Checker, checker_from_config
from kdistill.reasoning.tasks import read_problems


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that at least one of k answers drawn without replacement from n, c of them
    correct, is correct: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score_problems(model: nn.Module, tokenizer, records: list[dict], checker: Checker, *,
                   max_new_tokens: int = 128, batch_size: int = 64, pass_k: int | None = None,
                   samples: int = 8, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0) -> dict:
    """exact_match (greedy), pass_at_k (when ``pass_k``), mean_tokens of the greedy answers,
    tokens_per_s of greedy generation, problems."""
    correct, tokens, seconds, passes = 0, 0, 0.0, []
    with left_padding(tokenizer):
        for start in range(0, len(records), batch_size):
            batch = records[start:start + batch_size]
            t0 = time.perf_counter()
            greedy = sample_completions(model, tokenizer, [r["prompt"] for r in batch],
                                        max_new_tokens=max_new_tokens)
            seconds += time.perf_counter() - t0
            for record, ((text, n),) in zip(batch, greedy):
                correct += checker.accepts(record, text)
                tokens += n
            if pass_k is not None:
                drawn = sample_completions(model, tokenizer, [r["prompt"] for r in batch], samples=samples,
                                           do_sample=True, temperature=temperature, top_p=top_p,
                                           max_new_tokens=max_new_tokens, seed=seed * 1_000_003 + start)
                for record, answers in zip(batch, drawn):
                    c = sum(checker.accepts(record, text) for text, _ in answers)
                    passes.append(pass_at_k(samples, c, pass_k))
    n = max(len(records), 1)
    return {"exact_match": correct / n, "pass_at_k": sum(passes) / n if pass_k is not None else None,
            "mean_tokens": tokens / n, "tokens_per_s": tokens / seconds if seconds else math.nan,
            "problems": len(records)}


def _problems(path: Path, limit: int | None) -> list[dict]:
    records = read_problems(path)
    return records[:limit] if limit else records


def reasoning_fields(section, tokenizer, model: nn.Module, seed: int = 0) -> dict:
    """The comparison-row fields (``LMReport``) of a config's ``reasoning:`` section for one model."""
    checker = checker_from_config(section.checker)
    options = {"max_new_tokens": section.max_new_tokens, "batch_size": section.batch_size, "seed": seed}
    main = score_problems(model, tokenizer, _problems(section.test, section.limit), checker, pass_k=section.pass_k,
                          samples=section.samples, temperature=section.temperature, top_p=section.top_p, **options)
    hard = (score_problems(model, tokenizer, _problems(section.test_hard, section.limit), checker, **options)
            if section.test_hard is not None else None)
    return {"exact_match": main["exact_match"], "exact_match_hard": hard["exact_match"] if hard else None,
            "pass_at_k": main["pass_at_k"], "reasoning_tokens": main["mean_tokens"],
            "generate_tokens_per_s": main["tokens_per_s"]}


def reasoning_split(section) -> dict:
    """What comparison.json says about the evaluation: files, problem counts, checker, k."""
    counts = {"test": len(_problems(section.test, section.limit))}
    if section.test_hard is not None:
        counts["test_hard"] = len(_problems(section.test_hard, section.limit))
    return {"test": str(section.test), "test_hard": str(section.test_hard) if section.test_hard else None,
            "problems": counts, "pass_k": section.pass_k, "samples": section.samples if section.pass_k else None,
            "checker": section.checker.model_dump(), "max_new_tokens": section.max_new_tokens}
