"""Atomic, checksummed checkpoints that load without unpickling code.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed
over the old one, so a crash leaves either the old or the new file, never half of one. Its
SHA-256 sits in ``<name>.sha256`` beside it and is verified before loading; the payload loads
with ``torch.load(weights_only=True)``. The sidecar is rewritten just before the rename and lists
the new digest and the old one, so a process killed between the two writes still leaves a
checkpoint that verifies.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from kdistill.errors import CheckpointError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync, then atomically move the file to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a run's files should read like any other
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")

    def write(tmp: str) -> None:
        torch.save(state, tmp)
        digests = [sha256_file(Path(tmp))]
        if sidecar.is_file() and path.is_file():  # the old file stays in place until the rename
            old = sha256_file(path)
            if old in sidecar.read_text().split():  # never vouch for a damaged old file
                digests.append(old)
        atomic_write_text(sidecar, "\n".join(digests) + "\n")

    atomic_write(path, write)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume (drop --resume to start afresh)")
    digest_file = path.with_name(path.name + ".sha256")
    if not digest_file.is_file():
        raise CheckpointError(f"{digest_file} is missing: cannot verify {path}")
    if sha256_file(path) not in digest_file.read_text().split():
        raise CheckpointError(f"{path} does not match its checksum: the file is damaged or truncated")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} cannot be loaded safely: {str(exc).splitlines()[0]}") from None
