"""Task families: deterministic by seed and version, held-out problems never trained on, every
reference solution accepted by the checker and perturbed answers refused."""

import json

import pytest

from kdistill.errors import ConfigError, DataError
from kdistill.reasoning.checkers import Checker
from kdistill.reasoning.tasks import FAMILIES, SPLITS, make_split, read_problems, write_task


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_same_seed_same_problems_other_seed_other_problems(name):
    assert make_split(name, "train", 30, seed=1) == make_split(name, "train", 30, seed=1)
    assert [r["prompt"] for r in make_split(name, "train", 30, seed=1)] != \
        [r["prompt"] for r in make_split(name, "train", 30, seed=2)]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_reference_solutions_are_accepted_and_perturbed_answers_refused(name):
    checker = Checker()
    for split in SPLITS:
        for record in make_split(name, split, 40, seed=0):
            assert record["solution"].endswith(record["final"])
            assert checker.accepts(record, record["solution"]), record
            assert checker.accepts(record, record["final"])
            wrong = record["solution"].rsplit("answer:", 1)[0] + "answer: " + record["answer"] + "1"
            assert not checker.accepts(record, wrong), wrong
            assert not checker.accepts(record, record["solution"].rsplit("answer:", 1)[0])  # no answer at all


def test_arithmetic_answers_are_the_true_results():
    for r in make_split("add", "test", 50, seed=3):
        a, b = r["prompt"].rstrip("=\n").split("+")
        assert int(r["answer"]) == int(a) + int(b)
    for r in make_split("mul", "test_hard", 50, seed=3):
        a, m = r["prompt"].rstrip("=\n").split("*")
        assert int(r["answer"]) == int(a) * int(m) and len(a) == FAMILIES["mul"].hard
    for r in make_split("sort", "test", 50, seed=3):
        items = [int(x) for x in r["prompt"].split()[1:]]
        assert r["answer"] == " ".join(map(str, sorted(items)))


def test_harder_split_is_longer():
    for name in FAMILIES:
        easy = sum(len(r["solution"]) for r in make_split(name, "test", 50, seed=0))
        hard = sum(len(r["solution"]) for r in make_split(name, "test_hard", 50, seed=0))
        assert hard > 1.2 * easy, name


def test_write_task_keeps_test_prompts_out_of_train(tmp_path):
    meta = write_task("countdown", tmp_path, seed=5, train=300, test=40)
    assert meta["version"] >= 1 and meta["seed"] == 5
    splits = {s: [json.loads(line) for line in (tmp_path / f"{s}.jsonl").read_text().splitlines()] for s in SPLITS}
    assert [len(splits[s]) for s in SPLITS] == [300, 40, 40]
    train = {r["prompt"] for r in splits["train"]}
    assert not train & {r["prompt"] for r in splits["test"]}
    assert json.loads((tmp_path / "meta.json").read_text()) == meta
    assert read_problems(tmp_path / "test.jsonl")[0]["prompt"] == splits["test"][0]["prompt"]


def test_unknown_family_and_too_many_problems_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="choose one of"):
        write_task("chess", tmp_path)
    with pytest.raises(DataError, match="distinct"):
        make_split("countdown", "train", 100_000, seed=0)  # far more than the family holds
    with pytest.raises(DataError, match="kdistill tasks"):
        read_problems(tmp_path / "missing.jsonl")


def test_tasks_command_writes_the_splits(tmp_path):
    from typer.testing import CliRunner

    from kdistill.cli import app

    result = CliRunner().invoke(app, ["tasks", "sort", "--out", str(tmp_path), "--seed", "2", "--train", "20",
                                      "--test", "5"])
    assert result.exit_code == 0, result.output
    assert "sort v1 seed 2" in result.output
    assert len((tmp_path / "test_hard.jsonl").read_text().splitlines()) == 5
