"""Methods as named objectives: what a run optimises, written once for every task.

An objective declares the schedules it needs (temperature, weights) and turns the student's and
the teacher's outputs for a micro-batch into a summed loss and its named terms. The task supplies
the logit loss of its kind (class logits, or the fused chunked token loss of a causal LM); an
objective adds weighted terms on intermediate outputs. The engine evaluates the schedules each
step, logs every value and term, and never knows which method it runs.

    loss:
      method: kd                # soft targets + labels (Hinton et al. 2015)
      temperature: {kind: cosine, start: 20, end: 2}
      hidden_weight: 1.0        # text: + hidden states (TinyBERT), each term its own schedule

Add a method: subclass ``Objective``, register it in ``OBJECTIVES`` by name (it becomes a valid
``loss.method``), and list its config fields in the task's loss section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from kdistill.outputs import Outputs
from kdistill.schedules import as_schedule


@dataclass
class Term:
    """One weighted part of an objective beyond the logit loss, e.g. a hidden-state term.

    ``fn(student, teacher, batch)`` returns the term summed over the batch's units; its weight
    is scheduled and logged as ``<name>_weight`` and its value as ``<name>``. ``teacher_hidden``
    / ``teacher_attention`` name the teacher layers it reads, so the teacher source returns them.
    """

    name: str
    weight: object  # a ScheduleSpec
    fn: Callable[[Outputs, Outputs, dict], torch.Tensor]
    teacher_hidden: tuple[int, ...] = ()
    teacher_attention: tuple[int, ...] = ()


def ever_nonzero(spec) -> bool:
    """Whether a weight schedule is non-zero at some point of training."""
    s = as_schedule(spec)
    return bool(s.at(0.0) or s.at(0.5) or s.at(1.0) or (s.warmup_steps and s.warmup_start))


class Objective:
    """Base of every method; ``LabelsOnly`` is the objective of a run without a teacher."""

    name = "labels"

    def schedules(self) -> dict:
        return {}

    def uses_teacher(self, hp: dict[str, float]) -> bool:
        return False

    def __call__(self, task, student: Outputs, teacher: Outputs | None, batch: dict,
                 hp: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return task.logit_loss(student, None, batch, temperature=1.0, soft_weight=0.0, hard_weight=1.0)


class LabelsOnly(Objective):
    """Cross-entropy on the labels: teachers, scratch baselines, sequence-level distillation."""


@dataclass
class KD(Objective):
    """Hinton et al. (2015): w_soft * T^2 KL(teacher_T || student_T) + w_hard * CE(labels), plus
    any ``terms`` on intermediate outputs, each with its own scheduled weight."""

    temperature: object = 4.0
    soft_weight: object = 0.7
    hard_weight: object = 0.3
    terms: list[Term] = field(default_factory=list)
    name = "kd"

    def schedules(self) -> dict:
        out = {"temperature": as_schedule(self.temperature), "soft_weight": as_schedule(self.soft_weight),
               "hard_weight": as_schedule(self.hard_weight)}
        out.update({f"{t.name}_weight": as_schedule(t.weight) for t in self.terms})
        return out

    @property
    def teacher_hidden(self) -> tuple[int, ...]:
        return tuple(sorted({i for t in self.terms for i in t.teacher_hidden}))

    @property
    def teacher_attention(self) -> tuple[int, ...]:
        return tuple(sorted({i for t in self.terms for i in t.teacher_attention}))

    def uses_teacher(self, hp: dict[str, float]) -> bool:
        return hp["soft_weight"] != 0 or any(hp[f"{t.name}_weight"] != 0 for t in self.terms)

    def __call__(self, task, student, teacher, batch, hp):
        soft_weight = hp["soft_weight"] if teacher is not None else 0.0
        loss, terms = task.logit_loss(student, teacher.logits if soft_weight else None, batch,
                                      temperature=hp["temperature"], soft_weight=soft_weight,
                                      hard_weight=hp["hard_weight"])
        for term in self.terms:
            weight = hp[f"{term.name}_weight"]
            if weight and teacher is not None:
                terms[term.name] = term.fn(student, teacher, batch)
                loss = loss + weight * terms[term.name]
        return loss, terms


#: every ``loss.method`` by name
OBJECTIVES: dict[str, type[Objective]] = {"kd": KD}


def build_objective(loss_cfg, terms: list[Term] = (), *, teacher: bool = True) -> Objective:
    """The objective a run's loss section names (``LabelsOnly`` for a run without a teacher)."""
    if not teacher:
        return LabelsOnly()
    cls = OBJECTIVES[loss_cfg.method]
    return cls(temperature=loss_cfg.temperature, soft_weight=loss_cfg.soft_weight,
               hard_weight=loss_cfg.hard_weight, terms=list(terms))
