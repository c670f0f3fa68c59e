"""The task interface the engine trains through: how a batch becomes model outputs, the logit
loss of this kind of model, the loss's unit count, and held-out metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from kdistill.errors import TrainingError
from kdistill.outputs import Outputs


class Task(ABC):
    @abstractmethod
    def forward(self, model: nn.Module, batch: dict) -> Outputs:
        """The student's outputs for a batch (logits, and the intermediate outputs asked for)."""

    @abstractmethod
    def count(self, batch: dict) -> int:
        """How many units (samples, target tokens) the batch contributes to the loss's mean.
        Known before any forward pass, so an optimizer step normalises by its global total."""

    @abstractmethod
    def logit_loss(self, student: Outputs, teacher_logits, batch: dict, *, temperature: float,
                   soft_weight: float, hard_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """soft_weight * soft term (none when ``teacher_logits`` is None) + hard_weight *
        cross-entropy, summed (not averaged) over the batch's units, and each summed term."""

    def parallel_module(self, student: nn.Module) -> nn.Module:
        """What DistributedDataParallel wraps under torchrun: the student, or a view of it whose
        forward returns what ``forward`` needs (all of the student's parameters inside)."""
        return student

    def check_outputs(self, student: Outputs, teacher: Outputs) -> None:
        """Refuse, before training, teacher outputs that cannot be compared with the student's."""
        s, t = student.logits, teacher.logits
        if t is not None and t.shape[-1] != s.shape[-1]:
            raise TrainingError(
                f"class-count mismatch: the teacher predicts {t.shape[-1]} classes and the "
                f"student {s.shape[-1]}; both must predict the same classes in the same order")

    @abstractmethod
    def evaluate(self, model: nn.Module, batches) -> dict[str, float]:
        """Held-out metrics of one model (the engine reports them each epoch)."""
