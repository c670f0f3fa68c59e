"""Teacher sources for causal LMs: a live model scored only at the positions that count, and an
in-memory cache (top-k with the tail mass kept, or dense fp16) built once over a training set."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdistill.losses.topk import TopKLogits
from kdistill.tasks.causal_lm import selected_logits
from kdistill.precision import DTYPES, resolve_precision
from kdistill.teachers.base import TeacherSource
from kdistill.teachers.live import weights_hash


class SelectedLogits(nn.Module):
    """A causal LM's logits at the target positions as one forward call, so that under FSDP2 the
    root's parameters (embeddings, final norm, output layer) are gathered for exactly that call."""

    def __init__(self, lm: nn.Module, vocab_size: int):
        super().__init__()
        self.lm, self.vocab_size = lm, vocab_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        return selected_logits(self.lm, batch, input_ids.device, self.vocab_size)


class CausalLMTeacher(TeacherSource):
    """A live causal LM: eval mode, no gradients, optionally bf16/fp16; returns fp32 logits (N, V)
    for the batch's target positions only, sliced to the aligned vocabulary. ``shard``: under
    torchrun, FSDP2 shards it across the ranks (its decoder blocks, then the rest), for teachers
    too big to replicate beside the student; every rank must then ask for every batch."""

    def __init__(self, model: nn.Module, vocab_size: int, *, precision: str = "fp32",
                 device: str | torch.device = "cpu", output_device: str | torch.device | None = None,
                 shard: bool = False):
        self.device = torch.device(device)
        self.output_device = torch.device(output_device) if output_device else self.device
        self.precision, self.precision_reason = resolve_precision(precision, self.device)  # "auto" -> a dtype
        self.model = model.to(self.device, dtype=DTYPES[self.precision]).eval().requires_grad_(False)
        self.num_outputs = vocab_size
        self.weights_sha256 = weights_hash(self.model)  # before sharding: the whole teacher's identity
        self.sharded = None
        if shard:
            from kdistill import distributed

            self.sharded = distributed.shard(SelectedLogits(self.model, vocab_size), self.device)

    @torch.no_grad()
    def logits(self, batch: dict) -> torch.Tensor:
        if self.sharded is not None:
            out = self.sharded(*(batch[k].to(self.device) for k in ("input_ids", "attention_mask", "labels")))
        else:
            out = selected_logits(self.model, batch, self.device, self.num_outputs)
        return out.to(self.output_device, dtype=torch.float32)

    def describe(self) -> dict:
        return {"kind": "causal_lm_live", "weights_sha256": self.weights_sha256,
                "precision": self.precision, "precision_reason": self.precision_reason,
                "vocab_size": self.num_outputs, "sharded": self.sharded is not None}


class TopKCacheTeacher(TeacherSource):
    """The teacher run once over every block of a training set, keeping per target token its
    top-k log-probabilities (``k``; tail mass kept) or, with ``k=None``, its full logits in fp16;
    batches look their rows up by ``index``. Only valid for the blocks it was built on (checked by
    the number of target tokens per batch)."""

    def __init__(self, teacher: TeacherSource, blocks, k: int | None = 64, batch_size: int = 8):
        from kdistill.data.lm_text import LMBatches

        self.num_outputs, self.k, self.source = teacher.num_outputs, k, teacher.describe()
        per_block = (blocks.labels[:, 1:] != -100).sum(1)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), per_block.cumsum(0)])
        total = int(self.offsets[-1])
        if k is None:
            self.dense = torch.empty(total, teacher.num_outputs, dtype=torch.float16)
        else:
            self.indices = torch.empty(total, k, dtype=torch.int32)
            self.log_probs = torch.empty(total, k, dtype=torch.float32)
            self.log_tail = torch.empty(total, dtype=torch.float32)
        for batch in LMBatches(blocks, batch_size):
            logits = teacher.logits(batch).float()
            start = int(self.offsets[batch["index"][0]])
            rows = slice(start, start + logits.shape[0])
            if k is None:
                self.dense[rows] = logits.cpu().to(torch.float16)
                continue
            log_p = torch.log_softmax(logits, -1)
            top = log_p.topk(k, -1)
            self.indices[rows] = top.indices.to(torch.int32).cpu()
            self.log_probs[rows] = top.values.cpu()
            self.log_tail[rows] = log_p.scatter_(-1, top.indices, -math.inf).logsumexp(-1).cpu()

    def logits(self, batch: dict) -> torch.Tensor | TopKLogits:
        rows = torch.cat([torch.arange(int(self.offsets[i]), int(self.offsets[i + 1]))
                          for i in batch["index"].tolist()])
        expected = int((batch["labels"][:, 1:] != -100).sum())
        if rows.numel() != expected:
            raise ValueError(f"the teacher cache holds {rows.numel()} target tokens for these blocks "
                             f"but the batch has {expected}: the cache belongs to other data")
        if self.k is None:
            return self.dense[rows].float()
        return TopKLogits(self.log_probs[rows], self.indices[rows].long(), self.log_tail[rows], self.num_outputs)

    def describe(self) -> dict:
        return {"kind": "causal_lm_cache", "k": self.k, "teacher": self.source}
