"""Distillation losses: pure functions on tensors, never reaching into a model.

Every loss returns one value *per sample* (``reduction="none"``) or their sum (``"sum"``) or mean
(``"mean"``). The engine sums per-sample values and divides by the number of samples in the whole
optimizer step (all micro-batches, all processes), so gradient accumulation and data parallelism
optimise exactly the same objective as one large batch.
"""

from kdistill.losses.classification import (
    Reduction,
    hard_cross_entropy,
    kd_objective,
    reduce,
    soft_target_kl,
)
from kdistill.losses.intermediate import attention_kl, hidden_state_mse
from kdistill.losses.topk import TopKLogits, topk_soft_target_kl

__all__ = ["Reduction", "TopKLogits", "attention_kl", "hard_cross_entropy", "hidden_state_mse",
           "kd_objective", "reduce", "soft_target_kl", "topk_soft_target_kl"]

# methods beyond soft targets (issue 16)
from kdistill.losses.features import attention_transfer
from kdistill.losses.features import hint_mse
from kdistill.losses.features import pkt
from kdistill.losses.features import rkd_angle
from kdistill.losses.features import rkd_distance
from kdistill.losses.logits import dist
from kdistill.losses.logits import dkd
from kdistill.losses.logits import dkd_warmup
from kdistill.losses.logits import standardize_logits
from kdistill.losses.temperature import LearnedTemperature
from kdistill.losses.temperature import confidence_temperatures
from kdistill.losses.temperature import ctkd_strength
from kdistill.losses.temperature import tempered_soft_target_kl

__all__ += ["LearnedTemperature", "attention_transfer", "confidence_temperatures", "ctkd_strength", "dist",
            "dkd", "dkd_warmup", "hint_mse", "pkt", "rkd_angle", "rkd_distance", "standardize_logits",
            "tempered_soft_target_kl"]
