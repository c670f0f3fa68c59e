"""The task interface the engine trains through."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from kdistill.errors import TrainingError


class Task(ABC):
    @abstractmethod
    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """The student's logits for a batch."""

    @abstractmethod
    def count(self, batch: dict) -> int:
        """How many units (samples, target tokens) the batch contributes to the loss's mean.
        Known before any forward pass, so an optimizer step normalises by its global total."""

    @abstractmethod
    def objective(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                  batch: dict, hp: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Summed (not averaged) loss over the batch's units, and each summed term."""

    def parallel_module(self, student: nn.Module) -> nn.Module:
        """What DistributedDataParallel wraps under torchrun: the student, or a view of it whose
        forward returns what ``forward`` needs (all of the student's parameters inside)."""
        return student

    def schedules(self) -> dict:
        """Extra scheduled values (e.g. the weights of task-specific loss terms) by name: the
        engine evaluates them each step, logs them and passes them to ``objective`` in ``hp``."""
        return {}

    def check_outputs(self, student_out: torch.Tensor, teacher_out) -> None:
        """Refuse, before training, teacher outputs that cannot be compared with the student's."""
        if teacher_out.shape[-1] != student_out.shape[-1]:
            raise TrainingError(
                f"class-count mismatch: the teacher predicts {teacher_out.shape[-1]} classes and the "
                f"student {student_out.shape[-1]}; both must predict the same classes in the same order")

    @abstractmethod
    def evaluate(self, model: nn.Module, batches) -> dict[str, float]:
        """Held-out metrics of one model (the engine reports them each epoch)."""
