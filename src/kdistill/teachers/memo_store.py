"""Where ``MemoizedTeacher`` keeps a teacher's outputs: by sample index, each row with the
fingerprint of the inputs it was computed on, in memory up to ``max_bytes`` and beyond that in
temporary files (unnamed: the system deletes them with the process).

``TableStore`` holds rows of one fixed shape (dense logits, top-k values / indices / tail mass):
one tensor per field indexed by sample, so a batch is one vectorised gather. ``RowStore`` holds
rows whose shapes differ per sample (a text's hidden states and attention maps, trimmed to its
length), one dict per sample.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch


def _spill_file(spill_dir: str | None):
    if spill_dir:
        os.makedirs(spill_dir, exist_ok=True)
    return tempfile.TemporaryFile(prefix="kdistill-teacher-memo-", dir=spill_dir)


class TableStore:
    """Fixed-shape rows: samples ``[0, memory_rows)`` in memory tensors (``memory_rows`` as many
    as ``max_bytes`` holds), later ones in a ``numpy.memmap`` of raw bytes per field."""

    def __init__(self, max_bytes: int, spill_dir: str | None = None):
        self.max_bytes, self.spill_dir = max_bytes, spill_dir
        self.fields: dict[str, tuple[torch.dtype, tuple[int, ...], int]] = {}  # dtype, shape, bytes
        self.capacity = 0
        self.memory_rows = 0
        self.keys = torch.empty(0, dtype=torch.long)
        self.filled = torch.empty(0, dtype=torch.bool)
        self.memory: dict[str, torch.Tensor] = {}
        self.disk: dict[str, np.memmap] = {}
        self.files: dict[str, object] = {}

    def _grow(self, rows: int) -> None:
        new = max(rows, 2 * self.capacity)
        self.keys = torch.cat([self.keys, torch.zeros(new - self.capacity, dtype=torch.long)])
        self.filled = torch.cat([self.filled, torch.zeros(new - self.capacity, dtype=torch.bool)])
        in_memory = min(new, self.memory_rows)
        for name, (dtype, shape, _) in self.fields.items():
            old = self.memory.get(name, torch.empty(0, *shape, dtype=dtype))
            self.memory[name] = torch.cat([old, torch.zeros(max(0, in_memory - len(old)), *shape, dtype=dtype)])
        if new > self.memory_rows:
            for name, (_, _, nbytes) in self.fields.items():
                file = self.files.setdefault(name, _spill_file(self.spill_dir))
                file.truncate((new - self.memory_rows) * nbytes)  # rows already written stay in place
                self.disk[name] = np.memmap(file, dtype=np.uint8, mode="r+",
                                            shape=(new - self.memory_rows, nbytes))
        self.capacity = new

    def put(self, index: torch.Tensor, keys: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        if not self.fields:
            self.fields = {name: (t.dtype, tuple(t.shape[1:]), t[:1].numel() * t.element_size())
                           for name, t in parts.items()}
            self.memory_rows = self.max_bytes // sum(nbytes for *_, nbytes in self.fields.values())
        if int(index.max()) >= self.capacity:
            self._grow(int(index.max()) + 1)
        self.keys[index] = keys
        self.filled[index] = True
        here = index < self.memory_rows
        for name, t in parts.items():
            self.memory[name][index[here]] = t[here] if not here.all() else t
            if not here.all():
                raw = t[~here].reshape(int((~here).sum()), -1).contiguous().view(torch.uint8)
                self.disk[name][(index[~here] - self.memory_rows).numpy()] = raw.numpy()

    def get(self, index: torch.Tensor, keys: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """The rows of these samples, or None unless every one is stored for the same inputs."""
        top = int(index.max()) if self.fields else self.capacity
        if top >= self.capacity:
            return None
        if not (self.filled.index_select(0, index).all() and torch.equal(self.keys.index_select(0, index), keys)):
            return None
        if top < self.memory_rows:  # index_select: a third of advanced indexing's cost on a batch
            return {name: self.memory[name].index_select(0, index) for name in self.fields}
        here = index < self.memory_rows
        out = {}
        for name, (dtype, shape, _) in self.fields.items():
            t = torch.empty(len(index), *shape, dtype=dtype)
            t[here] = self.memory[name][index[here]]
            raw = torch.from_numpy(np.ascontiguousarray(self.disk[name][(index[~here] - self.memory_rows).numpy()]))
            t[~here] = raw.view(dtype).reshape(-1, *shape)
            out[name] = t
        return out

    def stats(self) -> dict:
        row = sum(nbytes for *_, nbytes in self.fields.values())
        in_memory = int(self.filled[: self.memory_rows].sum())
        on_disk = int(self.filled[self.memory_rows:].sum())
        return {"rows_in_memory": in_memory, "bytes_in_memory": in_memory * row,
                "rows_on_disk": on_disk, "bytes_on_disk": on_disk * row, "max_bytes": self.max_bytes}


class RowStore:
    """Rows whose shapes differ per sample: dicts in memory while they fit in ``max_bytes``, then
    appended to a temporary file and read back with ``os.pread``."""

    def __init__(self, max_bytes: int, spill_dir: str | None = None):
        self.max_bytes, self.spill_dir = max_bytes, spill_dir
        self.memory: dict[int, tuple[int, dict[str, torch.Tensor]]] = {}
        self.disk: dict[int, tuple[int, int, list[tuple[str, torch.dtype, tuple, int]]]] = {}
        self.bytes_in_memory = self.bytes_on_disk = 0
        self.file = None

    @staticmethod
    def _size(row: dict[str, torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in row.values())

    def put(self, index: torch.Tensor, keys: torch.Tensor, rows: list[dict[str, torch.Tensor]]) -> None:
        for i, key, row in zip(index.tolist(), keys.tolist(), rows):
            if i in self.memory:
                self.bytes_in_memory -= self._size(self.memory.pop(i)[1])
            self.disk.pop(i, None)  # a replaced row's bytes stay in the file, unread
            size = self._size(row)
            if self.bytes_in_memory + size <= self.max_bytes:
                self.memory[i] = (key, row)
                self.bytes_in_memory += size
                continue
            if self.file is None:
                self.file = _spill_file(self.spill_dir)
            offset = self.file.seek(0, os.SEEK_END)
            layout = []
            for name, t in row.items():
                data = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                self.file.write(data)
                layout.append((name, t.dtype, tuple(t.shape), len(data)))
            self.file.flush()
            self.bytes_on_disk += size
            self.disk[i] = (key, offset, layout)

    def get(self, index: torch.Tensor, keys: torch.Tensor) -> list[dict[str, torch.Tensor]] | None:
        rows = []
        for i, key in zip(index.tolist(), keys.tolist()):
            if i in self.memory and self.memory[i][0] == key:
                rows.append(self.memory[i][1])
            elif i in self.disk and self.disk[i][0] == key:
                rows.append(self._read(*self.disk[i][1:]))
            else:
                return None  # not stored, or stored for other inputs
        return rows

    def _read(self, offset: int, layout) -> dict[str, torch.Tensor]:
        buf = bytearray(os.pread(self.file.fileno(), sum(n for *_, n in layout), offset))
        row, at = {}, 0
        for name, dtype, shape, n in layout:
            row[name] = torch.frombuffer(buf, dtype=torch.uint8, count=n, offset=at).view(dtype).reshape(shape)
            at += n
        return row

    def stats(self) -> dict:
        return {"rows_in_memory": len(self.memory), "bytes_in_memory": self.bytes_in_memory,
                "rows_on_disk": len(self.disk), "bytes_on_disk": self.bytes_on_disk, "max_bytes": self.max_bytes}
