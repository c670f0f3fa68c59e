"""Every method family trains end to end from a config (tensors data, tiny CNNs, a few steps):
its terms reach metrics.jsonl, what it trains beside the student is checkpointed, and the saved
model is the plain student."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from kdistill.config import RunConfig
from kdistill.engine import CHECKPOINT, METRICS
from kdistill.errors import ConfigError
from kdistill.models.builders import CNN
from kdistill.runs import distill

STUDENT = {"arch": "cnn", "channels": [4, 8], "hidden": 16}
TEACHER = {"arch": "cnn", "channels": [6, 12], "hidden": 24}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(80, 1, 12, 12, generator=g), torch.randint(0, 3, (80,), generator=g)
    save_file({"train_inputs": x[:48].contiguous(), "train_labels": y[:48].contiguous(),
               "test_inputs": x[48:].contiguous(), "test_labels": y[48:].contiguous()}, str(root / "data.safetensors"))
    for seed in range(2):
        torch.manual_seed(seed)
        teacher = CNN((1, 12, 12), TEACHER["channels"], TEACHER["hidden"], 3)
        save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(root / f"teacher{seed}.safetensors"))
    return root


def config(files, out, loss=None, teacher=None):
    return RunConfig.parse({
        "data": {"dataset": "tensors", "path": str(files / "data.safetensors"), "batch_size": 16},
        "student": STUDENT, "loss": loss or {},
        "teacher": teacher or {"model": {**TEACHER, "weights": str(files / "teacher0.safetensors")}},
        "optim": {"lr": 0.05}, "train": {"epochs": 1, "max_steps": 2, "progress": False, "output_dir": str(out)}})


def logged(result, step: int = 0) -> dict:
    return json.loads((result.out_dir / METRICS).read_text().splitlines()[step])


def plain_student_saved(result) -> bool:
    saved = set(load_file(str(result.out_dir / "model.safetensors")))
    return saved == set(CNN((1, 12, 12), STUDENT["channels"], STUDENT["hidden"], 3).state_dict())


@pytest.mark.parametrize("loss, names", [
    ({"method": "dkd", "warmup_epochs": 1}, {"dkd", "dkd_weight", "hard"}),
    ({"method": "dist", "beta": 1, "gamma": 1}, {"dist", "hard"}),
    ({"standardize": True, "temperature": {"kind": "per_sample", "min": 1, "max": 6}}, {"soft", "hard", "temperature"}),
])
def test_logit_methods_train_and_log_their_terms(files, tmp_path, loss, names):
    result = distill(config(files, tmp_path, loss))
    assert names <= set(logged(result)) and plain_student_saved(result)
    assert json.loads((result.out_dir / "summary.json").read_text())["method"] == config(files, tmp_path, loss).loss.method


def test_learned_temperature_is_trained_checkpointed_and_never_exported(files, tmp_path):
    result = distill(config(files, tmp_path, {"temperature": {"kind": "learned", "loops_epochs": 0.5}}))
    state = torch.load(result.out_dir / CHECKPOINT, weights_only=True)["student"]
    assert state["connectors.temperature.raw"] != 0.0  # moved from its midpoint start (raw = 0)
    assert {"ctkd_strength", "temperature"} <= set(logged(result))
    assert plain_student_saved(result) and isinstance(result.model, CNN)
    assert not any(m._forward_hooks for m in result.model.modules())  # the taps were removed


def test_feature_terms_train_their_connectors(files, tmp_path):
    loss = {"terms": [{"kind": "hint", "student": "features.2", "teacher": "features.2", "weight": 10},
                      {"kind": "rkd_distance", "student": "classifier.1", "teacher": "classifier.1",
                       "weight": {"kind": "linear", "start": 0, "end": 25}}]}
    result = distill(config(files, tmp_path, loss))
    first, last = logged(result), logged(result, 1)
    assert first["rkd_distance_weight"] == 0 and "rkd_distance" not in first  # a zero weight skips the term
    assert {"hint", "hint_weight", "rkd_distance", "rkd_distance_weight"} <= set(last)
    assert last["hint_weight"] == 10 and last["rkd_distance_weight"] == 25
    state = torch.load(result.out_dir / CHECKPOINT, weights_only=True)["student"]
    assert "connectors.hint.weight" in state and plain_student_saved(result)


def test_an_ensemble_of_live_teachers(files, tmp_path):
    members = [{"model": {**TEACHER, "weights": str(files / f"teacher{s}.safetensors")}} for s in range(2)]
    teacher = {"kind": "ensemble", "members": members, "weights": [2, 1], "temperature": 4}
    result = distill(config(files, tmp_path, {"temperature": 4}, teacher))
    described = json.loads((result.out_dir / "summary.json").read_text())["teacher"]
    assert described["kind"] == "memoized" and described["computed"] > 0  # frozen members: once per sample
    ensemble = described["source"]
    assert ensemble["kind"] == "ensemble" and ensemble["weights"] == pytest.approx([2 / 3, 1 / 3])
    with pytest.raises(ConfigError, match=r"teacher.members\[0\].model.weights is not set"):
        distill(config(files, tmp_path / "b", None, {"kind": "ensemble", "members": [{"model": TEACHER}]}))
    with pytest.raises(ConfigError, match="gives logits only"):
        distill(config(files, tmp_path / "c", {"terms": [{"kind": "pkt", "student": "classifier.1",
                                                          "teacher": "classifier.1"}]}, teacher))


def test_a_wrong_tap_path_is_refused_by_the_cli_in_one_line_before_training(files, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(config(files, tmp_path / "run", {"terms": [{"kind": "hint", "student": "features.9",
                                                               "teacher": "features.2"}]}).to_yaml())
    proc = subprocess.run([sys.executable, "-m", "kdistill", "distill", str(cfg)], capture_output=True, text=True,
                          timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "loss.terms[0].student" in lines[0] and "features.5" in lines[0]  # the nearest names
    assert not (tmp_path / "run" / "distilled" / CHECKPOINT).exists()


def test_unlabeled_images_join_distillation_only_live_or_cached(files, tmp_path):
    from kdistill.runs import cache_teacher, train

    cfg = config(files, tmp_path / "live", {"temperature": 4})
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"limit_train": 16, "unlabeled_from_train": True,
                                                                     "val_size": 0}),
                                 "train": cfg.train.model_copy(update={"max_steps": None})})
    steps = lambda result: sum(1 for line in (result.out_dir / METRICS).read_text().splitlines()
                               if '"step"' in line and '"eval"' not in line)
    live = distill(cfg)
    assert steps(live) == 3 and steps(train(cfg, out_dir=tmp_path / "scratch")) == 1  # 16 + 32 images vs 16, by 16
    summary = json.loads((live.out_dir / "summary.json").read_text())
    assert (summary["train_samples"], summary["unlabeled_samples"]) == (16, 32)
    raw = cfg.model_dump(mode="json")
    cached_cfg = RunConfig.parse({**raw, "teacher": {"kind": "cache", "path": str(tmp_path / "cache"),
                                                     "model": raw["teacher"]["model"]}})
    cache_teacher(cached_cfg)
    cached = distill(cached_cfg, out_dir=tmp_path / "cached")  # the cache holds the unlabelled images' rows too
    for name, value in live.model.state_dict().items():
        torch.testing.assert_close(cached.model.state_dict()[name], value, rtol=1e-5, atol=1e-6)
