"""Answer extraction and exact checkers: is a model's completion a correct solution?

A completion is reduced to its final answer by an extractor (the text after the last
``answer:`` marker, the last number, or a regular expression's first group), then compared with
the record's ``answer``: exactly (whitespace runs collapsed) or as numbers. Records of a task
family with many valid answers (countdown: any expression reaching the target) are verified by
the family's own rule instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from kdistill.errors import ConfigError

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def after_marker(text: str, marker: str = "answer:") -> str | None:
    """The rest of the line after the last ``marker`` (case-insensitive), stripped; None without one."""
    at = text.lower().rfind(marker.lower())
    if at < 0:
        return None
    return text[at + len(marker):].split("\n", 1)[0].strip()


def last_number(text: str) -> str | None:
    found = NUMBER.findall(text)
    return found[-1] if found else None


def normalise(answer: str) -> str:
    return " ".join(str(answer).split())


def same_number(a: str, b: str) -> bool:
    try:
        return Fraction(a) == Fraction(b)
    except (ValueError, ZeroDivisionError):
        return False


# ------------------------------------------------------------ arithmetic expressions, no eval()
_TOKEN = re.compile(r"\s*(\d+|[-+*()])")


def evaluate_expression(text: str) -> tuple[int, list[int]] | None:
    """(value, the numbers it uses) of an integer expression of + - * and parentheses, by
    recursive descent (never Python's eval); None when it does not parse."""
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            return None
        tokens.append(m.group(1))
        pos = m.end()
    used: list[int] = []
    at = 0

    def peek():
        return tokens[at] if at < len(tokens) else None

    def take():
        nonlocal at
        at += 1
        return tokens[at - 1]

    def atom():
        tok = peek()
        if tok is None:
            raise ValueError
        if tok == "(":
            take()
            value = expr()
            if peek() != ")":
                raise ValueError
            take()
            return value
        if not tok.isdigit():
            raise ValueError
        used.append(int(take()))
        return used[-1]

    def term():
        value = atom()
        while peek() == "*":
            take()
            value *= atom()
        return value

    def expr():
        value = term()
        while peek() in ("+", "-"):
            value = value + term() if take() == "+" else value - term()
        return value

    try:
        value = expr()
    except ValueError:
        return None
    return (value, used) if at == len(tokens) and tokens else None


def reaches_target(record: dict, answer: str) -> bool:
    """Countdown: the expression uses each given number exactly once and equals the target."""
    parsed = evaluate_expression(answer)
    if parsed is None:
        return False
    value, used = parsed
    return value == int(record["target"]) and sorted(used) == sorted(int(n) for n in record["numbers"])


#: task families whose answers are verified by a rule rather than compared with ``answer``
VERIFIERS: dict[str, Callable[[dict, str], bool]] = {"countdown": reaches_target}


@dataclass(frozen=True)
class Checker:
    """Extract a completion's answer, then accept it or not.

    extract: ``after_marker`` (default marker ``answer:``), ``last_number`` or ``regex``
    (``pattern``'s first group, else the whole match, of the last match); match: ``exact``
    (whitespace-normalised strings) or ``numeric`` (equal as numbers: 7 == 7.0)."""

    extract: str = "after_marker"
    marker: str = "answer:"
    pattern: str | None = None
    match: str = "exact"

    def __post_init__(self):
        if self.extract not in ("after_marker", "last_number", "regex"):
            raise ConfigError(f"checker.extract must be after_marker, last_number or regex, got {self.extract!r}")
        if self.match not in ("exact", "numeric"):
            raise ConfigError(f"checker.match must be exact or numeric, got {self.match!r}")
        if self.extract == "regex":
            if not self.pattern:
                raise ConfigError("checker.extract: regex needs checker.pattern (a regular expression)")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ConfigError(f"checker.pattern {self.pattern!r} is not a regular expression: {exc}") from None

    def answer_of(self, completion: str) -> str | None:
        if self.extract == "after_marker":
            return after_marker(completion, self.marker)
        if self.extract == "last_number":
            return last_number(completion)
        matches = list(re.finditer(self.pattern, completion))
        if not matches:
            return None
        last = matches[-1]
        return (last.group(1) if last.re.groups else last.group(0)).strip()

    def accepts(self, record: dict, completion: str) -> bool:
        answer = self.answer_of(completion)
        if answer is None or answer == "":
            return False
        verify = VERIFIERS.get(record.get("task"))
        if verify is not None:
            return verify(record, answer)
        if self.match == "numeric":
            return same_number(answer, str(record["answer"]))
        return normalise(answer) == normalise(record["answer"])


def checker_from_config(section) -> Checker:
    """A ``Checker`` from a config's ``checker:`` section (None: the default)."""
    if section is None:
        return Checker()
    return Checker(extract=section.extract, marker=section.marker, pattern=section.pattern, match=section.match)
