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

    With ``memoize`` each training sample's outputs are kept (trimmed to its length) after its
    first pass and re-padded later: valid because text batches are never augmented, and checked
    against the sample's token ids.
    """

    def __init__(self, model: nn.Module, *, num_outputs: int, hidden_layers: tuple[int, ...] = (),
                 attention_layers: tuple[int, ...] = (), memoize: bool = False, **kwargs):
        super().__init__(model, num_outputs=num_outputs, inputs=teacher_inputs, **kwargs)
        self.hidden_layers, self.attention_layers = tuple(hidden_layers), tuple(attention_layers)
        self.memo: dict[int, tuple[tuple[int, ...], dict]] | None = {} if memoize else None
        if self.attention_layers and encoder_of(model).config._attn_implementation != "eager":
            encoder_of(model).set_attn_implementation("eager")  # only eager attention returns the maps

    def logits(self, batch: dict) -> torch.Tensor:
        return self.outputs(batch).logits

    @torch.no_grad()  # not inference_mode: these tensors meet autograd-tracked student tensors
    def outputs(self, batch: dict) -> Outputs:
        inputs = teacher_inputs(batch)
        keys = [tuple(ids[:n]) for ids, n in zip(inputs["input_ids"].tolist(),
                                                 inputs["attention_mask"].sum(-1).tolist())]
        out = self._recall(batch["index"].tolist(), keys, inputs["input_ids"].shape[1])
        if out is None:
            out = self._run(inputs)
            if self.memo is not None:
                self._remember(batch["index"].tolist(), keys, out)
        return Outputs(out["logits"], hidden=out["hidden"], attention=out["attention"])

    def _run(self, inputs: dict) -> dict:
        raw = self.forward(**{k: v.to(self.device) for k, v in inputs.items()},
                           output_hidden_states=bool(self.hidden_layers),
                           output_attentions=bool(self.attention_layers))
        move = lambda t: t.to(self.output_device, dtype=torch.float32)
        return {"logits": move(to_logits(raw)),
                "hidden": {i: move(raw.hidden_states[i]) for i in self.hidden_layers},
                "attention": {i: move(raw.attentions[i - 1]) for i in self.attention_layers}}

    def _remember(self, index: list[int], keys: list[tuple], out: dict) -> None:
        for row, (i, key) in enumerate(zip(index, keys)):
            n = len(key)
            self.memo[i] = (key, {
                "logits": out["logits"][row].clone(),
                "hidden": {k: v[row, :n].half().clone() for k, v in out["hidden"].items()},
                "attention": {k: v[row, :, :n, :n].half().clone() for k, v in out["attention"].items()}})

    def _recall(self, index: list[int], keys: list[tuple], width: int) -> dict | None:
        if self.memo is None:
            return None
        found = [self.memo.get(i) for i in index]
        if any(f is None or f[0] != key for f, key in zip(found, keys)):
            return None
        stored = [f[1] for f in found]

        def stack(kind: str, layer: int) -> torch.Tensor:
            first = stored[0][kind][layer]
            shape = (len(stored), *first.shape[:-2], width, width) if kind == "attention" else \
                (len(stored), width, first.shape[-1])
            full = torch.zeros(shape, dtype=torch.float32, device=first.device)
            for row, s in enumerate(stored):
                t = s[kind][layer]
                if kind == "attention":
                    full[row, :, : t.shape[-2], : t.shape[-1]] = t
                else:
                    full[row, : t.shape[0]] = t
            return full

        return {"logits": torch.stack([s["logits"] for s in stored]),
                "hidden": {k: stack("hidden", k) for k in self.hidden_layers},
                "attention": {k: stack("attention", k) for k in self.attention_layers}}

    def describe(self) -> dict:
        return {**super().describe(), "kind": "live_text", "memoize": self.memo is not None}
