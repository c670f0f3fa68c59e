"""Per-token top-k records of a language-model teacher: how they are encoded for a cache, how a
batch of them becomes ``TopKLogits`` for the fused loss, and how faithful they are.

A record is a token's kept teacher tokens (``k`` at most; fewer once they hold ``mass`` of the
probability, when they fall below ``min_prob``, or once u8 runs out of range), their ids and
log-probabilities, and ``log_tail`` = log(1 - their mass), computed from the full distribution.
u8 stores the distance below the token's top-1 log-probability in steps of ``step`` nats
(0..255); fp16 / u8 values are renormalised on reading so the kept mass is exactly 1 - tail.

The tail (what the kept tokens leave) is spread over the other tokens evenly, or, with
``tail: prior``, in proportion to pi_j^alpha: pi is the teacher's mean distribution over the
first shard's tokens (stored once, u8 log steps of 1/8 nat), alpha in [0, 1.5] the power that
minimises the rebuilt distribution's KL on those tokens (alpha = 0 is the even tail, so the fit
is never worse than it). ``codec: packed`` sorts each record's ids by their rank under pi and
stores the gaps as varints and the u8 values in that order, each block LZMA-coded: real top-k
sets cluster among the tokens the teacher often predicts, so ids cost ~7 bits instead of 16.
"""

from __future__ import annotations

import lzma
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
    min_prob: float = 0.0
    tail: str = "even"  # even | prior
    codec: str = "raw"  # raw | packed

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
        if not 0 <= self.min_prob < 1:
            raise ConfigError(f"teacher.min_prob must be in [0, 1), got {self.min_prob}")
        if self.tail not in ("even", "prior"):
            raise ConfigError(f"teacher.tail must be 'even' or 'prior', got {self.tail!r}")
        if self.codec not in ("raw", "packed"):
            raise ConfigError(f"teacher.codec must be 'raw' or 'packed', got {self.codec!r}")
        if self.codec == "packed" and (self.values != "u8" or self.tail != "prior"):
            raise ConfigError("teacher.codec: packed orders ids by the prior and codes u8 values: set "
                              "teacher.dtype: u8 and teacher.tail: prior, or teacher.codec: raw")

    @property
    def count_dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.k <= 255 else np.uint16)

    def sections(self, vocab: int) -> dict[str, np.dtype]:
        """Section name -> stored dtype, in file order (widest first: offsets stay aligned)."""
        counts = self.count_dtype
        log_tail = np.dtype(np.float32 if self.values == "fp32" else np.float16)
        if self.codec == "packed":  # a block's counts, id gaps and values live in its LZMA blob
            return {"block_targets": np.dtype(np.uint32), "block_bytes": np.dtype(np.int64),
                    "log_tail": log_tail, "packed": np.dtype(np.uint8)}
        ids = np.uint16 if self.ids == "auto" and vocab <= 65536 else np.uint32
        return {"block_targets": np.dtype(np.uint32), "block_entries": np.dtype(np.int64),
                "log_tail": log_tail, "ids": np.dtype(ids), "values": np.dtype(VALUES[self.values]),
                "counts": counts}


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
    if enc.min_prob > 0:  # and while it is at least min_prob likely (the top-1 always)
        keep[:, 1:] &= top_values[:, 1:] >= math.log(enc.min_prob)
    rel = top_values[:, :1] - top_values
    if enc.values == "u8":
        q = torch.round(rel / enc.step)
        keep &= q <= 255
    log_tail = torch.cat([rest[:, None], top_values.masked_fill(keep, -math.inf)], -1).logsumexp(-1)
    values = q[keep] if enc.values == "u8" else top_values[keep]
    if enc.values == "fp16":
        values = values.clamp(min=torch.finfo(torch.float16).min)
    out = {"counts": keep.sum(-1), "log_tail": log_tail, "ids": top_ids[keep], "values": values,
           "kept_log_p": top_values[keep]}  # kept_log_p: for the tail statistics, not stored
    return {name: t.cpu().numpy() for name, t in out.items()}


# ---------------------------------------------------------------- the tail's shape (tail: prior)
PRIOR_STEP = 1 / 8  # nats per u8 step of the stored log-prior (255 steps: 32 nats)
POWERS = np.round(np.arange(0, 1.5001, 0.05), 2)  # the alphas the fit tries


class TailStats:
    """What fitting the tail's shape needs, summed over a shard's tokens as they are captured:
    the teacher's probabilities per vocabulary entry, and the part of them outside each token's
    kept set (float64, V each)."""

    def __init__(self, vocab: int):
        self.total, self.outside, self.tokens = np.zeros(vocab), np.zeros(vocab), 0

    def add(self, logits, record: dict) -> None:
        vocab = self.total.shape[0]
        if isinstance(logits, TopKLogits):  # a served teacher: its entries, its tail spread evenly
            p = torch.zeros(vocab, dtype=torch.float64)
            p.index_add_(0, logits.indices.flatten().cpu(), logits.values.double().exp().flatten().cpu())
            p += float(logits.log_tail.double().exp().sum()) / max(vocab - logits.k, 1)
        else:
            p = torch.softmax(logits.detach().float(), -1)
            p = (p.new_ones(1, p.shape[0]) @ p)[0].double().cpu()  # a column sum as one BLAS call: 6x faster
        kept = np.bincount(record["ids"], weights=np.exp(record["kept_log_p"].astype(np.float64)), minlength=vocab)
        self.total += p.numpy()
        self.outside += p.numpy() - kept
        self.tokens += len(record["counts"])


@dataclass(frozen=True)
class TailModel:
    """The stored tail shape: ``quantized`` u8 steps of PRIOR_STEP nats below the prior's most
    likely token, and the fitted power; ids ranked by it (most likely first, ties by id)."""

    quantized: np.ndarray
    power: float

    @property
    def log_prior(self) -> np.ndarray:
        return -self.quantized.astype(np.float64) * PRIOR_STEP

    @property
    def log_weights(self) -> torch.Tensor:
        return torch.from_numpy(self.power * self.log_prior).float()

    @property
    def order(self) -> np.ndarray:
        return np.lexsort((np.arange(len(self.quantized)), self.quantized))

    @property
    def rank(self) -> np.ndarray:
        rank = np.empty(len(self.quantized), np.int64)
        rank[self.order] = np.arange(len(self.quantized))
        return rank

    def to_bytes(self) -> bytes:
        return lzma.compress(self.quantized.tobytes(), format=lzma.FORMAT_RAW, filters=LZMA)

    @classmethod
    def from_bytes(cls, blob: bytes, power: float) -> "TailModel":
        return cls(np.frombuffer(lzma.decompress(blob, format=lzma.FORMAT_RAW, filters=LZMA), np.uint8), power)


def fit_tail(stats: TailStats, counts: np.ndarray, ids: np.ndarray, log_tail: np.ndarray) -> TailModel:
    """The prior (the mean teacher distribution over the shard, quantised) and the power alpha
    minimising the summed KL(teacher || rebuilt) over the shard's tokens. The KL's alpha-dependent
    part is  -alpha sum_j A_j log pi_j + sum_t tau_t log Z_t(alpha)  (A: the teacher's mass outside
    the kept sets, tau_t a token's tail mass, Z_t the weights pi^alpha outside its kept set):
    exact from the sums, without the tokens' dense distributions."""
    log_pi = np.log(np.maximum(stats.total / max(stats.tokens, 1), 1e-300))
    quantized = np.round((log_pi.max() - log_pi) / PRIOR_STEP).clip(0, 255).astype(np.uint8)
    model = TailModel(quantized, 0.0)
    lp = model.log_prior
    token_of = np.repeat(np.arange(len(counts)), counts)
    tau = np.exp(log_tail.astype(np.float64))
    cost = []
    for alpha in POWERS:
        w = np.exp(alpha * lp)
        z = w.sum() - np.bincount(token_of, weights=w[ids], minlength=len(counts))
        cost.append(-alpha * float(stats.outside @ lp) + float(tau @ np.log(np.maximum(z, 1e-300))))
    return TailModel(quantized, float(POWERS[int(np.argmin(cost))]))


# ---------------------------------------------------------------- codec: packed
# lc = lp = pb = 0: the streams are numbers, not text (no literal context); blocks are ~10-50 kB
LZMA = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 20, "lc": 0, "lp": 0, "pb": 0}]


def _varint(a: np.ndarray) -> bytes:
    """LEB128: 7 bits a byte, the high bit set on all but a value's last byte."""
    a = a.astype(np.uint64)
    nb = 1 + sum((a >= (1 << s)).astype(np.int64) for s in (7, 14, 21, 28))
    which = np.repeat(np.arange(len(a)), nb)
    pos = np.arange(int(nb.sum())) - np.repeat(np.cumsum(nb) - nb, nb)
    byte = (a[which] >> (7 * pos).astype(np.uint64)) & 0x7F
    return (byte | ((pos < nb[which] - 1).astype(np.uint64) << 7)).astype(np.uint8).tobytes()


def _unvarint(b: np.ndarray, n: int) -> np.ndarray:
    ends = (b & 0x80) == 0
    which = np.cumsum(ends) - ends
    starts = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
    pos = np.arange(len(b)) - starts[which]
    parts = (b & 0x7F).astype(np.float64) * np.exp2(7 * pos)  # exact: values < 2^35
    return np.bincount(which, weights=parts, minlength=n).astype(np.int64)


def pack_block(counts: np.ndarray, ids: np.ndarray, values: np.ndarray, rank: np.ndarray) -> bytes:
    """One block's records: counts, then per token its ids' ranks sorted (as varint gaps) and the
    u8 values in the same order, three LZMA streams after their two lengths."""
    token_of = np.repeat(np.arange(len(counts)), counts)
    r = rank[ids]
    order = np.lexsort((r, token_of))
    r, values = r[order], values[order]
    first = np.ones(len(r), bool)
    first[1:] = token_of[1:] != token_of[:-1]
    gaps = np.where(first, r, r - np.concatenate([[0], r[:-1]]) - 1)
    streams = [lzma.compress(x, format=lzma.FORMAT_RAW, filters=LZMA)
               for x in (counts.tobytes(), _varint(gaps), values.astype(np.uint8).tobytes())]
    return np.array([len(streams[0]), len(streams[1])], "<u4").tobytes() + b"".join(streams)


def unpack_block(blob: bytes, count_dtype: np.dtype, order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pack_block`` undone: (counts, ids, u8 values), each token's entries in rank order."""
    a, b = np.frombuffer(blob[:8], "<u4").tolist()
    raw = [lzma.decompress(blob[8 + s: 8 + e], format=lzma.FORMAT_RAW, filters=LZMA)
           for s, e in ((0, a), (a, a + b), (a + b, len(blob) - 8))]
    counts = np.frombuffer(raw[0], count_dtype).astype(np.int64)
    n = int(counts.sum())
    steps = _unvarint(np.frombuffer(raw[1], np.uint8), n) + 1
    total = np.cumsum(steps)
    before = np.concatenate([[0], total])[np.repeat(np.cumsum(counts) - counts, counts)]
    return counts, order[total - before - 1], np.frombuffer(raw[2], np.uint8)


def padded(counts: torch.Tensor, log_tail: torch.Tensor, ids: torch.Tensor, values: torch.Tensor,
           vocab: int, *, renormalise: bool, tail_shape: torch.Tensor | None = None) -> TopKLogits:
    """Flat per-token records -> (N, K) with K the widest record. Values are shifted so the kept
    mass is 1 - tail when ``renormalise``; shorter records get extra distinct ids outside their top
    set, each at its share of the tail (even, or by ``tail_shape``'s log-weights), and the
    returned tail is what then remains."""
    n, width = counts.shape[0], int(counts.max()) if counts.numel() else 0
    kept = torch.arange(width)[None, :] < counts[:, None]  # row-major, as the records are stored
    v = torch.full((n, width), -math.inf)
    idx = torch.zeros((n, width), dtype=torch.long)
    v[kept], idx[kept] = values, ids
    if renormalise:
        v += (torch.log1p(-log_tail.exp().clamp(max=1.0)) - v.logsumexp(-1))[:, None]
    short = (counts < width).nonzero().squeeze(1)
    if short.numel() == 0:
        return TopKLogits(v, idx, log_tail, vocab, tail_shape)
    c, sub_ids = counts[short], idx[short]
    spare = min(2 * width, vocab)  # among the first 2K ids at least K are outside a shorter record
    taken = torch.zeros((short.numel(), spare), dtype=torch.bool)
    row, col = (kept[short] & (sub_ids < spare)).nonzero(as_tuple=True)
    taken[row, sub_ids[row, col]] = True
    free = torch.argsort(taken.to(torch.int8), dim=1, stable=True)  # free candidates first, in order
    slot = torch.arange(width)[None, :] - c[:, None]
    fill = slot >= 0
    new_idx = torch.where(fill, free.gather(1, slot.clamp(min=0)), sub_ids)
    # each token outside the kept set has weight w (1 for an even tail); Z: the kept set's outside
    lw = torch.zeros(vocab, dtype=torch.float64) if tail_shape is None else tail_shape.double() - tail_shape.max()
    w = lw.exp()
    z = w.sum() - (w[sub_ids] * kept[short]).sum(1)
    share = log_tail[short].double()[:, None] + lw[new_idx] - z.log()[:, None]
    idx[short] = new_idx
    v[short] = torch.where(fill, share.float(), v[short])
    tail = log_tail.clone()
    tail[short] = (log_tail[short].double() + torch.log1p(-(w[new_idx] * fill).sum(1) / z)).float()
    return TopKLogits(v, idx, tail, vocab, tail_shape)


def rebuilt_kl(teacher_logits: torch.Tensor, top: TopKLogits) -> torch.Tensor:
    """Per token KL(teacher's dense distribution || the cache's: its top tokens, and the tail
    spread over the other tokens, evenly or by ``top.tail_shape``), in float64: the cache's fidelity."""
    log_p = torch.log_softmax(teacher_logits.double(), -1)
    lw = torch.zeros(top.num_classes, dtype=torch.float64) if top.tail_shape is None else top.tail_shape.double()
    outside = lw.expand_as(log_p).scatter(-1, top.indices, -math.inf)
    rest = outside - outside.logsumexp(-1, keepdim=True) + top.log_tail.double()[:, None]
    log_r = rest.scatter_(-1, top.indices, top.values.double())
    return (log_p.exp() * (log_p - log_r)).sum(-1)
