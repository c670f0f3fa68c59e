"""Atomic, checksummed checkpoints that load without unpickling code.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed
over the old one, so a crash leaves either the old or the new file, never half of one. Its
SHA-256 sits in ``<name>.sha256`` beside it and is verified before loading; the payload loads
with ``torch.load(weights_only=True)``. The sidecar is rewritten just before the rename and lists
the new digest and the old one, so a process killed between the two writes still leaves a
checkpoint that verifies.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from kdistill.errors import CheckpointError, OutputError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


FIXES = {errno.ENOSPC: "free some space or choose another --output-dir",
         errno.EDQUOT: "free some space or choose another --output-dir",
         errno.EROFS: "the file system is read-only: choose another --output-dir",
         errno.ENOTDIR: "a file stands where a folder should be: move it or choose another --output-dir",
         errno.EEXIST: "a file stands where a folder should be: move it or choose another --output-dir"}


def output_error(path: Path, exc: OSError) -> OutputError:
    """One line for a file that cannot be written; the previous version of it is untouched."""
    fix = FIXES.get(exc.errno, "check the folder's permissions or choose another --output-dir")
    return OutputError(f"cannot write {path}: {exc.strerror or exc} ({fix}); the previous "
                       f"{path.name}, if any, is intact")


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync, then atomically move the file to ``path``. Any failure
    (disk full, read-only, not a folder) removes the temporary file, leaves the old ``path`` as it
    was and raises OutputError naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a run's files should read like any other
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise output_error(path, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_checkpoint(path: str | Path, state: dict) -> None:
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")

    def write(tmp: str) -> None:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # torch reports a failed write (e.g. disk full) this way
            raise OSError(errno.EIO, f"torch.save failed: {str(exc).splitlines()[0]}", tmp) from None
        digests = [sha256_file(Path(tmp))]
        if sidecar.is_file() and path.is_file():  # the old file stays in place until the rename
            old = sha256_file(path)
            if old in sidecar.read_text().split():  # never vouch for a damaged old file
                digests.append(old)
        atomic_write_text(sidecar, "\n".join(digests) + "\n")

    atomic_write(path, write)


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ()) -> dict:
    """A verified checkpoint; ``required``: keys it must hold (a planted torch file that is no
    kdistill checkpoint is refused by name, not with a KeyError)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume (drop --resume to start afresh)")
    digest_file = path.with_name(path.name + ".sha256")
    if not digest_file.is_file():
        raise CheckpointError(f"{digest_file} is missing: cannot verify {path}")
    if sha256_file(path) not in digest_file.read_text().split():
        raise CheckpointError(f"{path} does not match its checksum: the file is damaged or truncated")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} cannot be loaded safely: {str(exc).splitlines()[0]}") from None
    missing = [k for k in required if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a kdistill checkpoint (no {', '.join(missing)}): "
                              "drop --resume to start afresh, or restore the run's own checkpoint")
    return state
