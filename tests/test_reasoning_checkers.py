"""Answer extraction and checking, edge cases included; the countdown verifier never evals."""

import pytest

from kdistill.errors import ConfigError
from kdistill.reasoning.checkers import Checker, after_marker, evaluate_expression, last_number, reaches_target


def test_after_marker_takes_the_last_marker_line_case_insensitively():
    assert after_marker("answer: 3\nno wait\nAnswer:  42 \nbye") == "42"
    assert after_marker("the answer is 7") is None
    assert after_marker("answer:") == ""
    assert after_marker("Result => 9", marker="=>") == "9"


def test_last_number():
    assert last_number("5+3=8, so 8-2=6.") == "6"
    assert last_number("minus -12 or 3.5") == "3.5"
    assert last_number("-4 then nothing") == "-4"
    assert last_number("no digits") is None


def test_exact_and_numeric_matching():
    record = {"prompt": "p", "answer": "7"}
    assert Checker().accepts(record, "answer:  7 ")
    assert not Checker().accepts(record, "answer: 7.0")
    assert Checker(match="numeric").accepts(record, "answer: 7.0")
    assert not Checker(match="numeric").accepts(record, "answer: seven")
    assert not Checker().accepts(record, "answer:")  # an empty answer is never right
    assert Checker().accepts({"answer": "1 2  3"}, "answer: 1  2 3")  # whitespace runs collapse


def test_last_number_and_regex_extractors():
    record = {"answer": "12"}
    assert Checker(extract="last_number").accepts(record, "3*4 = 12")
    assert not Checker(extract="last_number").accepts(record, "12 or maybe 13")
    assert Checker(extract="regex", pattern=r"=\s*(\d+)").accepts(record, "x = 5, y = 12")
    assert Checker(extract="regex", pattern=r"\d+!").answer_of("1! 12!") == "12!"  # no group: the match
    assert Checker(extract="regex", pattern=r"#(\d+)").answer_of("none") is None
    with pytest.raises(ConfigError, match="checker.pattern"):
        Checker(extract="regex", pattern="(")
    with pytest.raises(ConfigError, match="needs checker.pattern"):
        Checker(extract="regex")


def test_expression_parser_precedence_and_refusals():
    assert evaluate_expression("(3+5)*8") == (64, [3, 5, 8])
    assert evaluate_expression("3+5*8") == (43, [3, 5, 8])
    assert evaluate_expression("((1*4)-8)+8") == (4, [1, 4, 8, 8])
    for bad in ("", "3+", "(3+5", "3+5)", "__import__('os')", "2**8", "3 5"):
        assert evaluate_expression(bad) is None, bad


def test_countdown_accepts_any_expression_reaching_the_target_with_the_numbers():
    record = {"task": "countdown", "numbers": [2, 3, 5], "target": 25, "answer": "(2+3)*5"}
    checker = Checker()
    assert checker.accepts(record, "answer: 5*(3+2)")  # another correct expression
    assert not checker.accepts(record, "answer: 5*5")  # right value, wrong numbers
    assert not checker.accepts(record, "answer: (2+3)*5+0")  # an extra number
    assert not checker.accepts(record, "answer: 2+3+5")
    assert reaches_target(record, "(2+3)*5")
