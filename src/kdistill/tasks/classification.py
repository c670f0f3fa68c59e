"""Classification: inputs -> class logits, labels as hard targets, accuracy as the metric."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.losses import kd_objective
from kdistill.tasks.base import Task
from kdistill.teachers.base import to_logits


class ClassificationTask(Task):
    def __init__(self, num_classes: int, device: str | torch.device = "cpu"):
        self.num_classes = num_classes
        self.device = torch.device(device)

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return to_logits(model(batch["inputs"].to(self.device, non_blocking=True)))

    def count(self, batch: dict) -> int:
        return int(batch["labels"].shape[0])

    def objective(self, student_logits, teacher_logits, batch, hp):
        labels = batch["labels"].to(self.device, non_blocking=True)
        return kd_objective(student_logits, teacher_logits, labels,
                            temperature=hp["temperature"], soft_weight=hp["soft_weight"],
                            hard_weight=hp["hard_weight"], reduction="sum")

    @torch.no_grad()
    def predict(self, model: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """All logits and labels of a split, in order."""
        was_training = model.training
        model.eval()
        logits, labels = [], []
        for batch in batches:
            logits.append(self.forward(model, batch).float().cpu())
            labels.append(batch["labels"])
        model.train(was_training)
        return torch.cat(logits), torch.cat(labels)

    def evaluate(self, model, batches) -> dict[str, float]:
        logits, labels = self.predict(model, batches)
        wrong = int((logits.argmax(-1) != labels).sum())
        return {"accuracy": 1 - wrong / len(labels), "errors": wrong,
                "nll": float(F.cross_entropy(logits, labels))}
