"""Schedules for the temperature and the loss weights: small objects of the optimizer step.

A schedule is a pure function of (step, total_steps), so restoring the step on resume restores
every scheduled value exactly. In config a bare number is a constant; otherwise give ``kind``:

    temperature: {kind: cosine, start: 20, end: 2}          # start hot, cool down
    soft_weight: {kind: linear, start: 0.9, end: 0.5, warmup_steps: 100}
    temperature: {kind: step, values: [20, 8, 2], milestones: [0.5, 0.8]}
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class _Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    warmup_steps: int = Field(0, ge=0, description="steps of linear ramp from warmup_start")
    warmup_start: float = 0.0

    def __call__(self, step: int, total_steps: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start + (self.initial - self.warmup_start) * step / self.warmup_steps
        span = max(total_steps - self.warmup_steps - 1, 1)
        progress = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        return self.at(progress)

    @property
    def initial(self) -> float:
        return self.at(0.0)

    def at(self, progress: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


class Constant(_Schedule):
    kind: Literal["constant"] = "constant"
    value: float

    def at(self, progress: float) -> float:
        return self.value


class Linear(_Schedule):
    kind: Literal["linear"] = "linear"
    start: float
    end: float

    def at(self, progress: float) -> float:
        return self.start + (self.end - self.start) * progress


class Cosine(_Schedule):
    kind: Literal["cosine"] = "cosine"
    start: float
    end: float

    def at(self, progress: float) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Exponential(_Schedule):
    """Geometric interpolation: equal ratios in equal time (start and end must be > 0)."""

    kind: Literal["exponential"] = "exponential"
    start: float = Field(gt=0)
    end: float = Field(gt=0)

    def at(self, progress: float) -> float:
        return self.start * (self.end / self.start) ** progress


class Step(_Schedule):
    """Piecewise constant: ``values[i]`` until the fraction of training ``milestones[i]``."""

    kind: Literal["step"] = "step"
    values: list[float] = Field(min_length=1)
    milestones: list[float] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> "Step":
        if len(self.values) != len(self.milestones) + 1:
            raise ValueError("step schedule needs len(values) == len(milestones) + 1")
        if any(not 0 < m < 1 for m in self.milestones) or self.milestones != sorted(self.milestones):
            raise ValueError("milestones are increasing fractions of training in (0, 1)")
        return self

    def at(self, progress: float) -> float:
        return self.values[sum(progress >= m for m in self.milestones)]


Schedule = Annotated[Union[Constant, Linear, Cosine, Exponential, Step], Field(discriminator="kind")]
ScheduleSpec = Union[float, Schedule]

_adapter: TypeAdapter = TypeAdapter(Schedule)


def as_schedule(spec: ScheduleSpec) -> _Schedule:
    """A number becomes a constant schedule; a dict or schedule object is validated."""
    if isinstance(spec, (int, float)):
        return Constant(value=float(spec))
    if isinstance(spec, _Schedule):
        return spec
    return _adapter.validate_python(spec)
