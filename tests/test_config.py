import subprocess
import sys
from pathlib import Path

import pytest

from kdistill.config import RunConfig
from kdistill.errors import ConfigError


def test_yaml_and_python_give_the_same_config(tmp_path):
    raw = {"name": "x", "student": {"arch": "mlp", "hidden": [64]},
           "loss": {"temperature": {"kind": "cosine", "start": 20, "end": 2}}}
    from_py = RunConfig.parse(raw)
    path = tmp_path / "c.yaml"
    path.write_text(from_py.to_yaml())
    assert RunConfig.from_yaml(path) == from_py
    assert RunConfig(**raw) == from_py


def test_unknown_key_names_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.learning_rate: unknown key"):
        RunConfig.from_yaml(path)


def test_bad_value_names_the_field_and_value():
    with pytest.raises(ConfigError, match=r"data\.batch_size: .*greater than 0.*got 0"):
        RunConfig.parse({"data": {"batch_size": 0}})
    with pytest.raises(ConfigError, match=r"student"):
        RunConfig.parse({"student": {"arch": "transformer9000"}})
    with pytest.raises(ConfigError, match="temperature must stay > 0"):
        RunConfig.parse({"loss": {"temperature": {"kind": "linear", "start": 4, "end": 0}}})


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_yaml(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        RunConfig.from_yaml(p)


def test_yaml_cannot_construct_python_objects(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_yaml(p)


def test_cli_prints_one_line_error_and_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: -1\n")
    proc = subprocess.run([sys.executable, "-m", "kdistill", "distill", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "train.epochs" in lines[0] and "Traceback" not in proc.stderr


def test_class_count_mismatch_is_a_one_line_cli_error(tmp_path):
    """A 3-class dataset with the 10-class bundled teacher stops before any training."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    save_file({"train_inputs": torch.rand(30, 1, 28, 28, generator=g), "train_labels": torch.arange(30) % 3,
               "test_inputs": torch.rand(9, 1, 28, 28, generator=g), "test_labels": torch.arange(9) % 3},
              tmp_path / "three.safetensors")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{dataset: tensors, path: {tmp_path / 'three.safetensors'}, val_size: 0}}\n"
                   "teacher: {model: {arch: pretrained, name: ccexam-mnist}}\n"
                   f"train: {{epochs: 1, output_dir: {tmp_path / 'run'}}}\n")
    proc = subprocess.run([sys.executable, "-m", "kdistill", "distill", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "10 classes" in lines[0] and "3 classes" in lines[0]
    assert not (tmp_path / "run" / "distilled" / "checkpoint.pt").exists()


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    assert RunConfig.from_yaml(path).name
