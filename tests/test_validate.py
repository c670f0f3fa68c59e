"""The up-front checks as functions: schedule knots, weights, model-config code keys, devices,
output folders and the YAML reader (the battery runs them through the CLI)."""

import pytest

from kdistill import validate
from kdistill.errors import ConfigError, DataError


def test_learning_rate_schedules():
    validate.check_learning_rate({"kind": "cosine", "start": 0.1, "end": 0.0, "warmup_steps": 5})
    validate.check_learning_rate({"kind": "exponential", "start": 0.1, "end": 0.001})
    for bad, where in [(-1.0, "optim.lr is"), ({"kind": "linear", "start": 0.1, "end": -0.1}, "optim.lr.end"),
                       ({"kind": "step", "values": [0.1, 0.0], "milestones": [0.5]}, r"optim.lr.values\[1\]"),
                       ({"kind": "linear", "start": 0, "end": 0.1}, "optim.lr.start")]:
        with pytest.raises(ValueError, match=where):
            validate.check_learning_rate(bad)


def test_loss_weights():
    validate.check_loss_weights({"soft_weight": {"kind": "linear", "start": 1, "end": 0},
                                 "hard_weight": {"kind": "linear", "start": 0, "end": 1}}, need_active=True)
    validate.check_loss_weights({"soft_weight": 0, "hard_weight": 0}, need_active=False)
    with pytest.raises(ValueError, match="all 0 at the start"):
        validate.check_loss_weights({"soft_weight": 0, "hard_weight": 0}, need_active=True)
    with pytest.raises(ValueError, match="loss.hard_weight.warmup_start"):
        validate.check_loss_weights({"hard_weight": {"kind": "constant", "value": 1, "warmup_steps": 2,
                                                     "warmup_start": -1}}, need_active=True)


def test_finite_and_code_keys():
    assert validate.non_finite_fields({"a": {"b": [1.0, float("nan")]}, "c": float("-inf")}) == \
        ["a.b.1=nan", "c=-inf"]
    assert validate.code_keys({"x": [{"auto_map": {}}], "trust_remote_code": True}) == \
        ["trust_remote_code", "x.0.auto_map"]
    assert validate.check_model_config({"model_type": "llama"}) == {"model_type": "llama"}


def test_devices_and_output_dirs(tmp_path):
    validate.check_device("cpu", "train.device")
    for bad in ("tpu", "cuda:99", "gpu"):
        with pytest.raises(ConfigError, match="train.device"):
            validate.check_device(bad, "train.device")
    validate.check_output_dir(tmp_path / "new" / "deeper")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        validate.check_output_dir(tmp_path / "f" / "run")


def test_split_shapes():
    from kdistill.data.core import Split
    import torch

    ok = Split(torch.zeros(2, 3), torch.zeros(2), "train")
    with pytest.raises(DataError, match=r"test split's inputs have shape \(4,\)"):
        validate.check_split_shapes((3,), [ok, None, Split(torch.zeros(2, 4), torch.zeros(2), "test")], "x")


def test_yaml_reader(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a:\n  b: 1\n  c: {d: 1, d: 2}\n")
    with pytest.raises(ConfigError, match="duplicate key 'd'.*line 3"):
        validate.read_yaml(path)
    path.write_text("a: &x {b: 1}\nc:\n  <<: *x\n  b: 2\n")
    assert validate.read_yaml(path) == {"a": {"b": 1}, "c": {"b": 2}}
