"""Generation-based evaluation: exact match and pass@k of models made to answer right or wrong."""

import json
from math import comb

import pytest

from kdistill.config import ReasoningEvalConfig
from kdistill.reasoning.checkers import Checker
from kdistill.reasoning.evaluate import pass_at_k, reasoning_fields, score_problems
from kdistill.reasoning.tokenizer import bundled_tokenizer

from reasoning_helpers import ScriptedLM

PROBLEMS = [{"prompt": f"{i}*3=\n", "answer": str(3 * i)} for i in range(1, 9)]


@pytest.mark.parametrize("n,c,k", [(8, 0, 1), (8, 3, 1), (8, 3, 4), (8, 6, 4), (10, 10, 10), (5, 1, 5)])
def test_pass_at_k_is_the_combinatorial_formula(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def _scripted(tok, right: int):
    """Greedy: the first ``right`` problems answered right (with a worked line), the rest wrong;
    sampled: half the samples right for every problem."""
    greedy = {p["prompt"]: (f"x\nanswer: {p['answer']}" if i < right else f"answer: {int(p['answer']) + 1}")
              for i, p in enumerate(PROBLEMS)}
    sampled = {p["prompt"]: [f"answer: {p['answer']}", "answer: 0"] for p in PROBLEMS}
    return ScriptedLM(tok, sampled, greedy)


def test_exact_match_counts_right_answers_and_lengths():
    tok = bundled_tokenizer("chars")
    for right in (0, 3, 8):
        scores = score_problems(_scripted(tok, right), tok, PROBLEMS, Checker(), batch_size=3)
        assert scores["exact_match"] == right / 8 and scores["problems"] == 8 and scores["pass_at_k"] is None
        lengths = [len(f"x\nanswer: {p['answer']}") + 1 if i < right else len(f"answer: {int(p['answer']) + 1}") + 1
                   for i, p in enumerate(PROBLEMS)]  # characters plus the eos token
        assert scores["mean_tokens"] == pytest.approx(sum(lengths) / 8)
        assert scores["tokens_per_s"] > 0


def test_pass_at_k_from_samples_and_the_config_section(tmp_path):
    tok = bundled_tokenizer("chars")
    scores = score_problems(_scripted(tok, 0), tok, PROBLEMS, Checker(), pass_k=2, samples=6, seed=0)
    assert scores["exact_match"] == 0 and 0 < scores["pass_at_k"] < 1
    test, hard = tmp_path / "test.jsonl", tmp_path / "hard.jsonl"
    test.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    hard.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS[4:]))
    section = ReasoningEvalConfig(test=test, test_hard=hard, limit=6, pass_k=1, samples=4)
    fields = reasoning_fields(section, tok, _scripted(tok, 5), seed=0)
    assert fields["exact_match"] == 5 / 6 and fields["exact_match_hard"] == 1 / 4  # hard: problems 5-8, 5 right
    assert set(fields) == {"exact_match", "exact_match_hard", "pass_at_k", "reasoning_tokens", "generate_tokens_per_s"}


def test_reasoning_section_is_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="samples >= 4"):
        ReasoningEvalConfig(test="t.jsonl", pass_k=4, samples=2)
    with pytest.raises(ValidationError, match="needs pattern"):
        ReasoningEvalConfig(test="t.jsonl", checker={"extract": "regex"})
