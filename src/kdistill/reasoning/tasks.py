"""Verifiable reasoning tasks, generated from a seed: each problem has a prompt, an exact answer
and a worked reference solution that ends in ``answer: ...``.

Families (``FAMILIES``): ``add`` (multi-digit addition, one line per column with its carry),
``mul`` (multi-digit times one digit, carries shown), ``countdown`` (reach a target with the
given numbers; any correct expression is accepted), ``sort`` (a list sorted by repeatedly taking
the smallest), ``word`` (multi-step arithmetic word problems). Each has an in-distribution level
(train and ``test``) and a harder one (``test_hard``: more digits, numbers or steps).
``TASKS_VERSION`` changes whenever what a seed generates changes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kdistill.checkpoint import atomic_write_text
from kdistill.errors import ConfigError, DataError

TASKS_VERSION = 1
SPLITS = ("train", "test", "test_hard")
MARKER = "answer:"
MAX_MISSES = 2000


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def make_add(rng: random.Random, digits: int) -> dict:
    a, b = _number(rng, digits), _number(rng, digits)
    lines, carry = [], 0
    for i in range(digits):  # right to left; column sums written with two digits
        x, y = a // 10**i % 10, b // 10**i % 10
        total = x + y + carry
        lines.append(f"{x}+{y}+{carry}={total:02d}")
        carry = total // 10
    return {"prompt": f"{a}+{b}=\n", "answer": str(a + b), "lines": lines}


def make_mul(rng: random.Random, digits: int) -> dict:
    a, m = _number(rng, digits), rng.randint(2, 9)
    lines, carry = [], 0
    for i in range(digits):
        x = a // 10**i % 10
        total = x * m + carry
        lines.append(f"{x}*{m}+{carry}={total:02d}")
        carry = total // 10
    return {"prompt": f"{a}*{m}=\n", "answer": str(a * m), "lines": lines}


def make_countdown(rng: random.Random, count: int) -> dict:
    while True:
        numbers = [rng.randint(1, 9) for _ in range(count)]
        value, expr, lines = numbers[0], str(numbers[0]), []
        for n in numbers[1:]:
            op = rng.choice("+-*")
            new = value + n if op == "+" else value - n if op == "-" else value * n
            lines.append(f"{value}{op}{n}={new}")
            expr = f"({expr}){op}{n}" if lines[1:] else f"{expr}{op}{n}"
            value = new
        if 0 < value < 1000 and all(not line.split("=")[1].startswith("-") for line in lines):
            break
    shown = sorted(numbers)
    return {"prompt": f"reach {value} with {' '.join(map(str, shown))}\n", "answer": expr, "lines": lines,
            "numbers": shown, "target": value}


def make_sort(rng: random.Random, length: int) -> dict:
    items = [rng.randint(0, 99) for _ in range(length)]
    rest, lines = list(items), []
    while rest:
        smallest = min(rest)
        rest.remove(smallest)
        lines.append(f"{smallest}: {' '.join(map(str, rest))}".rstrip())
    return {"prompt": f"sort {' '.join(map(str, items))}\n", "answer": " ".join(map(str, sorted(items))),
            "lines": lines}


NAMES = ("ann", "bob", "cy", "dee", "eli")
ITEMS = ("apples", "coins", "books", "cards", "pens")


def make_word(rng: random.Random, steps: int) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, 20)
    text, lines = [f"{name} has {value} {item}."], []
    for _ in range(steps):
        kind = rng.choice(("gets", "loses", "doubles") if value <= 50 else ("gets", "loses"))
        if kind == "loses" and value < 2:
            kind = "gets"
        if kind == "doubles":
            text.append(f"then {name} doubles them.")
            lines.append(f"{value}*2={value * 2}")
            value *= 2
        else:
            k = rng.randint(1, 9) if kind == "gets" else rng.randint(1, min(9, value - 1))
            text.append(f"then {name} {kind} {k}.")
            new = value + k if kind == "gets" else value - k
            lines.append(f"{value}{'+' if kind == 'gets' else '-'}{k}={new}")
            value = new
    return {"prompt": " ".join(text) + f" how many {item} now?\n", "answer": str(value), "lines": lines}


@dataclass(frozen=True)
class Family:
    make: Callable[[random.Random, int], dict]
    level: int   # in distribution (train and test): digits, numbers, list length or steps
    hard: int    # the harder test split
    what: str


FAMILIES = {
    "add": Family(make_add, 3, 5, "digits of each number"),
    "mul": Family(make_mul, 3, 5, "digits of the multiplicand"),
    "countdown": Family(make_countdown, 3, 4, "numbers to combine"),
    "sort": Family(make_sort, 4, 6, "list length"),
    "word": Family(make_word, 2, 4, "steps of the story"),
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"unknown task family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def problem(name: str, raw: dict, ident: str) -> dict:
    """A record: id, task, prompt, answer, the worked solution, and ``final`` (the answer line
    alone, the completion of answers-only training)."""
    final = f"{MARKER} {raw['answer']}"
    extra = {k: v for k, v in raw.items() if k not in ("prompt", "answer", "lines")}
    return {"id": ident, "task": name, "prompt": raw["prompt"], "answer": raw["answer"],
            "solution": "\n".join([*raw["lines"], final]), "final": final, **extra}


def make_split(name: str, split: str, n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """``n`` distinct problems of ``split``; prompts in ``exclude`` (the training prompts) are
    skipped, so held-out problems are never trained on. Deterministic in (version, name, seed, split)."""
    fam = family(name)
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    rng = random.Random(f"kdistill-tasks-v{TASKS_VERSION}:{name}:{seed}:{split}")
    level = fam.hard if split == "test_hard" else fam.level
    records, seen, misses = [], set(exclude), 0
    while misses < MAX_MISSES:  # that many repeats in a row: the family has no more distinct problems
        if len(records) == n:
            return records
        raw = fam.make(rng, level)
        if raw["prompt"] in seen:
            misses += 1
            continue
        seen.add(raw["prompt"])
        misses = 0
        records.append(problem(name, raw, f"{name}-{split}-{len(records)}"))
    raise DataError(f"task {name}: only {len(records)} distinct {split} problems found, {n} asked for; "
                    "ask for fewer")


def write_task(name: str, out: Path, *, seed: int = 0, train: int = 2000, test: int = 200) -> dict:
    """OUT/train.jsonl, test.jsonl, test_hard.jsonl and meta.json (version, seed, sizes, levels)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fam = family(name)
    sizes = {"train": train, "test": test, "test_hard": test}
    seen: set[str] = set()
    for split in SPLITS:
        records = make_split(name, split, sizes[split], seed, exclude=seen)
        seen |= {r["prompt"] for r in records}
        atomic_write_text(out / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    meta = {"task": name, "version": TASKS_VERSION, "seed": seed, "sizes": sizes,
            "level": {"in_distribution": fam.level, "hard": fam.hard, "meaning": fam.what}}
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2))
    return meta


def read_problems(path: Path, prompt_field: str = "prompt", answer_field: str = "answer") -> list[dict]:
    """Problems from JSONL (a family's split, or your own ``{prompt, answer}`` records)."""
    from kdistill.data.lm_text import read_jsonl

    path = Path(path)
    if not path.is_file():
        raise DataError(f"problems file {path} does not exist (write one with `kdistill tasks NAME --out DIR`)")
    records = read_jsonl(path, (prompt_field, answer_field))
    return [{**r, "prompt": str(r[prompt_field]), "answer": str(r[answer_field])} for r in records]
