"""A live text teacher: fed its own tokens, giving logits and, for intermediate-layer
distillation, the hidden states and attention maps of the layers the student is mapped to."""

from __future__ import annotations

import torch
from torch import nn

from kdistill.models.text import encoder_of
from kdistill.outputs import Outputs
from kdistill.teachers.base import to_logits
from kdistill.teachers.live import LiveTeacher

def teacher_inputs(batch: dict) -> dict:
    """The teacher's own tokenization of the batch (never the student's)."""
    return {"input_ids": batch["teacher_input_ids"], "attention_mask": batch["teacher_attention_mask"]}


class TextTeacher(LiveTeacher):
    """Runs an HF text classifier on ``teacher_input_ids``; ``outputs(batch)`` also returns the
    hidden states (index 0 = embeddings) and attention maps (index i = layer i) asked for.
    Runs keep them across epochs through ``kdistill.teachers.memo`` (text is never augmented).
    """

    def __init__(self, model: nn.Module, *, num_outputs: int, hidden_layers: tuple[int, ...] = (),
                 attention_layers: tuple[int, ...] = (), **kwargs):
        super().__init__(model, num_outputs=num_outputs, inputs=teacher_inputs, **kwargs)
        self.hidden_layers, self.attention_layers = tuple(hidden_layers), tuple(attention_layers)
        if self.attention_layers and encoder_of(model).config._attn_implementation != "eager":
            encoder_of(model).set_attn_implementation("eager")  # only eager attention returns the maps

    def logits(self, batch: dict) -> torch.Tensor:
        return self.outputs(batch).logits

    @torch.no_grad()  # not inference_mode: these tensors meet autograd-tracked student tensors
    def outputs(self, batch: dict) -> Outputs:
        out = self._run(teacher_inputs(batch))
        return Outputs(out["logits"], hidden=out["hidden"], attention=out["attention"])

    def _run(self, inputs: dict) -> dict:
        raw = self.forward(**{k: v.to(self.device) for k, v in inputs.items()},
                           output_hidden_states=bool(self.hidden_layers),
                           output_attentions=bool(self.attention_layers))
        move = lambda t: t.to(self.output_device, dtype=torch.float32)
        return {"logits": move(to_logits(raw)),
                "hidden": {i: move(raw.hidden_states[i]) for i in self.hidden_layers},
                "attention": {i: move(raw.attentions[i - 1]) for i in self.attention_layers}}

    def describe(self) -> dict:
        return {**super().describe(), "kind": "live_text"}
