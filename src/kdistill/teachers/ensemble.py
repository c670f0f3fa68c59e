"""A teacher made of several teachers (Hinton et al. 2015, section 3: the soft targets of an
ensemble are the mean of its members' soft targets).

Each member is any ``TeacherSource`` (live or a dense cache); the ensemble is one too, so the
rest of the pipeline sees a single teacher. Two ways to combine, both weighted:

- ``mean_probs`` (the paper's): the weighted mean of the members' probabilities at the
  ensemble's ``temperature`` T_e, returned as logits ``T_e * log(sum_k w_k softmax(z_k / T_e))``.
  A soft term at the same T then sees exactly the mixture of the tempered members:
  ``softmax(out / T) = sum_k w_k softmax(z_k / T)``. At another T it sees that mixture re-tempered,
  ``∝ (sum_k w_k softmax(z_k / T_e))^(T_e / T)``, which is not the mixture at T: with the default
  T_e = 1 a soft term at T = 4 softens the averaged distribution, not each member. Set T_e to the
  soft term's (constant) temperature for the paper's definition; with a scheduled temperature
  T_e = 1 is the defensible fixed choice (the ensemble's own predictive distribution).
- ``mean_logits``: the weighted mean of the logits, a product of experts; temperature-free, but
  a member with larger logits dominates.

Argmax, agreement and accuracy of the ensemble follow from the returned logits as for any teacher.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch

from kdistill.errors import ConfigError, TrainingError
from kdistill.teachers.base import TeacherSource

Combine = Literal["mean_probs", "mean_logits"]


def combine_logits(member_logits: Sequence[torch.Tensor], weights: Sequence[float], combine: Combine,
                   temperature: float = 1.0) -> torch.Tensor:
    """The ensemble's logits from its members' (each (N, C)); ``weights`` sum to one."""
    stacked = torch.stack([z.float() for z in member_logits])  # (K, N, C)
    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device)[:, None, None]
    if combine == "mean_logits":
        return (w * stacked).sum(0)
    log_mixture = torch.logsumexp(torch.log_softmax(stacked / temperature, -1) + w.log(), 0)
    return temperature * log_mixture


class EnsembleTeacher(TeacherSource):
    """Several teachers as one: ``logits(batch)`` asks each member, then combines (see module)."""

    def __init__(self, sources: Sequence[TeacherSource], weights: Sequence[float] | None = None,
                 combine: Combine = "mean_probs", temperature: float = 1.0, field: str = "teacher.members"):
        sources = list(sources)
        if not sources:
            raise ConfigError(f"{field}: an ensemble needs at least one teacher")
        if combine not in ("mean_probs", "mean_logits"):
            raise ConfigError(f"{field}: combine must be 'mean_probs' or 'mean_logits', got {combine!r}")
        if not temperature > 0:
            raise ConfigError(f"{field}: the ensemble temperature must be > 0, got {temperature}")
        counts = [int(s.num_outputs) for s in sources]
        if len(set(counts)) > 1:
            raise ConfigError(f"{field}: the teachers predict different numbers of classes {counts}; every "
                              "member must predict the student's classes in the same order")
        topk = [i for i, s in enumerate(sources) if getattr(s, "format", "dense") == "topk"]
        if topk:
            raise ConfigError(f"{field}: members {topk} are top-k caches, whose tails cannot be averaged "
                              "exactly; cache them with format: dense or run them live")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
        if len(weights) != len(sources):
            raise ConfigError(f"{field}: {len(weights)} weights for {len(sources)} teachers; give one per teacher")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ConfigError(f"{field}: weights must be positive numbers, got {weights}")
        self.sources = sources
        self.weights = [w / sum(weights) for w in weights]
        self.combine = combine
        self.temperature = float(temperature)
        self.num_outputs = counts[0]

    def logits(self, batch: dict) -> torch.Tensor:
        outputs = [source.logits(batch) for source in self.sources]
        dense = [o for o in outputs if isinstance(o, torch.Tensor)]
        if len(dense) != len(outputs):
            raise TrainingError("an ensemble member returned top-k logits; ensemble members must give dense logits")
        device = dense[0].device
        return combine_logits([o.to(device) for o in dense], self.weights, self.combine, self.temperature)

    def describe(self) -> dict:
        return {"kind": "ensemble", "combine": self.combine, "temperature": self.temperature,
                "weights": self.weights, "members": [source.describe() for source in self.sources]}
