"""Classification: inputs -> class logits, labels as hard targets, accuracy as the metric."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.losses import kd_objective
from kdistill.outputs import Outputs
from kdistill.tasks.base import Task
from kdistill.teachers.base import to_logits


class ClassificationTask(Task):
    def __init__(self, num_classes: int, device: str | torch.device = "cpu"):
        self.num_classes = num_classes
        self.device = torch.device(device)

    def forward(self, model: nn.Module, batch: dict) -> Outputs:
        return Outputs(to_logits(model(batch["inputs"].to(self.device, non_blocking=True))))

    def count(self, batch: dict) -> int:
        return int(batch["labels"].shape[0])

    def logit_loss(self, student, teacher_logits, batch, *, temperature, soft_weight, hard_weight):
        labels = batch["labels"].to(self.device, non_blocking=True)
        return kd_objective(student.logits.float(), teacher_logits, labels, temperature=temperature,
                            soft_weight=soft_weight, hard_weight=hard_weight, reduction="sum")

    @torch.no_grad()
    def predict(self, model: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """All logits and labels of a split, in order."""
        was_training = model.training
        model.eval()
        logits, labels = [], []
        for batch in batches:
            logits.append(self.forward(model, batch).logits.float().cpu())
            labels.append(batch["labels"])
        model.train(was_training)
        return torch.cat(logits), torch.cat(labels)

    def evaluate(self, model, batches) -> dict[str, float]:
        logits, labels = self.predict(model, batches)
        wrong = int((logits.argmax(-1) != labels).sum())
        return {"accuracy": 1 - wrong / len(labels), "errors": wrong,
                "nll": float(F.cross_entropy(logits, labels))}
