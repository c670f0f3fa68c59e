"""Text classification: token ids -> class logits; hidden states and attention maps too when a
method's terms read them (the student's, from its forward pass: ``Outputs.hidden`` /
``Outputs.attention``)."""

from __future__ import annotations

import torch
from torch import nn

from kdistill.outputs import Outputs
from kdistill.tasks.classification import ClassificationTask
from kdistill.teachers.base import to_logits


class TextClassificationTask(ClassificationTask):
    """Classification on tokenized text; ``inputs="teacher"`` feeds a model the teacher's tokens.
    ``hidden`` / ``attentions``: return those intermediate outputs while training."""

    def __init__(self, num_classes: int, device: str | torch.device = "cpu", *, inputs: str = "student",
                 hidden: bool = False, attentions: bool = False):
        super().__init__(num_classes, device)
        self.prefix = "teacher_" if inputs == "teacher" else ""
        self.hidden, self.attentions = hidden, attentions

    def forward(self, model: nn.Module, batch: dict) -> Outputs:
        kwargs = {k: batch[self.prefix + k].to(self.device, non_blocking=True)
                  for k in ("input_ids", "attention_mask")}
        intermediate = model.training and (self.hidden or self.attentions)
        if intermediate:
            kwargs.update(output_hidden_states=self.hidden, output_attentions=self.attentions)
        out = model(**kwargs)
        if not intermediate:
            return Outputs(to_logits(out))
        return Outputs(to_logits(out),
                       hidden=dict(enumerate(out.hidden_states)) if self.hidden else {},
                       attention={i + 1: a for i, a in enumerate(out.attentions)} if self.attentions else {})

    @torch.no_grad()
    def predict(self, model: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """All logits and labels of a split in sample order (batches come in length order, which
        differs between tokenizers), so models with different tokenizers line up."""
        logits, labels = super().predict(model, batches)
        order = torch.cat([b["index"] for b in batches]).argsort()
        return logits[order], labels[order]
