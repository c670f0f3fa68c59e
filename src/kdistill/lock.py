"""One run per output folder: ``<output_dir>/.lock`` holds the PID and host of the run writing it.

Two runs writing one folder interleave their checkpoints and logs into something neither can
resume. A second run on a locked folder is refused with the holder's PID; a lock left by a run
that was killed (its PID is gone on this host) is taken over. The lock is re-entrant within a
process (``kdistill compare`` trains several roles in one folder).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

from kdistill.errors import ConfigError

LOCK = ".lock"
_held: dict[Path, int] = {}  # lock file -> nesting depth, for this process


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or torn: nobody can be shown to hold it
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """``with RunLock(folder):`` -- exclusive use of ``folder`` by this process (None: no lock,
    for the ranks of a distributed run that do not write)."""

    def __init__(self, folder: str | Path | None):
        self.path = Path(folder).resolve() / LOCK if folder is not None else None

    def __enter__(self) -> "RunLock":
        if self.path is None:
            return self
        if _held.get(self.path):
            _held[self.path] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        fd, tmp = tempfile.mkstemp(prefix=".lock.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic: fails if a lock exists
                    break
                except FileExistsError:
                    self._take_over_if_stale(tmp, me)
                    if (_read(self.path) or {}).get("pid") == me["pid"]:
                        break
            else:
                self._refuse(_read(self.path) or {})
        finally:
            Path(tmp).unlink(missing_ok=True)
        _held[self.path] = 1
        return self

    def _take_over_if_stale(self, tmp: str, me: dict) -> None:
        holder = _read(self.path)
        if holder is None:
            return  # released meanwhile: try the link again
        same_host = holder.get("host") == me["host"]
        pid = holder.get("pid")
        if holder and (not same_host or (isinstance(pid, int) and _alive(pid))):
            self._refuse(holder)
        os.replace(tmp, self.path)  # stale (its process is gone): ours now

    def _refuse(self, holder: dict) -> None:
        where = f" on host {holder.get('host')}" if holder.get("host") != socket.gethostname() else ""
        raise ConfigError(
            f"{self.path.parent} is in use by another run (PID {holder.get('pid')}{where}, started "
            f"{holder.get('started', '?')}): wait for it to finish or choose another --output-dir; "
            f"if that process is gone, delete {self.path}")

    def __exit__(self, *exc) -> None:
        if self.path is None:
            return
        _held[self.path] -= 1
        if _held[self.path]:
            return
        del _held[self.path]
        if (_read(self.path) or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
