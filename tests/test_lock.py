"""The run-folder lock: exclusive across processes, re-entrant within one, stale locks taken over."""

import json
import os
import socket
import subprocess

import pytest

from kdistill.errors import ConfigError
from kdistill.lock import LOCK, RunLock


def test_lock_is_reentrant_and_released(tmp_path):
    with RunLock(tmp_path):
        holder = json.loads((tmp_path / LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with RunLock(tmp_path):
            pass
        assert (tmp_path / LOCK).exists()  # the outer holder still has it
    assert not (tmp_path / LOCK).exists()
    with RunLock(None):
        pass


def test_live_holder_refuses_dead_holder_is_replaced(tmp_path):
    live = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / LOCK).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname()}))
        with pytest.raises(ConfigError, match=f"PID {live.pid}"):
            RunLock(tmp_path).__enter__()
    finally:
        live.kill()
        live.wait()
    with RunLock(tmp_path):  # the holder is gone now
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert list(tmp_path.iterdir()) == []  # no temporary left behind
