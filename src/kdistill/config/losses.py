"""Loss sections, one per task: each says which method (a named objective in
``kdistill.losses.objectives``) the run optimises, and with which scheduled weights.

Classifiers default to Hinton's recipe (T = 4, 0.7 soft / 0.3 hard); causal LMs to token-level
forward KL at T = 1 on the teacher alone (soft 1, hard 0), as GKD and MiniLLM train.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from kdistill.config.base import Strict
from kdistill.losses.objectives import OBJECTIVES
from kdistill.losses.token import DIVERGENCES
from kdistill.schedules import ScheduleSpec, as_schedule

Method = Literal[tuple(OBJECTIVES)]


class KDLoss(Strict):
    """Soft targets (KL at temperature T, times T^2) plus cross-entropy on the labels."""

    method: Method = Field("kd", description="the named objective (see the README's methods table)")
    temperature: ScheduleSpec = 4.0
    soft_weight: ScheduleSpec = 0.7
    hard_weight: ScheduleSpec = 0.3

    @field_validator("temperature", mode="after")
    @classmethod
    def _positive_temperature(cls, v):
        sched = as_schedule(v)
        first = sched.warmup_start if sched.warmup_steps else sched.initial
        if sched.at(0.0) <= 0 or sched.at(1.0) <= 0 or first <= 0:
            raise ValueError("temperature must stay > 0 (set warmup_start > 0 when warming up)")
        return v


class TextKDLoss(KDLoss):
    """KD plus, for transformer students, hidden-state (TinyBERT) and attention-map (MiniLM) terms."""

    hidden_weight: ScheduleSpec = Field(0.0, description="hidden-state MSE (TinyBERT) weight")
    attention_weight: ScheduleSpec = Field(0.0, description="attention-map KL (MiniLM) weight")
    layer_map: Optional[list[tuple[int, int]]] = Field(
        None, description="[student, teacher] hidden-state indices (0 = embeddings, i = layer i)"
                          "; default: a uniform map including 0 -> 0")


class LMLoss(KDLoss):
    """Token-level distillation: a divergence per target token (see losses/token.py)."""

    temperature: ScheduleSpec = 1.0
    soft_weight: ScheduleSpec = 1.0
    hard_weight: ScheduleSpec = 0.0
    divergence: Literal[DIVERGENCES] = "forward_kl"
    jsd_beta: float = Field(0.5, ge=0, le=1, description="GKD's beta: 0 = forward KL, 1 = reverse KL")
    skew: float = Field(0.1, ge=0, lt=1, description="skew KL's mixing weight alpha")
    chunk_tokens: Optional[int] = Field(None, gt=0, description="tokens per chunk of the memory-bounded "
                                        "loss; default: sized by the vocabulary and device")
    on_policy_fraction: float = Field(0.0, ge=0, le=1, description="GKD lambda: share of batches whose "
                                      "completions the student samples (jsonl prompt data only)")
    on_policy_max_new_tokens: int = Field(64, gt=0)
