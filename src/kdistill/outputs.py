"""What a model gives for a batch, student or teacher alike: one small object, never state kept
in the batch dict or on a task between calls."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class Outputs:
    """Logits (a tensor, or a ``TopKLogits`` from a compressed teacher) and the intermediate
    outputs a method asked for: ``hidden[i]`` (0 = embeddings, i = layer i) and ``attention[i]``
    (layer i's maps); ``features[path]``: the output of the module at that path, read by a
    feature tap (``kdistill.taps``) for a method's ``loss.terms``. A causal LM whose output layer
    is fused with the loss gives ``pre_head`` (final hidden states at the target positions) and
    ``head`` instead of ``logits``."""

    logits: object = None
    hidden: dict[int, torch.Tensor] = field(default_factory=dict)
    attention: dict[int, torch.Tensor] = field(default_factory=dict)
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    pre_head: torch.Tensor | None = None
    head: nn.Module | None = None

    @property
    def rows(self) -> int:
        """How many units (samples, target tokens) the outputs cover."""
        x = self.logits if self.logits is not None else self.pre_head
        return int(x.shape[0])
