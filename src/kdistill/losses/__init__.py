"""Distillation losses: pure functions on tensors, never reaching into a model.

Every loss returns one value *per sample* (``reduction="none"``) or their sum (``"sum"``) or mean
(``"mean"``). The engine sums per-sample values and divides by the number of samples in the whole
optimizer step (all micro-batches, all processes), so gradient accumulation and data parallelism
optimise exactly the same objective as one large batch.
"""

from kdistill.losses.classification import hard_cross_entropy, kd_objective, soft_target_kl
from kdistill.losses.divergences import DIVERGENCES, divergence_from_log_probs, token_divergence
from kdistill.losses.fused import TokenLossSpec, chunked_weighted_loss, default_chunk_tokens
from kdistill.losses.intermediate import attention_kl, hidden_state_mse
from kdistill.losses.reduction import Reduction, reduce
from kdistill.losses.topk import TopKLogits, topk_soft_target_kl

from kdistill.losses.features import attention_transfer, hint_mse, pkt, rkd_angle, rkd_distance
from kdistill.losses.logits import dist, dkd, dkd_warmup, standardize_logits
from kdistill.losses.temperature import (LearnedTemperature, confidence_temperatures, ctkd_strength,
                                         tempered_soft_target_kl)

__all__ = ["DIVERGENCES", "Reduction", "TokenLossSpec", "TopKLogits", "attention_kl",
           "chunked_weighted_loss", "default_chunk_tokens", "divergence_from_log_probs",
           "hard_cross_entropy", "hidden_state_mse", "kd_objective", "reduce", "soft_target_kl",
           "token_divergence", "topk_soft_target_kl",
           # methods beyond soft targets
           "LearnedTemperature", "attention_transfer", "confidence_temperatures", "ctkd_strength", "dist",
           "dkd", "dkd_warmup", "hint_mse", "pkt", "rkd_angle", "rkd_distance", "standardize_logits",
           "tempered_soft_target_kl"]

