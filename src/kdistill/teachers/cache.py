"""A teacher cache: run the teacher once over the training split, then train from disk.

``kdistill cache-teacher CONFIG`` (or ``cache_teacher(cfg)``) runs the teacher over the training
split in order, without augmentation, and writes a folder::

    cache.json      header: teacher identity, dataset identity and content hash, input transform,
                    format, dtype, k, and each array's shape, size and SHA-256
    logits.bin      format dense: (rows, classes) raw logits in fp32 / fp16 / bf16
    values.bin      format topk:  (rows, k) log-probabilities at T = 1 of the k top classes
    indices.bin                   (rows, k) their class ids (uint16, or int32 past 65,536 classes)
    log_tail.bin                  (rows,) fp32 log of the probability of all other classes

Arrays are little-endian C-order, read through ``numpy.memmap``: a batch is one vectorised gather
of its rows (``batch["index"]``), never a Python loop over samples. Why the top-k format keeps
log-probabilities and the tail mass, and how KD at any temperature follows from them, is in
``kdistill.losses.topk``.

A cache is refused, with the fields named, when it was written for another dataset, other
training data, another input transform or other cache settings, when the run augments its inputs
randomly (one stored output per sample cannot follow the student's random views), and when a file
is missing, truncated or does not match its checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from kdistill.checkpoint import sha256_file
from kdistill.data import Batches, Split
from kdistill.errors import CacheError, ConfigError
from kdistill.losses.topk import TopKLogits
from kdistill.teachers.base import TeacherSource

HEADER = "cache.json"
FORMAT_VERSION = 1
_STORED = {"fp32": np.float32, "fp16": np.float16, "bf16": np.int16}  # bf16 kept as its raw bits


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """A short SHA-256 of tensors' shapes, dtypes and contents."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(memoryview(np.ascontiguousarray(t.detach().cpu().numpy())).cast("B"))
    return h.hexdigest()[:16]


def train_fingerprint(split: Split) -> str:
    """SHA-256 of the training inputs and labels: the data the cache's rows belong to."""
    return tensor_fingerprint(split.inputs, split.labels)


def load_header(folder: Path) -> dict:
    """A cache folder's header, refused with one line when missing or not JSON."""
    file = Path(folder) / HEADER
    if not file.is_file():
        raise CacheError(f"no teacher cache at {folder} ({HEADER} is missing): write it with "
                         "`kdistill cache-teacher CONFIG`")
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheError(f"{file} is not valid JSON ({exc}): the cache is damaged; re-run "
                         "`kdistill cache-teacher`") from None


def input_transform(data_cfg) -> dict:
    """What turns stored data into the inputs the teacher saw (a cache holds only for these)."""
    transform = {"augment": data_cfg.augment}
    if data_cfg.augment != "none":
        transform["jitter_pixels"] = data_cfg.jitter_pixels
    if data_cfg.dataset == "image_folder":
        transform.update(image_size=data_cfg.image_size, grayscale=data_cfg.grayscale)
    return transform


def _to_storage(t: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bf16":
        return t.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
    out = t.to(torch.float16 if dtype == "fp16" else torch.float32)
    if dtype == "fp16":  # a log-probability below fp16's range would become -inf: its mass is 0 anyway
        out = out.clamp(min=torch.finfo(torch.float16).min)
    return out.contiguous().numpy()


def _from_storage(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(a)
    return (t.view(torch.bfloat16) if dtype == "bf16" else t).float()


def write_cache(teacher: TeacherSource, split: Split, path: str | Path, *, format: str = "dense",
                dtype: str = "fp32", k: int | None = None, batch_size: int = 1000,
                dataset: str = "", transform: dict | None = None, extra: dict | None = None) -> dict:
    """Run ``teacher`` over ``split`` in order and write a cache folder at ``path`` atomically
    (a new folder is renamed into place; an existing cache there is replaced). Returns the header."""
    if format not in ("dense", "topk"):
        raise ConfigError(f"teacher.format must be 'dense' or 'topk', got {format!r}")
    if dtype not in _STORED:
        raise ConfigError(f"teacher.dtype must be one of {', '.join(_STORED)}, got {dtype!r}")
    n = teacher.num_outputs
    if format == "topk" and not (k and 1 <= k <= n):
        raise ConfigError(f"teacher.k must be between 1 and the teacher's {n} classes, got {k}")
    path = Path(path)
    if path.exists() and not (path / HEADER).is_file():
        raise CacheError(f"{path} exists and is not a teacher cache: choose another teacher.path")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = len(split)
    if format == "dense":
        arrays = {"logits": (_STORED[dtype], (rows, n))}
    else:
        arrays = {"values": (_STORED[dtype], (rows, k)),
                  "indices": (np.uint16 if n <= 65536 else np.int32, (rows, k)),
                  "log_tail": (np.float32, (rows,))}
    files = {name: open(tmp / f"{name}.bin", "wb") for name in arrays}
    hashes = {name: hashlib.sha256() for name in arrays}
    try:
        for batch in Batches(split, batch_size):  # in order, no augmentation
            logits = teacher.logits(batch).detach().cpu()
            if format == "dense":
                chunks = {"logits": _to_storage(logits, dtype)}
            else:
                top = TopKLogits.from_logits(logits, k)
                chunks = {"values": _to_storage(top.values, dtype),
                          "indices": top.indices.numpy().astype(arrays["indices"][0]),
                          "log_tail": top.log_tail.float().numpy()}
            for name, chunk in chunks.items():
                data = memoryview(np.ascontiguousarray(chunk, dtype=np.dtype(arrays[name][0]).newbyteorder("<"))).cast("B")
                files[name].write(data)
                hashes[name].update(data)
        for fh in files.values():
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        for fh in files.values():
            fh.close()
    header = {
        "format_version": FORMAT_VERSION, "format": format, "dtype": dtype, "k": k,
        "num_classes": n, "rows": rows, "teacher": teacher.describe(), "dataset": dataset,
        "train_sha256": train_fingerprint(split), "transform": transform or {"augment": "none"},
        "arrays": {name: {"file": f"{name}.bin", "dtype": np.dtype(dt).str, "shape": list(shape),
                          "bytes": int(np.prod(shape)) * np.dtype(dt).itemsize,
                          "sha256": hashes[name].hexdigest()}
                   for name, (dt, shape) in arrays.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {}),
    }
    (tmp / HEADER).write_text(json.dumps(header, indent=2))
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return header


class CachedTeacher(TeacherSource):
    """Teacher outputs read from a cache by ``batch["index"]``: dense logits (a tensor) or a
    ``TopKLogits``; either goes to the same ``kd_objective``."""

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu", verify_checksum: bool = True):
        self.path = Path(path)
        self.device = torch.device(device)
        self.header = self._read_header()
        self.format, self.dtype, self.k = self.header["format"], self.header["dtype"], self.header["k"]
        self.num_outputs = int(self.header["num_classes"])
        self.rows = int(self.header["rows"])
        self.arrays: dict[str, np.memmap] = {}
        for name, spec in self.header["arrays"].items():
            file = self.path / spec["file"]
            if not file.is_file():
                raise CacheError(f"teacher cache {self.path} lacks {spec['file']}: re-run `kdistill cache-teacher`")
            size = file.stat().st_size
            if size != spec["bytes"]:
                raise CacheError(f"teacher cache file {file} holds {size} bytes but its header says "
                                 f"{spec['bytes']}: the cache is truncated or damaged; re-run `kdistill cache-teacher`")
            if verify_checksum and sha256_file(file) != spec["sha256"]:
                raise CacheError(f"teacher cache file {file} does not match its SHA-256 in {HEADER}: "
                                 "the cache is damaged; re-run `kdistill cache-teacher`")
            self.arrays[name] = np.memmap(file, dtype=np.dtype(spec["dtype"]), mode="r",
                                          shape=tuple(spec["shape"]))

    def _read_header(self) -> dict:
        header = load_header(self.path)
        file = self.path / HEADER
        if header.get("format_version") != FORMAT_VERSION:
            raise CacheError(f"{file} has format version {header.get('format_version')!r}; this kdistill "
                             f"reads version {FORMAT_VERSION}: re-run `kdistill cache-teacher`")
        return header

    @property
    def bytes_per_sample(self) -> float:
        return sum(spec["bytes"] for spec in self.header["arrays"].values()) / self.rows

    def _rows(self, name: str, idx: np.ndarray) -> np.ndarray:
        try:
            return self.arrays[name][idx]  # one vectorised gather from the memory map
        except IndexError:
            raise CacheError(f"batch asks for sample {int(idx.max())} but the teacher cache {self.path} "
                             f"holds {self.rows}: it was written for other data") from None

    def logits(self, batch: dict) -> torch.Tensor | TopKLogits:
        idx = batch["index"].cpu().numpy()
        if self.format == "dense":
            return _from_storage(self._rows("logits", idx), self.dtype).to(self.device, non_blocking=True)
        return TopKLogits(
            values=_from_storage(self._rows("values", idx), self.dtype).to(self.device, non_blocking=True),
            indices=torch.from_numpy(self._rows("indices", idx).astype(np.int64)).to(self.device, non_blocking=True),
            log_tail=torch.from_numpy(self._rows("log_tail", idx)).to(self.device, non_blocking=True),
            num_classes=self.num_outputs,
        )

    def check(self, expected: dict[str, object]) -> None:
        """Refuse the cache if any recorded field differs from what the run expects."""
        wrong = [f"{field}: the cache has {self.header.get(field)!r}, the run {value!r}"
                 for field, value in expected.items() if self.header.get(field) != value]
        if wrong:
            raise CacheError(f"teacher cache {self.path} does not fit this run ({'; '.join(wrong)}): "
                             "re-run `kdistill cache-teacher CONFIG`, or use `teacher.kind: live`")

    def describe(self) -> dict:
        return {"kind": "cache", "path": str(self.path), "format": self.format, "dtype": self.dtype,
                "k": self.k, "teacher": self.header["teacher"], "dataset": self.header["dataset"]}


# ---------------------------------------------------------------- from a run config
def _expected(cfg, data) -> dict:
    t = cfg.teacher
    expected = {"dataset": data.identity, "train_sha256": train_fingerprint(data.transfer_set()),
                "transform": input_transform(cfg.data), "format": t.format, "dtype": t.dtype, "k": t.k}
    if t.model is not None:
        expected["teacher_model"] = t.model.model_dump(mode="json")
    return expected


def _refuse_augmentation(cfg) -> None:
    if cfg.data.augment != "none":
        raise CacheError(f"data.augment is {cfg.data.augment!r} but the teacher is a cache: it holds one "
                         "output per sample and cannot follow random augmentation; set data.augment: none, "
                         "or use `teacher.kind: live`")


def _cache_config(cfg):
    if cfg.teacher is None or cfg.teacher.kind != "cache":
        raise ConfigError("this needs `teacher.kind: cache` with teacher.path (where the cache lives) "
                          "and teacher.model (the teacher to run)")
    return cfg.teacher


def cache_teacher(cfg, data, model) -> CachedTeacher:
    """Write the cache that ``cfg.teacher`` (kind ``cache``) names, running ``model`` (the
    config's teacher.model, built by the run's recipe) over ``data``'s transfer set (the training
    split, then any unlabelled samples)."""
    from kdistill.teachers.live import LiveTeacher

    t = _cache_config(cfg)
    _refuse_augmentation(cfg)
    live = LiveTeacher(model, num_outputs=data.num_classes, device=cfg.train.device)
    expected = _expected(cfg, data)
    write_cache(live, data.transfer_set(), t.path, format=t.format, dtype=t.dtype, k=t.k,
                batch_size=cfg.data.eval_batch_size, dataset=data.identity,
                transform=expected["transform"], extra={"teacher_model": expected.get("teacher_model")})
    return CachedTeacher(t.path, device=cfg.train.device, verify_checksum=False)


def open_cache(cfg, data) -> CachedTeacher:
    """The cache ``cfg.teacher`` names, checked against the run's data, transform and settings."""
    t = _cache_config(cfg)
    _refuse_augmentation(cfg)
    cached = CachedTeacher(t.path, device=cfg.train.device, verify_checksum=t.verify_checksum)
    cached.check(_expected(cfg, data))
    return cached
