"""Per-token top-k records of a language-model teacher: how they are encoded for a cache, how a
batch of them becomes ``TopKLogits`` for the fused loss, and how faithful they are.

A record is a token's kept teacher tokens (``k`` at most; fewer once they hold ``mass`` of the
probability, or once u8 runs out of range), their ids and log-probabilities, and ``log_tail`` =
log(1 - their mass), computed from the full distribution. u8 stores the distance below the
token's top-1 log-probability in steps of ``step`` nats (0..255); fp16 / u8 values are
renormalised on reading so the kept mass is exactly 1 - tail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kdistill.errors import ConfigError
from kdistill.losses.topk import TopKLogits

VALUES = {"fp32": np.float32, "fp16": np.float16, "u8": np.uint8}


@dataclass(frozen=True)
class Encoding:
    """How a token's top-k is stored (see the module notes)."""

    k: int = 64
    mass: float = 1.0
    values: str = "u8"
    step: float = 1 / 16
    ids: str = "auto"  # auto: u16 when the vocabulary fits, else u32

    def check(self, vocab: int) -> None:
        if not 1 <= self.k <= min(vocab, 65535):
            raise ConfigError(f"teacher.k must be between 1 and {min(vocab, 65535)} (the vocabulary), got {self.k}")
        if not 0 < self.mass <= 1:
            raise ConfigError(f"teacher.mass must be in (0, 1], got {self.mass}")
        if self.values not in VALUES:
            raise ConfigError(f"teacher.dtype must be one of {', '.join(VALUES)} for a language-model "
                              f"cache, got {self.values!r}")
        if self.values == "u8" and not self.step > 0:
            raise ConfigError(f"teacher.step must be > 0, got {self.step}")
        if self.ids not in ("auto", "u32") or (self.ids == "auto" and vocab > 2**32):
            raise ConfigError(f"ids must be 'auto' or 'u32', got {self.ids!r}")

    def sections(self, vocab: int) -> dict[str, np.dtype]:
        """Section name -> stored dtype, in file order (widest first: offsets stay aligned)."""
        ids = np.uint16 if self.ids == "auto" and vocab <= 65536 else np.uint32
        return {"block_targets": np.dtype(np.uint32), "block_entries": np.dtype(np.int64),
                "log_tail": np.dtype(np.float32 if self.values == "fp32" else np.float16),
                "ids": np.dtype(ids), "values": np.dtype(VALUES[self.values]),
                "counts": np.dtype(np.uint8 if self.k <= 255 else np.uint16)}


def _top(logits, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top log-probs sorted most likely first, their ids, log of the mass beyond them) from
    dense logits (N, V) or from a teacher that already gives its top entries (``TopKLogits``:
    a served teacher), whose entries past ``k`` join its tail."""
    if isinstance(logits, TopKLogits):
        order = logits.values.float().argsort(-1, descending=True)
        values, ids = logits.values.float().gather(-1, order), logits.indices.gather(-1, order)
        rest = torch.cat([logits.log_tail.float()[:, None], values[:, k:]], -1).logsumexp(-1)
        return values[:, :k], ids[:, :k], rest
    log_p = torch.log_softmax(logits.detach().float(), -1)
    top = log_p.topk(min(k, log_p.shape[-1]), -1)  # sorted, most likely first
    return top.values, top.indices, log_p.scatter_(-1, top.indices, -math.inf).logsumexp(-1)


def encode(logits, enc: Encoding) -> dict[str, np.ndarray]:
    """One batch of teacher outputs (dense logits (N, V), or TopKLogits) -> per-token counts and
    log_tail, flat ids and values."""
    top_values, top_ids, rest = _top(logits, enc.k)
    keep = torch.ones_like(top_values, dtype=torch.bool)
    if enc.mass < 1:  # an entry is kept while the mass before it is short of the threshold
        p = top_values.exp()
        keep &= (p.cumsum(-1) - p) < enc.mass
    rel = top_values[:, :1] - top_values
    if enc.values == "u8":
        q = torch.round(rel / enc.step)
        keep &= q <= 255
    log_tail = torch.cat([rest[:, None], top_values.masked_fill(keep, -math.inf)], -1).logsumexp(-1)
    values = q[keep] if enc.values == "u8" else top_values[keep]
    if enc.values == "fp16":
        values = values.clamp(min=torch.finfo(torch.float16).min)
    out = {"counts": keep.sum(-1), "log_tail": log_tail, "ids": top_ids[keep], "values": values}
    return {name: t.cpu().numpy() for name, t in out.items()}


def padded(counts: torch.Tensor, log_tail: torch.Tensor, ids: torch.Tensor, values: torch.Tensor,
           vocab: int, *, renormalise: bool) -> TopKLogits:
    """Flat per-token records -> (N, K) with K the widest record. Values are shifted so the kept
    mass is 1 - tail when ``renormalise``; shorter records get extra distinct ids outside their top
    set, each at its even share of the tail, and the returned tail is what then remains."""
    n, width = counts.shape[0], int(counts.max()) if counts.numel() else 0
    kept = torch.arange(width)[None, :] < counts[:, None]  # row-major, as the records are stored
    v = torch.full((n, width), -math.inf)
    idx = torch.zeros((n, width), dtype=torch.long)
    v[kept], idx[kept] = values, ids
    if renormalise:
        v += (torch.log1p(-log_tail.exp().clamp(max=1.0)) - v.logsumexp(-1))[:, None]
    short = (counts < width).nonzero().squeeze(1)
    if short.numel() == 0:
        return TopKLogits(v, idx, log_tail, vocab)
    c, sub_ids = counts[short], idx[short]
    spare = min(2 * width, vocab)  # among the first 2K ids at least K are outside a shorter record
    taken = torch.zeros((short.numel(), spare), dtype=torch.bool)
    row, col = (kept[short] & (sub_ids < spare)).nonzero(as_tuple=True)
    taken[row, sub_ids[row, col]] = True
    free = torch.argsort(taken.to(torch.int8), dim=1, stable=True)  # free candidates first, in order
    slot = torch.arange(width)[None, :] - c[:, None]
    fill = slot >= 0
    share = log_tail[short] - torch.log((vocab - c).double()).float()
    idx[short] = torch.where(fill, free.gather(1, slot.clamp(min=0)), sub_ids)
    v[short] = torch.where(fill, share[:, None].expand(-1, width), v[short])
    tail = log_tail.clone()
    tail[short] = (log_tail[short].double() + torch.log((vocab - width) / (vocab - c).double())).float()
    return TopKLogits(v, idx, tail, vocab)


def rebuilt_kl(teacher_logits: torch.Tensor, top: TopKLogits) -> torch.Tensor:
    """Per token KL(teacher's dense distribution || the cache's: its top tokens, and the tail
    spread evenly over the other tokens), in float64: the cache's fidelity."""
    log_p = torch.log_softmax(teacher_logits.double(), -1)
    m = top.num_classes - top.k
    rest = (top.log_tail.double() - math.log(m)) if m else torch.full_like(top.log_tail.double(), -math.inf)
    log_r = rest[:, None].expand_as(log_p).clone().scatter_(-1, top.indices, top.values.double())
    return (log_p.exp() * (log_p - log_r)).sum(-1)
