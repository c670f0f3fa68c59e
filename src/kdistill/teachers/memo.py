"""A frozen teacher on fixed inputs runs once: the default teacher source of a training run.

``default_source(cfg, source)`` wraps the run's teacher in a ``MemoizedTeacher`` that computes the
teacher's outputs on a training sample's first pass (keyed by ``batch["index"]``) and serves them
again on later epochs: in memory up to ``max_bytes``, then spilled to a temporary file. Whether
reuse is safe is decided by ``reuse_decision`` alone: augmentation, on-policy data, a teacher that
is not frozen, or ``teacher.reuse: off`` keep the live teacher, and the run says which and why
(a line in the run's output; ``summary.json``'s ``teacher``).

Outputs (``kdistill.outputs.Outputs``) may hold dense logits (N, C) and tapped features, a ``TopKLogits``, or a text teacher's logits, hidden
states and attention maps (stored trimmed to each text's length, re-padded to the batch's width
with zeros: every loss masks padding). Each row also keeps a fingerprint of the teacher's inputs
for that sample, exact integer arithmetic over the input's bits, so a sample whose inputs differ
from the stored ones is recomputed rather than served stale. Stored values are the live teacher's
own fp32 outputs, so training gives the same weights as with the live teacher (tested).
"""

from __future__ import annotations

import sys
import weakref

import torch

from kdistill.data.fingerprint import fingerprint
from kdistill.losses.topk import TopKLogits
from kdistill.outputs import Outputs
from kdistill.teachers.base import TeacherSource
from kdistill.teachers.memo_store import RowStore, TableStore

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB of outputs in memory; the rest goes to a temporary file


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
    """Whether the source's outputs on an input cannot change: a model in eval mode with no
    trainable weight, a cache, or an ensemble whose every member is one of these."""
    from kdistill.teachers.cache import CachedTeacher

    if isinstance(source, CachedTeacher):
        return True
    members = getattr(source, "sources", None)  # EnsembleTeacher
    if members is not None:
        return all(_frozen(m) for m in members)
    model = getattr(source, "model", None)  # sources backed by a model: LiveTeacher, TextTeacher
    return isinstance(model, torch.nn.Module) and not model.training and not any(
        p.requires_grad for p in model.parameters())


def default_source(cfg, source: TeacherSource, *, max_bytes: int = DEFAULT_MAX_BYTES,
                   spill_dir: str | None = None, echo=False) -> TeacherSource:
    """The teacher source a run trains with: ``source`` memoized when ``reuse_decision`` allows,
    else ``source`` itself (with the reason recorded); the run pipeline prints which once
    the run's plan holds (``echo``: say it here)."""
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
        print(wrapped.announce(), file=sys.stderr, flush=True)
    return wrapped


# ---------------------------------------------------------------- what is stored
def _key(batch: dict, inputs) -> torch.Tensor:
    """The fingerprints of the teacher's inputs: those ``Batches`` computed once for its split
    when the teacher reads the batch's own ``inputs``, else hashed here."""
    given = batch.get("input_fingerprint")
    return given if given is not None and inputs is batch.get("inputs") else fingerprint(inputs)


def _kind(out: Outputs) -> str:
    """dense: logits (and tapped features) of fixed shape per sample; topk: a compressed teacher;
    text: hidden states / attention maps as long as each sample's tokens."""
    if out.hidden or out.attention:
        return "text"
    return "topk" if isinstance(out.logits, TopKLogits) else "dense"


def _parts(kind: str, out: Outputs, lengths: list[int] | None):
    """What the store keeps of a batch's outputs: fields of fixed-shape rows (dense, topk), or
    one dict per sample trimmed to its length (text), copied off the batch."""
    if kind == "dense":
        return {"logits": out.logits.detach().cpu(),
                **{f"features.{k}": v.detach().cpu() for k, v in out.features.items()}}
    if kind == "topk":
        return {k: getattr(out.logits, k).detach().cpu() for k in ("values", "indices", "log_tail")}
    logits = out.logits.detach().cpu().clone()
    rows = []
    for i, n in enumerate(lengths):
        row = {"logits": logits[i]}
        row.update({f"hidden.{k}": v[i, :n].detach().cpu().clone() for k, v in out.hidden.items()})
        row.update({f"attention.{k}": v[i, :, :n, :n].detach().cpu().clone()
                    for k, v in out.attention.items()})
        rows.append(row)
    return rows


def _join(kind: str, parts, width: int | None, num_classes: int, device):
    """The batch's outputs in the form the source gives them, from what the store kept."""
    if kind == "dense":
        return Outputs(parts["logits"].to(device, non_blocking=True),
                       features={k.partition(".")[2]: v.to(device) for k, v in parts.items() if k != "logits"})
    if kind == "topk":
        return Outputs(TopKLogits(*(parts[k].to(device, non_blocking=True)
                                    for k in ("values", "indices", "log_tail")), num_classes))
    out = {"logits": torch.stack([r["logits"] for r in parts]).to(device), "hidden": {}, "attention": {}}
    for name in parts[0]:
        group, _, layer = name.partition(".")
        if group == "logits":
            continue
        first = parts[0][name]
        shape = (len(parts), *first.shape[:-2], width, width) if group == "attention" else \
            (len(parts), width, *first.shape[1:])
        full = torch.zeros(shape, dtype=first.dtype)
        for i, r in enumerate(parts):
            t = r[name]
            if group == "attention":
                full[i, :, : t.shape[-2], : t.shape[-1]] = t
            else:
                full[i, : t.shape[0]] = t
        out[group][int(layer)] = full.to(device)
    return Outputs(out["logits"], hidden=out["hidden"], attention=out["attention"])


class _Shared:
    """What the wrappers of one source share: the store, and the kind and device of its outputs."""

    def __init__(self, max_bytes: int, spill_dir: str | None):
        self.max_bytes, self.spill_dir = max_bytes, spill_dir
        self.store: TableStore | RowStore | None = None
        self.kind: str | None = None
        self.device: torch.device | None = None


_SHARED: "weakref.WeakKeyDictionary[TeacherSource, _Shared]" = weakref.WeakKeyDictionary()


class MemoizedTeacher(TeacherSource):
    """``source``'s outputs, computed once per training sample and then reused (``reuse=True``),
    or ``source`` passed through with the reason it runs live (``reuse=False``). Wrappers of the
    same source share one store, so runs in one process reuse each other's outputs."""

    def __init__(self, source: TeacherSource, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 spill_dir: str | None = None, reason: str = "", reuse: bool = True):
        self.source, self.reason, self.reuse = source, reason, reuse
        self.num_outputs = source.num_outputs
        self.shared = _SHARED.setdefault(source, _Shared(max_bytes, spill_dir)) if reuse else None
        self.computed = self.served = 0  # samples run through the teacher / read back from the store
        self._inputs = getattr(source, "inputs", lambda batch: batch["inputs"])

    @property
    def store(self) -> TableStore | RowStore | None:
        return self.shared.store if self.shared else None

    # what the wrapped source gives beyond logits (the recipes check a method's needs against it)
    feature_paths = property(lambda self: getattr(self.source, "feature_paths", ()))
    hidden_layers = property(lambda self: getattr(self.source, "hidden_layers", ()))
    attention_layers = property(lambda self: getattr(self.source, "attention_layers", ()))

    def announce(self) -> str:
        """The run log's line on which source trains the student, and why."""
        return f"teacher: {'memoized' if self.reuse else 'live'} ({self.reason})"

    def logits(self, batch: dict):
        return self.outputs(batch).logits

    @torch.no_grad()
    def outputs(self, batch: dict) -> Outputs:
        out = self._recall(batch) if self.reuse else None
        if out is None:
            out = self.source.outputs(batch)
            if self.reuse:
                self._remember(batch, out)
        return out

    def _remember(self, batch: dict, out) -> None:
        shared, inputs = self.shared, self._inputs(batch)
        if shared.store is None:
            shared.kind = _kind(out)
            shared.store = (RowStore if shared.kind == "text" else TableStore)(shared.max_bytes, shared.spill_dir)
            shared.device = (out.logits.values if isinstance(out.logits, TopKLogits) else out.logits).device
        lengths = inputs["attention_mask"].sum(-1).tolist() if shared.kind == "text" else None
        shared.store.put(batch["index"], _key(batch, inputs), _parts(shared.kind, out, lengths))
        self.computed += len(batch["index"])

    def _recall(self, batch: dict):
        shared = self.shared
        if shared.store is None:
            return None
        inputs = self._inputs(batch)
        parts = shared.store.get(batch["index"], _key(batch, inputs))
        if parts is None:
            return None  # a sample not seen yet (or seen with other inputs): the batch runs live
        self.served += len(batch["index"])
        width = inputs["attention_mask"].shape[1] if shared.kind == "text" else None
        return _join(shared.kind, parts, width, self.num_outputs, shared.device)

    def describe(self) -> dict:
        inner = self.source.describe()
        if not self.reuse:
            return {**inner, "live_because": self.reason}
        stats = self.store.stats() if self.store else {}
        return {"kind": "memoized", "reason": self.reason, "computed": self.computed, "served": self.served,
                **stats, "source": inner}
