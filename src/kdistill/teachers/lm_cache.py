"""A language-model teacher cache on disk: the teacher's top-k per target token, captured once,
read by every student and epoch after.

``capture`` runs the teacher over the training blocks in order (only target positions: prompt
and padding are never scored) and writes a folder::

    cache.json          identity (teacher, tokenizer, data, sequence length, target positions per
                        block), the encoding, and per shard its blocks, sections, size and SHA-256
    shard-00000.bin     whole blocks, about ``shard_tokens`` target tokens; sections (8-byte aligned):
                        block_targets u32, block_entries i64 (first entry of each block),
                        log_tail (fp16; fp32 with fp32 values), ids (u16, or u32 past 65,536 tokens),
                        values (fp32 | fp16 | u8), counts (u8, u16 past k = 255); with codec
                        packed: block_targets, block_bytes i64 (offsets), log_tail fp16 and
                        packed u8 (one LZMA blob of counts, id-rank gaps and values per block)
    tail.bin            tail: prior only: the prior's u8 log steps (LZMA), fitted on the first
                        shard with its power (in cache.json); the shards after it use it too

What a token's record holds is in ``kdistill.teachers.lm_records``. The capture streams (one
shard in memory) and resumes: ``cache.json`` is rewritten after each shard, so a killed capture
keeps its finished shards (checked by size and SHA-256 on resume) and redoes only the one it was
writing (all of them if tail.bin was lost: they were coded with it). Reading is a memory map per shard; a batch is looked up by ``batch["index"]`` (its
blocks) and returned as ``TopKLogits`` for the fused chunked loss, which never rebuilds the
teacher's dense distribution.

Training from a cache is refused, with one line naming what differs, for another tokenizer,
dataset, sequence length, training tokens or target positions, another encoding or teacher.model,
a student with fewer output rows, a loss temperature other than 1, and a missing, truncated or
damaged shard or an interrupted capture.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from kdistill.checkpoint import atomic_write_text, sha256_file
from kdistill.errors import CacheError, ConfigError
from kdistill.losses.topk import TopKLogits
from kdistill.teachers.base import TeacherSource
from kdistill.teachers.cache import HEADER, load_header, tensor_fingerprint
from kdistill.teachers.lm_records import (Encoding, TailModel, TailStats, encode, fit_tail, pack_block, padded,
                                          unpack_block)

KIND = "causal_lm_topk"
FORMAT_VERSION = 1
ALIGN = 8
RECAPTURE = "re-run `kdistill cache-teacher CONFIG`"
TAIL_FILE = "tail.bin"


def tokenizer_hash(tokenizer) -> str:
    """The vocabulary and special tokens: what makes token ids mean the same thing."""
    specials = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    blob = json.dumps([sorted(tokenizer.get_vocab().items()), specials], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def block_targets(blocks) -> torch.Tensor:
    """Target positions per block (position t predicts token t + 1)."""
    return (blocks.labels[:, 1:] != -100).sum(1)


def data_identity(blocks, name: str) -> dict:
    """What the cache's rows belong to: the split's name, its tokens and its target positions."""
    targets = block_targets(blocks)
    return {"dataset": name, "seq_len": int(blocks.input_ids.shape[1]), "blocks": len(blocks),
            "target_tokens": int(targets.sum()),
            "train_sha256": tensor_fingerprint(blocks.input_ids, blocks.attention_mask, blocks.labels),
            "targets_sha256": tensor_fingerprint(targets)}


def shard_plan(targets: torch.Tensor, shard_tokens: int) -> list[list[int]]:
    """Consecutive whole blocks per shard, each closed once it holds ``shard_tokens`` targets."""
    plan, start, held = [], 0, 0
    for b, n in enumerate(targets.tolist()):
        held += n
        if held >= shard_tokens:
            plan.append([start, b + 1])
            start, held = b + 1, 0
    if start < len(targets):
        plan.append([start, len(targets)])
    return plan


def _shard_bytes(arrays: dict[str, np.ndarray], dtypes: dict[str, np.dtype]) -> tuple[bytes, dict]:
    parts, sections, offset = [], {}, 0
    for name, dtype in dtypes.items():
        raw = np.ascontiguousarray(arrays[name], dtype=dtype.newbyteorder("<")).tobytes()
        pad = -len(raw) % ALIGN
        parts.append(raw + b"\0" * pad)
        sections[name] = [offset, len(raw) // dtype.itemsize]
        offset += len(raw) + pad
    return b"".join(parts), sections


def _write_file(path: Path, blob: bytes) -> dict:
    """Written to a .partial file, synced, then renamed: a kill leaves the old file or none."""
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())
    partial.replace(path)
    return {"file": path.name, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def _write_shard(path: Path, arrays: dict, dtypes: dict) -> dict:
    blob, sections = _shard_bytes(arrays, dtypes)
    return {**_write_file(path, blob), "sections": sections}


def _verified(folder: Path, entry: dict) -> bool:
    file = folder / entry["file"]
    return file.is_file() and file.stat().st_size == entry["bytes"] and sha256_file(file) == entry["sha256"]


def _packed(arrays: dict, targets: np.ndarray, tail: TailModel) -> dict:
    """A shard's records as one LZMA blob per block (``lm_records.pack_block``) and their offsets."""
    rank, blobs, t0, e0 = tail.rank, [], 0, 0
    for n in targets.tolist():
        counts = arrays["counts"][t0: t0 + n]
        e1 = e0 + int(counts.sum(dtype=np.int64))
        blobs.append(pack_block(counts, arrays["ids"][e0:e1], arrays["values"][e0:e1], rank))
        t0, e0 = t0 + n, e1
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs], dtype=np.int64)])
    return {"block_targets": targets, "block_bytes": offsets, "log_tail": arrays["log_tail"],
            "packed": np.frombuffer(b"".join(blobs), np.uint8)}


def capture(teacher: TeacherSource, blocks, path: str | Path, *, encoding: Encoding, identity: dict,
            batch_size: int = 8, shard_tokens: int = 2**20) -> "LMCacheTeacher":
    """Write (or resume) the cache of ``teacher`` over ``blocks`` at ``path``. ``identity`` holds
    what the run checks later (data_identity(...), tokenizer, teacher); a folder holding a cache
    of anything else is started afresh."""
    from kdistill.data.lm_text import LMBatches

    vocab = teacher.num_outputs
    encoding.check(vocab)
    path, dtypes = Path(path), encoding.sections(vocab)
    targets = block_targets(blocks)
    plan = shard_plan(targets, shard_tokens)
    header = {"format_version": FORMAT_VERSION, "kind": KIND, **identity, "num_classes": vocab,
              "encoding": asdict(encoding), "shard_tokens": shard_tokens, "plan": plan}
    done: list[dict] = []
    tail, tail_entry = None, None  # the tail's shape, fixed by the first shard (tail: prior)
    if path.exists():
        if not (path / HEADER).is_file():
            raise CacheError(f"{path} exists and is not a teacher cache: choose another teacher.path")
        old = load_header(path)
        same = all(old.get(k) == v for k, v in header.items())
        if same:  # resume: keep the finished shards that are intact, in order (a damaged one is redone)
            tail_entry = old.get("tail")
            if encoding.tail == "prior" and not (tail_entry and _verified(path, tail_entry)):
                tail_entry, old["shards"] = None, []  # every shard was written with the lost prior
            for shard in old.get("shards", []):
                if not _verified(path, shard):
                    break
                done.append(shard)
            if tail_entry and done:
                tail = TailModel.from_bytes((path / TAIL_FILE).read_bytes(), tail_entry["power"])
            if old.get("complete") and len(done) == len(plan):
                return LMCacheTeacher(path, verify_checksum=False)
        else:
            shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    for stray in (set(path.glob("shard-*")) | set(path.glob("*.partial"))) - {path / s["file"] for s in done}:
        stray.unlink()  # the shard a killed capture was writing, or one that failed its check
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), targets.cumsum(0)])

    def save(shards: list[dict], complete: bool) -> None:
        atomic_write_text(path / HEADER, json.dumps(
            {**header, **({"tail": tail_entry} if tail_entry and shards else {}), "shards": shards,
             "complete": complete, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))

    save(done, False)
    for s in range(len(done), len(plan)):
        b0, b1 = plan[s]
        parts: dict[str, list] = {"counts": [], "log_tail": [], "ids": [], "values": []}
        stats = TailStats(vocab) if encoding.tail == "prior" and tail is None else None
        for batch in LMBatches(blocks.subset(slice(b0, b1)), batch_size):
            batch["index"] = batch["index"] + b0  # the blocks' own indices, as training batches carry
            logits = teacher.logits(batch)
            record = encode(logits, encoding)
            if stats is not None:
                stats.add(logits, record)
            for name in parts:
                parts[name].append(record[name])
        arrays = {name: np.concatenate(a) if a else np.zeros(0, dtypes.get(name, np.uint8)) for name, a in parts.items()}
        if len(arrays["counts"]) != int(offsets[b1] - offsets[b0]):
            raise CacheError(f"the teacher scored {len(arrays['counts'])} positions in blocks {b0}-{b1} "
                             f"but they hold {int(offsets[b1] - offsets[b0])} targets")
        if stats is not None:
            tail = fit_tail(stats, arrays["counts"], arrays["ids"], arrays["log_tail"])
            tail_entry = {**_write_file(path / TAIL_FILE, tail.to_bytes()), "power": tail.power}
        per_token = np.concatenate([[0], np.cumsum(arrays["counts"], dtype=np.int64)])
        arrays["counts"] = arrays["counts"].astype(encoding.count_dtype)
        if encoding.codec == "packed":
            arrays = _packed(arrays, targets[b0:b1].numpy(), tail)
        else:
            arrays["block_targets"] = targets[b0:b1].numpy()
            arrays["block_entries"] = per_token[(offsets[b0:b1] - offsets[b0]).numpy()]
        done.append({"blocks": [b0, b1], "tokens": int(offsets[b1] - offsets[b0]), "entries": int(per_token[-1]),
                     **_write_shard(path / f"shard-{s:05d}.bin", arrays, dtypes)})
        save(done, False)
    save(done, True)
    return LMCacheTeacher(path, verify_checksum=False)


class LMCacheTeacher(TeacherSource):
    """A captured LM cache read by block index: ``logits(batch)`` is a ``TopKLogits`` of the
    batch's target tokens in row-major order (as ``selected_logits`` orders them). Within a batch
    tokens that kept fewer than the batch's widest record are padded with extra tokens outside
    their top set, each given its even share of the tail (the rebuilt distribution, unchanged)."""

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu", verify_checksum: bool = True):
        self.path, self.device = Path(path), torch.device(device)
        if not (self.path / HEADER).is_file():
            raise CacheError(f"no teacher cache at {self.path} ({HEADER} is missing): write it with "
                             "`kdistill cache-teacher CONFIG`")
        h = self.header = load_header(self.path)
        if h.get("kind") != KIND:
            raise CacheError(f"{self.path} is not a language-model teacher cache (kind {h.get('kind')!r}): {RECAPTURE}")
        if h.get("format_version") != FORMAT_VERSION:
            raise CacheError(f"{self.path / HEADER} has format version {h.get('format_version')!r}; this "
                             f"kdistill reads version {FORMAT_VERSION}: {RECAPTURE}")
        if not h.get("complete"):
            raise CacheError(f"the capture into {self.path} was interrupted after {len(h['shards'])} of "
                             f"{len(h['plan'])} shards: {RECAPTURE} to resume it")
        self.encoding = Encoding(**h["encoding"])
        self.num_outputs, self.rows = int(h["num_classes"]), int(h["target_tokens"])
        self.format, self.dtype, self.k = "topk", self.encoding.values, self.encoding.k
        dtypes = self.encoding.sections(self.num_outputs)
        self.tail = self.tail_shape = self.order = None
        if self.encoding.tail == "prior":
            if "tail" not in h:
                raise CacheError(f"teacher cache {self.path} stores a prior-shaped tail but its header names no "
                                 f"{TAIL_FILE}: the cache is damaged; {RECAPTURE}")
            self._check_file(h["tail"], verify_checksum)
            self.tail = TailModel.from_bytes((self.path / TAIL_FILE).read_bytes(), h["tail"]["power"])
            if len(self.tail.quantized) != self.num_outputs:
                raise CacheError(f"teacher cache file {self.path / TAIL_FILE} holds {len(self.tail.quantized)} "
                                 f"weights for {self.num_outputs} tokens: the cache is damaged; {RECAPTURE}")
            self.tail_shape, self.order = self.tail.log_weights, self.tail.order
        self.shards, first = [], []
        for shard in h["shards"]:
            file = self._check_file(shard, verify_checksum)
            raw = np.memmap(file, dtype=np.uint8, mode="r")
            self.shards.append({name: raw[off: off + n * dtypes[name].itemsize].view(dtypes[name].newbyteorder("<"))
                                for name, (off, n) in shard["sections"].items()})
            first.append(shard["blocks"][0])
        self.first_block = np.asarray(first)
        self.block_targets = np.concatenate([s["block_targets"] for s in self.shards]).astype(np.int64)
        local = [np.concatenate([[0], np.cumsum(s["block_targets"], dtype=np.int64)[:-1]]) for s in self.shards]
        self.block_token = np.concatenate(local)  # first token of each block within its shard

    def _check_file(self, entry: dict, verify_checksum: bool) -> Path:
        file = self.path / entry["file"]
        if not file.is_file():
            raise CacheError(f"teacher cache {self.path} lacks {entry['file']}: {RECAPTURE}")
        if file.stat().st_size != entry["bytes"]:
            raise CacheError(f"teacher cache file {file} holds {file.stat().st_size} bytes but its header "
                             f"says {entry['bytes']}: the cache is truncated or damaged; {RECAPTURE}")
        if verify_checksum and sha256_file(file) != entry["sha256"]:
            raise CacheError(f"teacher cache file {file} does not match its SHA-256 in {HEADER}: the "
                             f"cache is damaged; {RECAPTURE}")
        return file

    @property
    def bytes_per_sample(self) -> float:
        """Bytes on disk per target token (all shards, and the tail's shape)."""
        tail = self.header.get("tail", {}).get("bytes", 0) if self.encoding.tail == "prior" else 0
        return (sum(s["bytes"] for s in self.header["shards"]) + tail) / max(self.rows, 1)

    def _records(self, blocks: np.ndarray):
        counts, tails, ids, values = [], [], [], []
        for b in blocks.tolist():
            s = int(np.searchsorted(self.first_block, b, side="right")) - 1
            shard, j = self.shards[s], b - int(self.first_block[s])
            t0, n = int(self.block_token[b]), int(self.block_targets[b])
            tails.append(shard["log_tail"][t0: t0 + n])
            if self.encoding.codec == "packed":
                blob = shard["packed"][int(shard["block_bytes"][j]): int(shard["block_bytes"][j + 1])].tobytes()
                try:
                    c, i, v = unpack_block(blob, self.encoding.count_dtype, self.order)
                except (lzma.LZMAError, ValueError, IndexError) as e:
                    raise CacheError(f"teacher cache {self.path}: block {b} does not decode ({e}): the cache is "
                                     f"damaged; {RECAPTURE}") from None
                if len(c) != n:
                    raise CacheError(f"teacher cache {self.path}: block {b} decodes to {len(c)} tokens, not {n}: "
                                     f"the cache is damaged; {RECAPTURE}")
                counts.append(c), ids.append(i), values.append(v)
                continue
            e0 = int(shard["block_entries"][j])
            c = shard["counts"][t0: t0 + n]
            e1 = e0 + int(c.sum(dtype=np.int64))
            counts.append(c)
            ids.append(shard["ids"][e0:e1]), values.append(shard["values"][e0:e1])
        return (torch.from_numpy(np.concatenate(x).astype(dt)) for x, dt in
                ((counts, np.int64), (tails, np.float32), (ids, np.int64), (values, np.float32)))

    def logits(self, batch: dict) -> TopKLogits:
        blocks = batch["index"].cpu().numpy()
        if blocks.size and (blocks.min() < 0 or blocks.max() >= len(self.block_targets)):
            raise CacheError(f"batch asks for block {int(blocks.max())} but the teacher cache {self.path} "
                             f"holds {len(self.block_targets)}: it was written for other data; {RECAPTURE}")
        wanted = (batch["labels"][:, 1:] != -100).sum(1).cpu().numpy()
        if not np.array_equal(wanted, self.block_targets[blocks]):
            raise CacheError(f"the batch's blocks have {wanted.tolist()} target positions, the teacher cache "
                             f"{self.path} {self.block_targets[blocks].tolist()}: it was written for other data")
        counts, log_tail, ids, values = self._records(blocks)
        if self.encoding.values == "u8":
            values = values * -self.encoding.step
        top = padded(counts, log_tail, ids, values, self.num_outputs, renormalise=self.encoding.values != "fp32",
                     tail_shape=self.tail_shape)
        return TopKLogits(top.values.to(self.device), top.indices.to(self.device), top.log_tail.to(self.device),
                          self.num_outputs, None if self.tail_shape is None else self.tail_shape.to(self.device))

    def describe(self) -> dict:
        h = self.header
        return {"kind": "cache", "path": str(self.path), "format": "topk", "encoding": h["encoding"],
                "tail_power": self.tail.power if self.tail else None,
                "teacher": h.get("teacher"), "dataset": h["dataset"], "bytes_per_token": self.bytes_per_sample}


# ---------------------------------------------------------------- from a run config
CHECKED = {"tokenizer_sha256": "tokenizer (vocabulary and special tokens)", "dataset": "dataset",
           "seq_len": "sequence length", "blocks": "training blocks", "target_tokens": "target positions",
           "train_sha256": "training tokens", "targets_sha256": "target positions per block",
           "encoding": "encoding (k, mass, dtype, step, min_prob, tail, codec)", "teacher_model": "teacher.model"}


def encoding_of(t) -> Encoding:
    """The encoding a ``CacheTeacherConfig`` asks for."""
    if t.format != "topk" or t.k is None:
        raise ConfigError("a language-model teacher cache stores the top tokens per position: set "
                          "teacher.format: topk and teacher.k (e.g. 64)")
    return Encoding(k=t.k, mass=t.mass, values=t.dtype, step=t.step, min_prob=t.min_prob, tail=t.tail, codec=t.codec)


def run_identity(cfg, data) -> dict:
    """What a run's cache must match: its tokenizer, training blocks and teacher.model."""
    model = cfg.teacher.model
    return {**data_identity(data.train, data.splits.identity), "tokenizer_sha256": tokenizer_hash(data.tokenizer),
            "teacher_model": model.model_dump(mode="json") if model is not None else None}


def refuse_temperature(loss) -> None:
    """A top-k cache holds T = 1 probabilities: the tempered tail needs the full distribution."""
    from kdistill.schedules import as_schedule

    s = as_schedule(loss.temperature)
    values = {s.at(x / 10) for x in range(11)} | ({s.warmup_start} if s.warmup_steps else set())
    if values != {1.0}:
        raise CacheError("loss.temperature is not 1 but the teacher is a top-k cache: it holds temperature-1 "
                         "probabilities, and a tempered distribution needs the full one (the tail's shape); "
                         "set loss.temperature: 1 or use `teacher.kind: live`")


def cache_lm_teacher(cfg, data, teacher: TeacherSource) -> LMCacheTeacher:
    """Capture (or resume) the cache ``cfg.teacher`` names with ``teacher`` over the training blocks."""
    t = cfg.teacher
    identity = {**run_identity(cfg, data), "teacher": teacher.describe()}
    cache = capture(teacher, data.train, t.path, encoding=encoding_of(t), identity=identity,
                    batch_size=cfg.data.eval_batch_size, shard_tokens=t.shard_tokens)
    cache.device = torch.device(cfg.train.device)
    return cache


def open_lm_cache(cfg, data, student_rows: int, student_tokenizer=None) -> LMCacheTeacher:
    """The cache ``cfg.teacher`` names, checked against the run's tokenizer, data, encoding,
    teacher.model, loss temperature and student vocabulary before any training."""
    from kdistill.models.hf import check_vocabularies

    t = cfg.teacher
    refuse_temperature(cfg.loss)
    cache = LMCacheTeacher(t.path, device=cfg.train.device, verify_checksum=t.verify_checksum)
    expected = {**run_identity(cfg, data), "encoding": asdict(encoding_of(t))}
    if t.model is None:
        expected.pop("teacher_model")
    wrong = [f"{CHECKED[k]}: the cache has {cache.header.get(k)!r}, the run {v!r}"
             for k, v in expected.items() if cache.header.get(k) != v]
    if wrong:
        raise CacheError(f"teacher cache {t.path} does not fit this run ({'; '.join(wrong)}): "
                         f"{RECAPTURE}, or use `teacher.kind: live`")
    # the cache covers the tokenizer's vocabulary: a student of the same tokenizer has those rows
    check_vocabularies(data.tokenizer, student_tokenizer, cache.num_outputs, student_rows)
    return cache
