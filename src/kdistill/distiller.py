"""Distillation inside a training loop you already have: one call gives the loss.

    kd = Distiller(student, teacher, loss={"temperature": 4, "soft_weight": 0.7, "hard_weight": 0.3},
                   task="classification", total_steps=len(loader) * epochs)
    for batch in loader:                       # {"inputs": x, "labels": y}
        out = kd(batch)                        # out.loss: mean over the batch's samples
        out.loss.backward(); opt.step(); opt.zero_grad()

A ``Distiller`` is the engine's step without the engine: the same objective (``loss.method``),
the same task (its ``forward``, ``logit_loss`` and ``count``) and the same teacher sources, so its
loss is the engine's loss, and a causal LM student gets the fused chunked loss (its logits never
exist for the whole batch). What the loop owns stays the loop's: the optimizer, the learning
rate, autocast, DDP's ``no_sync``, checkpoints.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
from pydantic import BaseModel, ValidationError
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

from kdistill import distributed
from kdistill.config import KDLoss, LMLoss, format_validation_error
from kdistill.errors import ConfigError
from kdistill.losses.objectives import Objective, Term, build_objective
from kdistill.outputs import Outputs
from kdistill.schedules import Constant
from kdistill.tasks.base import Task
from kdistill.tasks.causal_lm import CausalLMTask
from kdistill.tasks.classification import ClassificationTask
from kdistill.tasks.text import TextClassificationTask
from kdistill.teachers.base import TeacherSource
from kdistill.teachers.live import LiveTeacher

IGNORE = -100  # labels of positions that are not targets (Hugging Face's convention too)
_PRECISIONS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
TASK_NAMES = ("classification", "causal_lm")


@dataclass
class DistillOutput:
    """One call's result. ``loss`` is ``summed / units`` (what to call ``backward`` on);
    ``terms`` are the objective's named parts per unit, detached (for logging); ``hparams`` the
    scheduled values used (temperature, weights); ``units`` the samples or target tokens."""

    loss: torch.Tensor
    summed: torch.Tensor
    terms: dict[str, torch.Tensor]
    hparams: dict[str, float]
    units: int


def lm_batch(batch: dict) -> dict:
    """A causal-LM batch in kdistill's format from a Hugging Face one: ``attention_mask`` defaults
    to all ones, ``labels`` to the input ids with padding (mask 0) set to -100. kdistill and
    Hugging Face agree on labels: ``labels[t]`` is the target of position t - 1, -100 is ignored."""
    if "input_ids" not in batch:
        raise ConfigError("a causal-LM batch needs input_ids (and optionally attention_mask and labels "
                          f"with -100 for ignored tokens); got keys {sorted(batch)}")
    out = dict(batch)
    ids = out["input_ids"]
    if out.get("attention_mask") is None:
        out["attention_mask"] = torch.ones_like(ids)
    if out.get("labels") is None:
        out["labels"] = ids.masked_fill(out["attention_mask"] == 0, IGNORE)
    return out


def _loss_section(loss, lm: bool):
    """The task's loss section (``LMLoss`` for causal LMs, ``KDLoss`` otherwise) from a dict, a
    section object or None (the defaults), validated as in a config file."""
    cls = LMLoss if lm else KDLoss
    if isinstance(loss, cls):
        return loss
    if isinstance(loss, BaseModel):
        loss = loss.model_dump()
    try:
        return cls.model_validate(dict(loss or {}))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "loss", dict(loss))) from None


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def output_rows(model: nn.Module) -> int | None:
    """Logits per position of a causal LM (vocabulary rows, padding included)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return getattr(getattr(model, "config", None), "vocab_size", None)


class Distiller:
    """The distillation loss of ``student`` towards ``teacher`` for one batch at a time.

    - ``teacher``: an ``nn.Module`` (run live, in eval mode, without gradients, on its own device
      and in its own dtype), any ``TeacherSource`` (a cache, an ensemble), or None (labels alone).
    - ``loss``: the task's loss section as in a config file (a dict or the section object):
      ``method``, ``temperature``, ``soft_weight``, ``hard_weight`` as numbers or schedules, and for
      causal LMs ``divergence``, ``jsd_beta``, ``skew``, ``chunk_tokens``.
    - ``task``: ``"classification"`` (batches ``{"inputs", "labels"}``), ``"causal_lm"`` (batches
      ``{"input_ids", "attention_mask", "labels"}``, Hugging Face's format) or a ``Task`` object
      (a ``TextClassificationTask`` reads ``input_ids`` / ``attention_mask``; for other batch
      formats give the teacher as a ``TeacherSource``).
    - ``total_steps``: optimizer steps of the whole training, which schedules span (not needed
      when every value is a constant). ``grad_accum_steps``: calls per optimizer step.
    - ``vocab_size``: causal LMs whose teacher and student differ only by padding rows (after
      ``kdistill.models.hf.check_vocabularies``): the shared rows. ``num_classes``: optional.
    - ``terms`` / ``connectors``: a feature method's extra terms and the modules it trains beside
      the student (give ``kd.parameters()`` to the optimizer; saved by ``state_dict``).
    - ``autocast``: a dtype (``torch.bfloat16``) to autocast the student's forward pass only, as the
      engine's ``train.precision: bf16`` does; the loss stays in fp32.
    - ``wrap_ddp``: under torchrun (a process group of several ranks), wrap the task's view of the
      student in DistributedDataParallel (``kd.model``); False when a framework wraps it already.

    Put student and teacher on their devices before building it. Each call advances the schedules
    by one micro-batch (``step = calls // grad_accum_steps``); pass ``step=`` to use a given step
    without advancing (evaluation, or a trainer that counts steps itself).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | TeacherSource | None = None,
                 loss: dict | BaseModel | None = None, *, task: str | Task = "classification",
                 total_steps: int | None = None, grad_accum_steps: int = 1, vocab_size: int | None = None,
                 num_classes: int | None = None, terms: Iterable[Term] = (),
                 connectors: dict[str, nn.Module] | None = None, autocast: torch.dtype | None = None,
                 wrap_ddp: bool = True):
        if isinstance(student, (DistributedDataParallel, DataParallel)):
            raise ConfigError("Distiller takes the plain student, not a DDP / DataParallel wrapper: it "
                              "wraps the task's view of the student itself under torchrun (kd.model)")
        if grad_accum_steps < 1:
            raise ConfigError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
        self.student, self.total_steps, self.grad_accum_steps = student, total_steps, grad_accum_steps
        self.autocast, self.calls, self._checked = autocast, 0, False
        self.device, _ = _device_and_dtype(student)
        lm = task == "causal_lm" or isinstance(task, CausalLMTask)
        self.loss_config = _loss_section(loss, lm)
        if lm and self.loss_config.on_policy_fraction > 0:
            raise ConfigError("loss.on_policy_fraction: on-policy batches are built by kdistill's runs "
                              "(kdistill distill); in your own loop, generate them and pass them as batches")
        self.task = self._task(task, teacher, vocab_size, num_classes)
        self.teacher = self._teacher(teacher)
        self.objective: Objective = build_objective(self.loss_config, list(terms), teacher=self.teacher is not None)
        self.schedules = self.objective.schedules()
        varying = [n for n, s in self.schedules.items() if not (isinstance(s, Constant) and not s.warmup_steps)]
        if varying and total_steps is None:
            raise ConfigError(f"loss: {', '.join(varying)} follow a schedule: give Distiller(total_steps=) "
                              "the number of optimizer steps of the whole training")
        self.connectors = nn.ModuleDict(connectors or {}).to(self.device)
        ctx = distributed.current()
        # under torchrun: DDP around the task's view (a causal LM's final hidden states), as the engine does
        wrap = wrap_ddp and ctx.world_size > 1
        self.model = distributed.wrap(self.task.parallel_module(student), ctx) if wrap else student

    # ------------------------------------------------------------------ set-up
    def _task(self, task, teacher, vocab_size, num_classes) -> Task:
        if isinstance(task, Task):
            return task
        if task == "classification":
            return ClassificationTask(num_classes, self.device)
        if task == "causal_lm":
            rows = output_rows(self.student)
            teacher_rows = output_rows(teacher) if isinstance(teacher, nn.Module) else getattr(teacher, "num_outputs", rows)
            if vocab_size is None and teacher is not None and teacher_rows != rows:
                raise ConfigError(f"the teacher emits {teacher_rows} logits per token and the student {rows}: "
                                  "check both read the same tokens (kdistill.models.hf.check_vocabularies) "
                                  "and pass vocab_size= the shared rows")
            c = self.loss_config
            return CausalLMTask(vocab_size or rows, divergence=c.divergence, jsd_beta=c.jsd_beta, skew=c.skew,
                                chunk_tokens=c.chunk_tokens, device=self.device)
        raise ConfigError(f"task: {task!r} is not a task name; choose one of {', '.join(TASK_NAMES)} "
                          "or pass a kdistill Task")

    def _teacher(self, teacher) -> TeacherSource | None:
        if teacher is None or isinstance(teacher, TeacherSource):
            return teacher
        if not isinstance(teacher, nn.Module):
            raise ConfigError(f"teacher: give an nn.Module, a kdistill TeacherSource or None, not "
                              f"{type(teacher).__name__}")
        device, dtype = _device_and_dtype(teacher)
        precision = _PRECISIONS.get(dtype, "fp32")
        if isinstance(self.task, CausalLMTask):
            from kdistill.teachers.causal_lm import CausalLMTeacher

            return CausalLMTeacher(teacher, self.task.vocab_size, precision=precision, device=device,
                                   output_device=self.device)
        inputs = None  # classification: batch["inputs"]; text: the student's tokens (same tokenizer)
        if isinstance(self.task, TextClassificationTask):
            inputs = lambda b: {k: b[k] for k in ("input_ids", "attention_mask")}  # noqa: E731
        return LiveTeacher(teacher, num_outputs=getattr(self.task, "num_classes", None), precision=precision,
                           device=device, output_device=self.device, inputs=inputs)

    # ------------------------------------------------------------------ the loss
    @property
    def step(self) -> int:
        """The optimizer step the schedules are at (calls // grad_accum_steps)."""
        return self.calls // self.grad_accum_steps

    def hparams(self, step: int | None = None) -> dict[str, float]:
        """Every scheduled value (temperature, weights) at ``step`` (default: the current one)."""
        step = self.step if step is None else step
        total = self.total_steps or 1
        return {name: s(step, total) for name, s in self.schedules.items()}

    def __call__(self, batch: dict, *, step: int | None = None, model: nn.Module | None = None) -> DistillOutput:
        """The loss of one (micro-)batch, averaged over its units (samples or target tokens).
        ``model``: run the student through this module instead (e.g. a trainer's DDP wrapper of
        the whole model: correct, but a causal LM then makes its full logits)."""
        if isinstance(self.task, CausalLMTask):
            batch = lm_batch(batch)
        hp = self.hparams(step)
        teacher = self.teacher.outputs(batch) if self.teacher is not None and self.objective.uses_teacher(hp) else None
        autocast = torch.autocast(self.device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        with autocast:
            student = self.task.forward(self.model if model is None else model, batch)
        if teacher is not None and not self._checked:
            self.task.check_outputs(student, teacher)
            self._checked = True
        summed, terms = self.objective(self.task, student, teacher, batch, hp)
        units = self.task.count(batch)
        if step is None:
            self.calls += 1
        scale = 1.0 / max(units, 1)
        return DistillOutput(loss=summed * scale, summed=summed, hparams=hp, units=units,
                             terms={k: v.detach() * scale for k, v in terms.items()})

    def student_outputs(self, batch: dict) -> Outputs:
        """The student's outputs as the objective sees them (for metrics in your loop)."""
        return self.task.forward(self.model, lm_batch(batch) if isinstance(self.task, CausalLMTask) else batch)

    # ------------------------------------------------------------------ state
    def parameters(self) -> Iterator[nn.Parameter]:
        """What the objective trains besides the student (feature connectors): add to the optimizer."""
        return self.connectors.parameters()

    def state_dict(self) -> dict:
        """The schedules' position and the connectors' weights (the student and the optimizer
        are the loop's to save)."""
        return {"calls": self.calls, "grad_accum_steps": self.grad_accum_steps,
                "connectors": self.connectors.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("grad_accum_steps", self.grad_accum_steps) != self.grad_accum_steps:
            raise ConfigError(f"this Distiller state was saved with grad_accum_steps={state['grad_accum_steps']}, "
                              f"this one has {self.grad_accum_steps}: build it with the same value")
        self.calls = int(state["calls"])
        self.connectors.load_state_dict(state["connectors"])

    def export_student(self, path: str | Path | None = None) -> nn.Module:
        """The student alone (no connectors, no wrapper), in eval mode; with ``path`` also saved:
        a Hugging Face model with ``save_pretrained`` into that folder, any other model as a
        safetensors file."""
        model = self.student.eval()
        if path is not None:
            if hasattr(model, "save_pretrained"):
                model.save_pretrained(Path(path), safe_serialization=True)
            else:
                from kdistill.runs.recipes.classification import save_state

                Path(path).parent.mkdir(parents=True, exist_ok=True)
                save_state(model, Path(path))
        return model

