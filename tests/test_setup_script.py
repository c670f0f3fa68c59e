"""scripts/setup.sh: silent and instant where set-up is done; otherwise it says each step."""

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def copy_tree(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def stamp_of(tree: Path) -> str:
    data = (tree / "pyproject.toml").read_bytes() + (tree / "scripts" / "setup.sh").read_bytes()
    return hashlib.sha256(data).hexdigest()[:16]


def test_a_done_set_up_prints_nothing_and_returns_at_once(tmp_path):
    tree = copy_tree(tmp_path)
    (tree / ".venv").mkdir()
    (tree / ".venv" / ".kdistill-setup").write_text(stamp_of(tree) + "\n")
    start = time.perf_counter()
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=tree, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    assert time.perf_counter() - start < 2


def test_a_set_up_to_do_says_its_first_step_with_its_time(tmp_path):
    """A stale stamp starts the set-up; a Python that cannot make a venv stops it at step one,
    which has already said what it is doing."""
    tree = copy_tree(tmp_path)
    (tree / ".venv").mkdir()
    (tree / ".venv" / ".kdistill-setup").write_text("stale\n")
    fake = tmp_path / "python-that-fails"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'Python 3.0' && exit 0\nexit 3\n")
    fake.chmod(0o755)
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=tree, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake)})
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert lines[0].startswith("setup: first run") and lines[1].startswith("setup: venv .venv (Python 3.0) ... ")


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "setup.sh")]).returncode == 0
