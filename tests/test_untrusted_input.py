"""Untrusted input: weights and checkpoints never unpickle code, configs never construct objects
or accept unknown keys, and no code path turns on trust_remote_code."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from kdistill.checkpoint import load_checkpoint
from kdistill.config import RunConfig
from kdistill.errors import CheckpointError, ConfigError, ModelError
from kdistill.models import MLP, load_weights

SRC = Path(__file__).resolve().parents[1] / "src" / "kdistill"
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")


class Exploit:
    """Unpickling this object runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil_files(tmp_path: Path, marker: Path) -> list[Path]:
    plain = tmp_path / "weights.pkl"
    plain.write_bytes(pickle.dumps({"net.1.weight": Exploit(marker)}))
    zipped = tmp_path / "weights.pt"  # torch.save's zip format around the same payload
    torch.save({"net.1.weight": Exploit(marker)}, zipped)
    return [plain, zipped]


def test_the_exploit_is_real(tmp_path):
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Exploit(marker)))  # what a plain unpickler would do
    assert marker.exists()


def test_malicious_pickle_weights_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    for path in _evil_files(tmp_path, marker):
        with pytest.raises(ModelError, match="weights_only"):
            load_weights(MLP(4, [3], 2), path)
    assert not marker.exists()


def test_malicious_checkpoint_is_refused_even_with_a_valid_checksum(tmp_path):
    marker = tmp_path / "pwned"
    for path in _evil_files(tmp_path, marker):
        Path(f"{path}.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")
        with pytest.raises(CheckpointError, match="cannot be loaded safely"):
            load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("tagged", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/name:os.system",
])
def test_config_yaml_cannot_construct_python_objects(tmp_path, tagged):
    marker = tmp_path / "pwned"
    path = tmp_path / "run.yaml"
    path.write_text(f"name: {tagged.format(marker=marker)}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_yaml(path)
    assert not marker.exists()


def test_config_rejects_unknown_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 1\n  import_module: os\n")
    with pytest.raises(ConfigError, match=r"train\.import_module: unknown key"):
        RunConfig.from_yaml(path)


def test_no_code_path_turns_on_remote_code():
    """transformers runs no repository code by default; nothing here may switch that on (a
    config field that a user sets explicitly is the only way)."""
    for source in SRC.rglob("*.py"):
        assert not re.search(r"trust_remote_code\s*[=:]\s*(bool\s*=\s*)?True", source.read_text()), source
