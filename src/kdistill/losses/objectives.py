"""Methods as named objectives: what a run optimises, written once for every task.

An objective declares the schedules it needs (temperature, weights) and turns the student's and
the teacher's outputs for a micro-batch into a summed loss and its named terms. The task supplies
the logit loss of its kind (class logits, or the fused chunked token loss of a causal LM); an
objective adds weighted terms on intermediate outputs. The engine evaluates the schedules each
step, logs every value and term, and never knows which method it runs.

    loss:
      method: kd                # soft targets + labels (Hinton et al. 2015)
      temperature: {kind: cosine, start: 20, end: 2}
      terms: [{kind: hint, student: features.2, teacher: features.5, weight: 100}]

Methods: ``kd`` (with ``standardize`` and a per-sample or learned temperature), ``dkd``, ``dist``;
each takes ``loss.terms`` (feature terms, ``kdistill.losses.feature_terms``). Add a method:
subclass ``Distillation``, register it in ``OBJECTIVES`` by name (it becomes a valid
``loss.method``), and list its config fields in the task's loss section.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from kdistill.errors import TrainingError
from kdistill.losses.logits import dist, dkd, dkd_warmup, standardize_logits
from kdistill.losses.temperature import LearnedTemperature, confidence_temperatures, ctkd_strength, \
    tempered_soft_target_kl
from kdistill.outputs import Outputs
from kdistill.schedules import as_schedule


@dataclass
class Term:
    """One weighted part of an objective beyond the logit loss, e.g. a hidden-state term.

    ``fn(student, teacher, batch)`` returns the term summed over the batch's units; its weight
    is scheduled and logged as ``<name>_weight`` and its value as ``<name>``. ``teacher_hidden``
    / ``teacher_attention`` name the teacher layers it reads, so the teacher source returns them;
    ``module`` (a connector) is trained with the student and never exported.
    """

    name: str
    weight: object  # a ScheduleSpec
    fn: Callable[[Outputs, Outputs, dict], torch.Tensor]
    teacher_hidden: tuple[int, ...] = ()
    teacher_attention: tuple[int, ...] = ()
    module: nn.Module | None = None


@dataclass(frozen=True)
class PerEpoch:
    """A value of the (fractional) epoch, ``fn(step / steps_per_epoch)``, used where the engine
    takes a schedule: DKD's warm-up and CTKD's curriculum are defined per epoch."""

    fn: Callable[[float], float]
    steps_per_epoch: int

    def __call__(self, step: int, total_steps: int) -> float:
        return float(self.fn(step / self.steps_per_epoch))


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

    def modules(self) -> dict[str, nn.Module]:
        """What the objective trains beside the student (connectors, a learned temperature)."""
        return {}

    def close(self) -> None:
        """Remove the student's feature taps (the trained student is returned hook-free)."""

    def __call__(self, task, student: Outputs, teacher: Outputs | None, batch: dict,
                 hp: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return task.logit_loss(student, None, batch, temperature=1.0, soft_weight=0.0, hard_weight=1.0)


class LabelsOnly(Objective):
    """Cross-entropy on the labels: teachers, scratch baselines, sequence-level distillation."""


def _dense(student: Outputs, teacher: Outputs, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(teacher.logits, torch.Tensor) or not isinstance(student.logits, torch.Tensor):
        raise TrainingError(f"{method} needs dense class logits from student and teacher (not a top-k "
                            "cache): cache the teacher with format: dense or run it live")
    return student.logits.float(), teacher.logits.float()


@dataclass
class Distillation(Objective):
    """What every distillation method shares: a scheduled hard term, feature ``terms`` (each with
    its scheduled weight) on the student's tapped features (``student_taps``), and optional logit
    standardisation (Sun et al. 2024) before the method's soft term. Subclasses give the soft part."""

    temperature: object = 4.0
    hard_weight: object = 0.3
    terms: list[Term] = field(default_factory=list)
    standardize: bool = False
    student_taps: object = None  # a kdistill.taps.FeatureTaps on the student, for the terms

    def schedules(self) -> dict:
        out = {"temperature": as_schedule(self.temperature), "hard_weight": as_schedule(self.hard_weight)}
        out.update({f"{t.name}_weight": as_schedule(t.weight) for t in self.terms})
        return out

    @property
    def teacher_hidden(self) -> tuple[int, ...]:
        return tuple(sorted({i for t in self.terms for i in t.teacher_hidden}))

    @property
    def teacher_attention(self) -> tuple[int, ...]:
        return tuple(sorted({i for t in self.terms for i in t.teacher_attention}))

    def uses_teacher(self, hp: dict[str, float]) -> bool:
        return True

    def modules(self) -> dict[str, nn.Module]:
        return {t.name: t.module for t in self.terms if t.module is not None}

    def close(self) -> None:
        if self.student_taps is not None:
            self.student_taps.remove()

    def _hard(self, task, student, batch, hp):
        return task.logit_loss(student, None, batch, temperature=1.0, soft_weight=0.0,
                               hard_weight=hp["hard_weight"])

    def _soft_pair(self, student, teacher, method):
        s, t = _dense(student, teacher, method)
        return (standardize_logits(s), standardize_logits(t)) if self.standardize else (s, t)

    def logit_part(self, task, student, teacher, batch, hp):
        raise NotImplementedError

    def __call__(self, task, student, teacher, batch, hp):
        if self.student_taps is not None:
            student = dataclasses.replace(student, features=self.student_taps.collect())
        loss, terms = self.logit_part(task, student, teacher, batch, hp)
        for term in self.terms:
            weight = hp[f"{term.name}_weight"]
            if weight and teacher is not None:
                terms[term.name] = term.fn(student, teacher, batch)
                loss = loss + weight * terms[term.name]
        return loss, terms


@dataclass
class PerSampleTemperature:
    """T_i from the teacher's confidence (``confidence_temperatures``) in place of a schedule."""

    t_min: float = 1.0
    t_max: float = 8.0

    def schedules(self) -> dict:
        return {}

    def __call__(self, teacher_logits: torch.Tensor, hp: dict) -> torch.Tensor:
        return confidence_temperatures(teacher_logits, self.t_min, self.t_max)


@dataclass
class CurriculumTemperature:
    """CTKD: a ``LearnedTemperature`` trained adversarially, the reversal strength ramping up
    over ``loops_epochs`` (``ctkd_strength``, logged as ``ctkd_strength``)."""

    module: LearnedTemperature
    loops_epochs: float
    steps_per_epoch: int

    def schedules(self) -> dict:
        loops = self.loops_epochs
        return {"ctkd_strength": PerEpoch(lambda epoch: ctkd_strength(epoch, loops), self.steps_per_epoch)}

    def __call__(self, teacher_logits: torch.Tensor, hp: dict) -> torch.Tensor:
        return self.module(hp["ctkd_strength"])


@dataclass
class KD(Distillation):
    """Hinton et al. (2015): w_soft * T^2 KL(teacher_T || student_T) + w_hard * CE(labels), plus
    any ``terms``. ``temperatures`` (per-sample or learned) replaces the scheduled temperature;
    then the logged ``temperature`` is the mean over the step's samples."""

    soft_weight: object = 0.7
    temperatures: PerSampleTemperature | CurriculumTemperature | None = None
    name = "kd"

    def schedules(self) -> dict:
        out = {**super().schedules(), "soft_weight": as_schedule(self.soft_weight)}
        if self.temperatures is not None:
            del out["temperature"]
            out.update(self.temperatures.schedules())
        return out

    def uses_teacher(self, hp: dict[str, float]) -> bool:
        return hp["soft_weight"] != 0 or any(hp[f"{t.name}_weight"] != 0 for t in self.terms)

    def modules(self) -> dict[str, nn.Module]:
        learned = isinstance(self.temperatures, CurriculumTemperature)
        return {**super().modules(), **({"temperature": self.temperatures.module} if learned else {})}

    def logit_part(self, task, student, teacher, batch, hp):
        soft_weight = hp["soft_weight"] if teacher is not None else 0.0
        if not soft_weight or not (self.standardize or self.temperatures is not None):
            return task.logit_loss(student, teacher.logits if soft_weight else None, batch,
                                   temperature=hp.get("temperature", 1.0), soft_weight=soft_weight,
                                   hard_weight=hp["hard_weight"])
        loss, terms = self._hard(task, student, batch, hp)
        s, t = self._soft_pair(student, teacher, "kd with standardize or an adaptive temperature")
        if self.temperatures is None:
            temps = hp["temperature"]
        else:  # from the raw teacher logits: standardising would hide its confidence
            temps = self.temperatures(teacher.logits.float(), hp)
            terms["temperature"] = temps.detach().expand(s.shape[0]).sum()
        terms["soft"] = tempered_soft_target_kl(s, t, temps, reduction="sum")
        return loss + soft_weight * terms["soft"], terms


@dataclass
class DKD(Distillation):
    """Decoupled KD (Zhao et al. 2022): w_hard * CE + warm-up * (alpha * TCKD + beta * NCKD) * T^2.
    The warm-up factor ``min(epoch / warmup_epochs, 1)`` is the schedule ``dkd_weight``."""

    alpha: float = 1.0
    beta: float = 8.0
    warmup: object = 1.0  # a ScheduleSpec or PerEpoch
    hard_weight: object = 1.0
    name = "dkd"

    def schedules(self) -> dict:
        warmup = self.warmup if isinstance(self.warmup, PerEpoch) else as_schedule(self.warmup)
        return {**super().schedules(), "dkd_weight": warmup}

    def logit_part(self, task, student, teacher, batch, hp):
        loss, terms = self._hard(task, student, batch, hp)
        s, t = self._soft_pair(student, teacher, "dkd")
        labels = batch["labels"].to(s.device)
        terms["dkd"] = dkd(s, t, labels, alpha=self.alpha, beta=self.beta, temperature=hp["temperature"],
                           reduction="sum")
        return loss + hp["dkd_weight"] * terms["dkd"], terms


@dataclass
class DIST(Distillation):
    """DIST (Huang et al. 2022): w_hard * CE + T^2 (beta * inter-class + gamma * intra-class) on
    correlations of the probabilities. A micro-batch of one sample has no intra-class term."""

    beta: float = 2.0
    gamma: float = 2.0
    hard_weight: object = 1.0
    name = "dist"

    def logit_part(self, task, student, teacher, batch, hp):
        loss, terms = self._hard(task, student, batch, hp)
        s, t = self._soft_pair(student, teacher, "dist")
        terms["dist"] = dist(s, t, beta=self.beta, gamma=self.gamma if s.shape[0] > 1 else 0.0,
                             temperature=hp["temperature"], reduction="sum")
        return loss + terms["dist"], terms


#: every ``loss.method`` by name
OBJECTIVES: dict[str, type[Objective]] = {"kd": KD, "dkd": DKD, "dist": DIST}


def _temperature_rule(spec, steps_per_epoch: int | None):
    kind = getattr(spec, "kind", None)
    if kind == "per_sample":
        return PerSampleTemperature(spec.min, spec.max)
    if kind == "learned":
        if steps_per_epoch is None:
            raise ValueError("a learned temperature follows the epoch: give build_objective steps_per_epoch")
        return CurriculumTemperature(LearnedTemperature(spec.min, spec.max, spec.initial), spec.loops_epochs,
                                     steps_per_epoch)
    return None


def build_objective(loss_cfg, terms: list[Term] = (), *, teacher: bool = True, steps_per_epoch: int | None = None,
                    student_taps=None) -> Objective:
    """The objective a run's loss section names (``LabelsOnly`` for a run without a teacher).

    ``steps_per_epoch`` (optimizer steps) turns per-epoch settings (DKD's warm-up, CTKD's
    curriculum) into step schedules; ``student_taps`` records the features ``terms`` read."""
    if not teacher:
        return LabelsOnly()
    method = getattr(loss_cfg, "method", "kd")
    common = dict(hard_weight=loss_cfg.hard_weight, terms=list(terms), student_taps=student_taps,
                  standardize=getattr(loss_cfg, "standardize", False))
    if method == "dkd":
        warmup = 1.0
        if loss_cfg.warmup_epochs:
            if steps_per_epoch is None:
                raise ValueError("dkd's warm-up follows the epoch: give build_objective steps_per_epoch")
            epochs = loss_cfg.warmup_epochs
            warmup = PerEpoch(lambda epoch: dkd_warmup(epoch, epochs), steps_per_epoch)
        return DKD(temperature=loss_cfg.temperature, alpha=loss_cfg.alpha, beta=loss_cfg.beta, warmup=warmup,
                   **common)
    if method == "dist":
        return DIST(temperature=loss_cfg.temperature, beta=loss_cfg.beta, gamma=loss_cfg.gamma, **common)
    rule = _temperature_rule(loss_cfg.temperature, steps_per_epoch)
    return KD(temperature=4.0 if rule is not None else loss_cfg.temperature, soft_weight=loss_cfg.soft_weight,
              temperatures=rule, **common)
