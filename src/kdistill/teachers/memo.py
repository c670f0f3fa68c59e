"""A frozen teacher on fixed inputs runs once: the default teacher source of a training run.

``default_source(cfg, source)`` wraps the run's teacher in a ``MemoizedTeacher`` that computes the
teacher's outputs on a training sample's first pass (keyed by ``batch["index"]``) and serves them
again on later epochs: in memory up to ``max_bytes``, then spilled to a temporary file. Whether
reuse is safe is decided by ``reuse_decision`` alone: augmentation, on-policy data, a teacher that
is not frozen, or ``teacher.reuse: off`` keep the live teacher, and the run says which and why
(a line on stderr; ``summary.json``'s ``teacher``).

Outputs may be dense logits (N, C), a ``TopKLogits``, or a text teacher's dict of logits, hidden
states and attention maps (stored trimmed to each text's length, re-padded to the batch's width
with zeros: every loss masks padding). Each row also keeps a fingerprint of the teacher's inputs
for that sample, exact integer arithmetic over the input's bits, so a sample whose inputs differ
from the stored ones is recomputed rather than served stale. Stored values are the live teacher's
own fp32 outputs, so training gives the same weights as with the live teacher (tested).
"""

from __future__ import annotations

import os
import sys
import tempfile
import weakref

import torch

from kdistill.losses.topk import TopKLogits
from kdistill.teachers.base import TeacherSource

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB of outputs in memory; the rest goes to a temporary file
_IN_BATCH = "memoized_teacher_outputs"  # a batch's outputs once fetched (logits() and outputs() share)


def reuse_decision(*, augment: str = "none", teacher_frozen: bool, on_policy: bool = False,
                   live_only: bool = False) -> tuple[bool, str]:
    """Whether a teacher's outputs on a training sample can be computed once and reused: only
    when they cannot change between epochs. Returns (reuse, the reason in words)."""
    if live_only:
        return False, "teacher.reuse is off: the teacher runs on every batch"
    if augment != "none":
        return False, (f"data.augment is {augment!r}: the teacher sees new random views every epoch, "
                       "so it runs on every batch")
    if on_policy:
        return False, "on-policy data: the student writes new inputs every epoch, so the teacher runs live"
    if not teacher_frozen:
        return False, "the teacher is not frozen (training mode or trainable weights): it runs live"
    return True, ("a frozen teacher on inputs that do not change between epochs (no augmentation): "
                  "its outputs on each training sample are computed once and reused")


def _frozen(source: TeacherSource) -> bool:
    model = getattr(source, "model", None)  # sources backed by a model: LiveTeacher, TextTeacher
    return isinstance(model, torch.nn.Module) and not model.training and not any(
        p.requires_grad for p in model.parameters())


def default_source(cfg, source: TeacherSource, *, max_bytes: int = DEFAULT_MAX_BYTES,
                   spill_dir: str | None = None, echo=True) -> TeacherSource:
    """The teacher source a run trains with: ``source`` memoized when ``reuse_decision`` allows,
    else ``source`` itself (with the reason recorded). Says which on stderr."""
    from kdistill.teachers.cache import CachedTeacher

    if isinstance(source, (CachedTeacher, MemoizedTeacher)):
        return source  # outputs already read from a store
    data, loss, teacher = cfg.data, cfg.loss, cfg.teacher
    reuse, reason = reuse_decision(
        augment=getattr(data, "augment", "none"), teacher_frozen=_frozen(source),
        on_policy=getattr(loss, "on_policy_fraction", 0.0) > 0,
        live_only=getattr(teacher, "reuse", "auto") == "off")
    wrapped = MemoizedTeacher(source, max_bytes=max_bytes, spill_dir=spill_dir, reason=reason, reuse=reuse)
    if echo:
        print(f"teacher: {'memoized' if reuse else 'live'} ({reason})", file=sys.stderr, flush=True)
    return wrapped


# ---------------------------------------------------------------- rows of one sample
def fingerprint(inputs) -> torch.Tensor:
    """(N,) int64: a per-sample hash of the teacher's inputs, exact (integer arithmetic on the
    values' bits, so independent of batch size) and, for token inputs with an attention mask,
    independent of the padding width."""
    tensors = inputs if isinstance(inputs, dict) else {"inputs": inputs}
    mask = tensors.get("attention_mask")
    key = None
    for name in sorted(tensors):
        t = tensors[name].detach().cpu()
        if t.is_floating_point():
            t = t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
        t = t.long()
        if mask is not None and t.shape == mask.shape:
            t = t * mask.cpu().long()
        t = t.flatten(1)
        weights = (torch.arange(t.shape[1], dtype=torch.long) * 40503 + 1) % 65521 + 1
        part = (t * weights).sum(1)
        key = part if key is None else key * 1_000_003 + part
    return key


def _rows(out, lengths: list[int] | None) -> list[dict[str, torch.Tensor]]:
    """One dict of CPU tensors per sample (text: trimmed to the sample's length), copied so that
    nothing done later to the batch's outputs reaches the store."""
    if isinstance(out, torch.Tensor):
        return [{"logits": r} for r in out.detach().cpu().clone()]
    if isinstance(out, TopKLogits):
        parts = {k: getattr(out, k).detach().cpu().clone() for k in ("values", "indices", "log_tail")}
        return [{k: v[i] for k, v in parts.items()} for i in range(parts["values"].shape[0])]
    logits = out["logits"].detach().cpu().clone()
    rows = []
    for i, n in enumerate(lengths):
        row = {"logits": logits[i]}
        row.update({f"hidden.{k}": v[i, :n].detach().cpu().clone() for k, v in out["hidden"].items()})
        row.update({f"attention.{k}": v[i, :, :n, :n].detach().cpu().clone()
                    for k, v in out["attention"].items()})
        rows.append(row)
    return rows


def _join(kind: str, rows: list[dict[str, torch.Tensor]], width: int | None, num_classes: int, device):
    """The batch's outputs in the form the source gives them, from its samples' rows."""
    if kind == "dense":
        return torch.stack([r["logits"] for r in rows]).to(device, non_blocking=True)
    if kind == "topk":
        return TopKLogits(*(torch.stack([r[k] for r in rows]).to(device, non_blocking=True)
                            for k in ("values", "indices", "log_tail")), num_classes)
    out = {"logits": torch.stack([r["logits"] for r in rows]).to(device), "hidden": {}, "attention": {}}
    for name in rows[0]:
        group, _, layer = name.partition(".")
        if group == "logits":
            continue
        first = rows[0][name]
        shape = (len(rows), *first.shape[:-2], width, width) if group == "attention" else \
            (len(rows), width, *first.shape[1:])
        full = torch.zeros(shape, dtype=first.dtype)
        for i, r in enumerate(rows):
            t = r[name]
            if group == "attention":
                full[i, :, : t.shape[-2], : t.shape[-1]] = t
            else:
                full[i, : t.shape[0]] = t
        out[group][int(layer)] = full.to(device)
    return out


def _kind(out) -> str:
    return "dense" if isinstance(out, torch.Tensor) else "topk" if isinstance(out, TopKLogits) else "text"


class _Store:
    """Rows by sample index: in memory while they fit in ``max_bytes``, then in a temporary file
    (deleted when the store is) read back with ``os.pread``."""

    def __init__(self, max_bytes: int, spill_dir: str | None):
        self.max_bytes, self.spill_dir = max_bytes, spill_dir
        self.memory: dict[int, tuple[int, dict[str, torch.Tensor]]] = {}
        self.disk: dict[int, tuple[int, int, list[tuple[str, torch.dtype, tuple, int]]]] = {}
        self.bytes_in_memory = 0
        self.bytes_on_disk = 0
        self.file = None
        self.kind: str | None = None  # dense, topk or text: how rows join into a batch's outputs
        self.device: torch.device | None = None  # where the source gives its outputs

    def __len__(self) -> int:
        return len(self.memory) + len(self.disk)

    def get(self, index: int, key: int) -> dict[str, torch.Tensor] | None:
        if index in self.memory:
            stored_key, row = self.memory[index]
            return row if stored_key == key else None
        if index in self.disk:
            stored_key, offset, layout = self.disk[index]
            return self._read(offset, layout) if stored_key == key else None
        return None

    def put(self, index: int, key: int, row: dict[str, torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in row.values())
        if index in self.memory:
            self.bytes_in_memory -= sum(t.numel() * t.element_size() for t in self.memory.pop(index)[1].values())
        self.disk.pop(index, None)  # a stale row's bytes stay in the file, unread
        if self.bytes_in_memory + size <= self.max_bytes:
            self.memory[index] = (key, row)
            self.bytes_in_memory += size
            return
        if self.file is None:
            if self.spill_dir:
                os.makedirs(self.spill_dir, exist_ok=True)
            self.file = tempfile.TemporaryFile(prefix="kdistill-teacher-memo-", dir=self.spill_dir)
        offset = self.file.seek(0, os.SEEK_END)
        layout = []
        for name, t in row.items():
            data = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            self.file.write(data)
            layout.append((name, t.dtype, tuple(t.shape), len(data)))
        self.file.flush()
        self.bytes_on_disk += size
        self.disk[index] = (key, offset, layout)

    def _read(self, offset: int, layout) -> dict[str, torch.Tensor]:
        total = sum(n for *_, n in layout)
        buf = bytearray(os.pread(self.file.fileno(), total, offset))
        row, at = {}, 0
        for name, dtype, shape, n in layout:
            row[name] = torch.frombuffer(buf, dtype=torch.uint8, count=n, offset=at).view(dtype).reshape(shape)
            at += n
        return row


_STORES: "weakref.WeakKeyDictionary[TeacherSource, _Store]" = weakref.WeakKeyDictionary()


class MemoizedTeacher(TeacherSource):
    """``source``'s outputs, computed once per training sample and then reused (``reuse=True``),
    or ``source`` passed through with the reason it runs live (``reuse=False``). Wrappers of the
    same source share one store, so runs in one process reuse each other's outputs."""

    def __init__(self, source: TeacherSource, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 spill_dir: str | None = None, reason: str = "", reuse: bool = True):
        self.source, self.reason, self.reuse = source, reason, reuse
        self.num_outputs = source.num_outputs
        self.store = _STORES.setdefault(source, _Store(max_bytes, spill_dir)) if reuse else None
        self.computed = self.served = 0  # samples run through the teacher / read back from the store
        self._fetch = getattr(source, "outputs", source.logits)  # text teachers: logits + layers
        self._inputs = getattr(source, "inputs", lambda batch: batch["inputs"])
        self._kind: str | None = None

    def logits(self, batch: dict):
        out = self.outputs(batch)
        return out["logits"] if isinstance(out, dict) else out

    @torch.no_grad()
    def outputs(self, batch: dict):
        if _IN_BATCH in batch:
            return batch[_IN_BATCH]
        out = self._recall(batch) if self.reuse else None
        if out is None:
            out = self._fetch(batch)
            if self.reuse:
                self._remember(batch, out)
        batch[_IN_BATCH] = out
        return out

    def _lengths(self, inputs) -> list[int] | None:
        """Text: each sample's token count (its rows are stored trimmed to it)."""
        if isinstance(inputs, dict) and "attention_mask" in inputs:
            return inputs["attention_mask"].sum(-1).tolist()
        return None

    def _remember(self, batch: dict, out) -> None:
        inputs = self._inputs(batch)
        self.store.kind = _kind(out)
        self.store.device = (out["logits"] if isinstance(out, dict) else
                             out.values if isinstance(out, TopKLogits) else out).device
        index = batch["index"].tolist()
        for i, key, row in zip(index, fingerprint(inputs).tolist(), _rows(out, self._lengths(inputs))):
            self.store.put(i, key, row)
        self.computed += len(index)

    def _recall(self, batch: dict):
        if self.store.kind is None:
            return None
        inputs = self._inputs(batch)
        rows = []
        for i, key in zip(batch["index"].tolist(), fingerprint(inputs).tolist()):
            row = self.store.get(i, key)
            if row is None:
                return None  # a sample not seen yet (or seen with other inputs): the batch runs live
            rows.append(row)
        width = inputs["attention_mask"].shape[1] if self.store.kind == "text" else None
        self.served += len(rows)
        return _join(self.store.kind, rows, width, self.num_outputs, self.store.device)

    def describe(self) -> dict:
        inner = self.source.describe()
        if not self.reuse:
            return {**inner, "live_because": self.reason}
        store = self.store
        return {"kind": "memoized", "reason": self.reason, "computed": self.computed, "served": self.served,
                "rows_in_memory": len(store.memory), "bytes_in_memory": store.bytes_in_memory,
                "rows_on_disk": len(store.disk), "bytes_on_disk": store.bytes_on_disk,
                "max_bytes": store.max_bytes, "source": inner}
