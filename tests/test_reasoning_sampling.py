"""Rejection-sampled traces (generation.sample_traces): keep modes, per-prompt pass rates,
reproducible and resumable without duplicates."""

import json

import pytest

from kdistill.errors import ConfigError
from kdistill.generation import kept_samples, sample_traces, sidecar
from kdistill.reasoning.checkers import Checker
from kdistill.reasoning.tokenizer import bundled_tokenizer

from reasoning_helpers import ScriptedLM

PROBLEMS = [{"id": f"p{i}", "prompt": f"{i}+{i}=\n", "answer": str(2 * i)} for i in range(1, 7)]


def _model(tok):
    # problem i: the right answer with a long and a short trace, and a wrong one; problem 6 never solved
    answers = {}
    for p in PROBLEMS:
        i = int(p["answer"]) // 2
        right = [f"{i}+{i}+0={2 * i:02d}\nanswer: {2 * i}", f"answer: {2 * i}"]
        answers[p["prompt"]] = ([] if i == 6 else right) + [f"answer: {2 * i + 1}"]
    return ScriptedLM(tok, answers)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_keep_modes():
    correct, lengths = [False, True, True, True], [3, 9, 4, 4]
    assert kept_samples(correct, lengths, "all") == [0, 1, 2, 3]
    assert kept_samples(correct, lengths, "first_correct") == [1]
    assert kept_samples(correct, lengths, "all_correct") == [1, 2, 3]
    assert kept_samples(correct, lengths, "shortest_correct") == [2]  # ties: the first
    assert kept_samples([False, False], [1, 1], "first_correct") == []
    with pytest.raises(ConfigError, match="generate.keep"):
        kept_samples(correct, lengths, "best")


@pytest.mark.parametrize("keep", ["all", "first_correct", "all_correct", "shortest_correct"])
def test_traces_pass_rates_and_summary(tmp_path, keep):
    tok = bundled_tokenizer("chars")
    out = tmp_path / "traces.jsonl"
    summary = sample_traces(_model(tok), tok, PROBLEMS, out, checker=Checker(), samples=6, keep=keep,
                            batch_size=4, seed=0, progress=False)
    traces, stats = _read(out), _read(sidecar(out, "stats"))
    assert [s["id"] for s in stats] == list(range(6)) and all(s["samples"] == 6 for s in stats)
    assert stats[5]["correct"] == 0 and all(0 < s["pass_rate"] <= 1 for s in stats[:5])
    for t in traces:  # every kept trace is what the checker says it is
        assert t["correct"] == Checker().accepts(PROBLEMS[t["id"]], t["completion"])
        assert t["raw_prompt"] == PROBLEMS[t["id"]]["prompt"] and t["task_id"] == f"p{t['id'] + 1}"
    per_prompt = {i: [t for t in traces if t["id"] == i] for i in range(6)}
    if keep == "all":
        assert len(traces) == 36 and sum(t["correct"] for t in traces) == sum(s["correct"] for s in stats)
    else:
        assert all(t["correct"] for t in traces) and not per_prompt[5]
    if keep in ("first_correct", "shortest_correct"):
        assert all(len(per_prompt[i]) == 1 for i in range(5))
    if keep != "all":  # the same draws as the unfiltered run of the same seed, filtered
        sample_traces(_model(tok), tok, PROBLEMS, tmp_path / "all.jsonl", checker=Checker(), samples=6,
                      keep="all", batch_size=4, seed=0, progress=False)
        every = [t for t in _read(tmp_path / "all.jsonl") if t["correct"]]
        if keep == "all_correct":
            assert traces == every
        if keep == "first_correct":
            assert [t["sample"] for t in traces] == [min(e["sample"] for e in every if e["id"] == i) for i in range(5)]
        if keep == "shortest_correct":
            assert [t["tokens"] for t in traces] == [min(e["tokens"] for e in every if e["id"] == i) for i in range(5)]
    if keep == "all_correct":
        assert [len(per_prompt[i]) for i in range(6)] == [s["correct"] for s in stats]
    assert summary == {k: v for k, v in json.loads(sidecar(out, "summary").read_text()).items() if k != "settings"}
    assert summary["samples_drawn"] == 36 and summary["prompts_solved"] == 5 and summary["kept"] == len(traces)
    assert summary["accepted"] == sum(s["correct"] for s in stats)


def test_resume_after_interruption_writes_what_one_run_would_without_duplicates(tmp_path):
    tok = bundled_tokenizer("chars")
    whole, cut = tmp_path / "whole.jsonl", tmp_path / "cut.jsonl"
    kw = {"checker": Checker(), "samples": 5, "keep": "all_correct", "batch_size": 2, "seed": 3, "progress": False}
    sample_traces(_model(tok), tok, PROBLEMS, whole, **kw)
    sample_traces(_model(tok), tok, PROBLEMS, cut, **kw)
    # interrupted: the stats of the second batch never written, a half line of traces after them
    stats = sidecar(cut, "stats").read_text().splitlines()
    sidecar(cut, "stats").write_text("\n".join(stats[:2]) + "\n" + stats[2][:10])
    cut.write_text(cut.read_text() + '{"id": 4, "comp')
    model = _model(tok)
    sample_traces(model, tok, PROBLEMS, cut, **kw)
    assert model.calls == 2  # batches 2 and 3 again, batch 1 not
    assert _read(cut) == _read(whole)
    def counts(path):  # CPU seconds differ between runs, the rest does not
        return [{k: v for k, v in s.items() if k != "cpu_seconds"} for s in _read(sidecar(path, "stats"))]

    assert counts(cut) == counts(whole)
    model = _model(tok)
    sample_traces(model, tok, PROBLEMS, cut, **kw)  # all done: nothing drawn, nothing added
    assert model.calls == 0 and _read(cut) == _read(whole)
    with pytest.raises(ConfigError, match="other generate settings"):
        sample_traces(_model(tok), tok, PROBLEMS, cut, **{**kw, "samples": 4})


def test_other_seed_other_samples(tmp_path):
    tok = bundled_tokenizer("chars")
    kw = {"checker": Checker(), "samples": 6, "keep": "all", "batch_size": 3, "progress": False}
    a = sample_traces(_model(tok), tok, PROBLEMS, tmp_path / "a.jsonl", seed=0, **kw)
    b = sample_traces(_model(tok), tok, PROBLEMS, tmp_path / "b.jsonl", seed=1, **kw)
    assert [t["completion"] for t in _read(tmp_path / "a.jsonl")] != [t["completion"] for t in _read(tmp_path / "b.jsonl")]
    assert a["samples_drawn"] == b["samples_drawn"] == 36


def test_plain_generation_still_answers_every_prompt_once(tmp_path):
    from kdistill.generation import generate_answers

    tok = bundled_tokenizer("chars")
    prompts = [p["prompt"] for p in PROBLEMS]
    model = ScriptedLM(tok, {}, greedy={p: f"answer: {len(p)}" for p in prompts})
    out = tmp_path / "answers.jsonl"
    assert generate_answers(model, tok, prompts, out, batch_size=4, progress=False) == 6
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:4]) + "\n" + lines[4][:7])  # cut in the second batch
    assert generate_answers(model, tok, prompts, out, batch_size=4, progress=False) == 2
    assert out.read_text().splitlines() == lines
    assert [json.loads(x)["completion"] for x in lines] == [f"answer: {len(p)}" for p in prompts]
