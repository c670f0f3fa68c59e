"""Causal language modelling: position t predicts token t + 1, only target tokens count.

The task selects the positions that count (not padding, not prompt) *before* the output layer,
so neither the student's nor the teacher's logits ever exist for the others, and the loss runs in
chunks of tokens through ``chunked_weighted_loss`` (the student's logits exist one chunk at a time).
``count`` is the number of target tokens, so the engine's per-step normalisation gives the same
objective whatever the micro-batching or padding.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdistill.data.lm_text import IGNORE
from kdistill.errors import TrainingError
from kdistill.losses.divergences import token_divergence
from kdistill.losses.fused import TokenLossSpec, chunked_weighted_loss, default_chunk_tokens
from kdistill.losses.topk import TopKLogits
from kdistill.outputs import Outputs
from kdistill.tasks.base import Task
from kdistill.teachers.base import to_logits


def target_mask(batch: dict) -> torch.Tensor:
    """(B, L-1) bool: whether position t's next token (t + 1) is a training target."""
    return batch["labels"][:, 1:] != IGNORE


def shifted_targets(batch: dict) -> torch.Tensor:
    """The target token of every selected position, in row-major order."""
    labels = batch["labels"][:, 1:]
    return labels[labels != IGNORE]


def output_head(model: nn.Module) -> nn.Linear | None:
    """The model's output layer if logits are a plain linear map of the final hidden states
    (then the loss can be fused with it); None for models that rescale or soft-cap logits."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = getattr(model, "config", None)
    if not isinstance(head, nn.Linear) or getattr(model, "base_model", model) is model:
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    return head


class FinalHidden(nn.Module):
    """A causal LM seen through its final hidden states (B, L, H), its output layer left to the
    fused loss. Under torchrun DDP wraps this view, so the student's logits are never made for
    the whole batch there either; the output layer stays inside, and DDP averages its gradients."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def selected_hidden(model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
    """The final hidden states (N, H) at the selected positions; ``model`` is the causal LM or
    DDP around its ``FinalHidden``."""
    view = model if isinstance(model, FinalHidden) or isinstance(getattr(model, "module", None), FinalHidden) \
        else FinalHidden(model)
    hidden = view(batch["input_ids"].to(device), batch["attention_mask"].to(device))
    return hidden[:, :-1][target_mask(batch).to(device)]


def selected_logits(model: nn.Module, batch: dict, device: torch.device, vocab_size: int) -> torch.Tensor:
    """Logits (N, vocab_size) at the selected positions, for teachers and evaluation."""
    head = output_head(model)
    if head is None:
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        return to_logits(out)[:, :-1][target_mask(batch).to(device)][:, :vocab_size]
    h = selected_hidden(model, batch, device)
    return F.linear(h, head.weight[:vocab_size], head.bias[:vocab_size] if head.bias is not None else None)


class CausalLMTask(Task):
    """Next-token prediction with a token-level divergence to the teacher.

    ``vocab_size`` is the aligned vocabulary (``check_vocabularies``); logits beyond it are
    padding rows and are sliced away. ``reference`` (optional) gives the teacher's selected logits
    for a held-out batch, so ``evaluate`` reports agreement and KL to the teacher.
    """

    def __init__(self, vocab_size: int, *, divergence: str = "forward_kl", jsd_beta: float = 0.5,
                 skew: float = 0.1, chunk_tokens: int | None = None, device: str | torch.device = "cpu",
                 reference: Callable[[dict], torch.Tensor] | None = None):
        self.vocab_size, self.divergence, self.jsd_beta, self.skew = vocab_size, divergence, jsd_beta, skew
        self.device, self.reference = torch.device(device), reference
        self.chunk_tokens = chunk_tokens or default_chunk_tokens(vocab_size, self.device)

    def parallel_module(self, student: nn.Module) -> nn.Module:
        return FinalHidden(student) if output_head(student) is not None else student

    def forward(self, model: nn.Module, batch: dict) -> Outputs:
        """Final hidden states (N, H) at the selected positions and the output layer, when that
        layer can be fused with the loss (the common case); else the selected logits (N, V)."""
        inner = model if isinstance(model, FinalHidden) else getattr(model, "module", None)  # FSDP2 / DDP
        head = output_head(inner.lm if isinstance(inner, FinalHidden) else model)
        if head is None:
            return Outputs(selected_logits(model, batch, self.device, self.vocab_size))
        return Outputs(pre_head=selected_hidden(model, batch, self.device), head=head)

    def count(self, batch: dict) -> int:
        return int(target_mask(batch).sum())

    def check_outputs(self, student: Outputs, teacher: Outputs) -> None:
        teacher_out = teacher.logits
        topk = isinstance(teacher_out, TopKLogits)
        rows = teacher_out.indices.shape[0] if topk else teacher_out.shape[0]
        if rows != student.rows:
            raise TrainingError(f"the teacher scored {rows} target tokens and the student "
                                f"{student.rows}: both must see the same batch and masks")
        if not topk and teacher_out.shape[-1] != self.vocab_size:
            raise TrainingError(f"the teacher gives {teacher_out.shape[-1]} logits per token, the "
                                f"aligned vocabulary has {self.vocab_size}: align with check_vocabularies")

    def logit_loss(self, student, teacher_logits, batch, *, temperature, soft_weight, hard_weight):
        spec = TokenLossSpec(kind=self.divergence, temperature=temperature, beta=self.jsd_beta,
                             skew=self.skew, divergence=teacher_logits is not None and soft_weight != 0,
                             cross_entropy=hard_weight != 0)
        teacher, indices, tail = teacher_logits, None, None
        if isinstance(teacher_logits, TopKLogits):  # a compressed teacher
            if temperature != 1.0:
                raise TrainingError("a top-k teacher cache holds temperature-1 probabilities: set "
                                    "loss.temperature: 1 or use a live teacher")
            teacher, indices, tail = teacher_logits.values, teacher_logits.indices, teacher_logits.tail_shape
        labels = shifted_targets(batch).to(self.device)
        weight = bias = None
        if student.head is not None:
            hidden = student.pre_head.float()
            weight = student.head.weight[: self.vocab_size]
            bias = student.head.bias[: self.vocab_size] if student.head.bias is not None else None
        else:
            hidden = student.logits.float()[:, : self.vocab_size]
        total, soft, hard = chunked_weighted_loss(
            hidden, teacher, labels, spec, soft_weight=soft_weight if spec.divergence else 0.0,
            hard_weight=hard_weight if spec.cross_entropy else 0.0, weight=weight, bias=bias,
            teacher_indices=indices, chunk_size=self.chunk_tokens,
            teacher_tail=None if tail is None else tail.to(self.device))
        terms = {}
        if spec.divergence:
            terms["soft"] = soft
        if spec.cross_entropy:
            terms["hard"] = hard
        return total, terms

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches) -> dict[str, float]:
        """Held-out perplexity; with a reference teacher also top-1 agreement and KL(teacher ||
        model) per token, all averaged over target tokens."""
        was_training = model.training
        model.eval()
        nll = agree = kl = 0.0
        tokens = 0
        for batch in batches:
            logits = selected_logits(model, batch, self.device, self.vocab_size).float()
            labels = shifted_targets(batch).to(self.device)
            nll += float(F.cross_entropy(logits, labels, reduction="sum"))
            if self.reference is not None:
                ref = self.reference(batch).to(self.device).float()
                agree += float((logits.argmax(-1) == ref.argmax(-1)).sum())
                kl += float(sum(token_divergence(logits[s : s + self.chunk_tokens].double(),
                                                 ref[s : s + self.chunk_tokens].double()).sum()
                                for s in range(0, len(labels), self.chunk_tokens)))
            tokens += len(labels)
        model.train(was_training)
        out = {"nll": nll / max(tokens, 1), "ppl": math.exp(nll / max(tokens, 1)), "tokens": tokens}
        if self.reference is not None:
            out.update(agreement=agree / max(tokens, 1), kl_to_teacher=kl / max(tokens, 1))
        return out
