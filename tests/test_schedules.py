import math

import pytest
from pydantic import ValidationError

from kdistill.schedules import Constant, Cosine, Exponential, Linear, Step, as_schedule


def test_number_is_constant():
    s = as_schedule(3.5)
    assert isinstance(s, Constant) and s(0, 10) == 3.5 and s(9, 10) == 3.5


def test_linear_and_cosine_hit_their_ends():
    for cls in (Linear, Cosine):
        s = cls(start=20, end=2)
        assert s(0, 101) == pytest.approx(20) and s(100, 101) == pytest.approx(2)
        assert s(50, 101) == pytest.approx(11)  # both pass the midpoint at half-way
    assert Cosine(start=20, end=2)(25, 101) > Linear(start=20, end=2)(25, 101)


def test_exponential_has_equal_ratios():
    s = Exponential(start=16, end=1)
    assert s(0, 5) == pytest.approx(16) and s(2, 5) == pytest.approx(4) and s(4, 5) == pytest.approx(1)


def test_step_schedule_and_validation():
    s = as_schedule({"kind": "step", "values": [20, 8, 2], "milestones": [0.5, 0.8]})
    assert [s(i, 11) for i in (0, 4, 5, 7, 8, 10)] == [20, 20, 8, 8, 2, 2]
    with pytest.raises(ValidationError):
        Step(values=[1, 2], milestones=[])
    with pytest.raises(ValidationError):
        Step(values=[1, 2, 3], milestones=[0.8, 0.5])


def test_warmup_ramps_then_follows_schedule():
    s = Linear(start=1.0, end=0.0, warmup_steps=10, warmup_start=0.0)
    assert s(0, 110) == 0.0 and s(5, 110) == pytest.approx(0.5)
    assert s(10, 110) == pytest.approx(1.0) and s(109, 110) == pytest.approx(0.0)


def test_one_line_of_config_and_unknown_kind_refused():
    s = as_schedule({"kind": "cosine", "start": 20, "end": 2})
    assert s(0, 10) == 20 and math.isclose(s(9, 10), 2)
    with pytest.raises(ValidationError):
        as_schedule({"kind": "zigzag", "start": 1})
    with pytest.raises(ValidationError):
        as_schedule({"kind": "linear", "start": 1, "end": 2, "typo": 3})
