"""How a loss's per-sample values become what the caller asked for."""

from __future__ import annotations

from typing import Literal

import torch

Reduction = Literal["none", "sum", "mean"]


def reduce(per_sample: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
