"""Teacher caches: round trips, same student as the live teacher, and every refusal."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kdistill.config import RunConfig
from kdistill.data import Batches, build_data
from kdistill.errors import CacheError, ConfigError
from kdistill.losses import TopKLogits
from kdistill.models import build_model
from kdistill.runs import distill
from kdistill.runs import cache_teacher
from kdistill.teachers import CachedTeacher, LiveTeacher, open_cache, write_cache

TEACHER = {"arch": "mlp", "hidden": [32]}


@pytest.fixture(scope="module")
def data():
    return build_data(RunConfig().data.model_copy(update={"limit_train": 256}))


@pytest.fixture
def setup(tmp_path, data):
    """A config with a random-weight teacher saved to disk, and the matching live teacher."""
    torch.manual_seed(0)
    model = build_model(RunConfig.parse({"student": TEACHER}).student, data.input_shape, 10)
    weights = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))

    def config(**teacher):
        raw = {"seed": 3, "data": {"limit_train": 256, "batch_size": 64},
               "student": {"arch": "mlp", "hidden": [16]},
               "teacher": {"kind": "cache", "path": str(tmp_path / "cache"),
                           "model": {**TEACHER, "weights": str(weights)}, **teacher},
               "loss": {"temperature": 3.0}, "optim": {"lr": 0.05},
               "train": {"epochs": 1, "progress": False, "output_dir": str(tmp_path / "run")}}
        return RunConfig.parse(raw)

    return config, LiveTeacher(model, num_outputs=10)


def _batch(data, n=37):
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(1))[:n]
    return {"inputs": data.train.inputs[idx], "labels": data.train.labels[idx], "index": idx}


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype,tol", [("fp32", 1e-6), ("fp16", 2e-3), ("bf16", 2e-2)])
def test_dense_rows_match_the_live_teacher(setup, data, dtype, tol):
    config, live = setup
    cached = cache_teacher(config(dtype=dtype), data)
    batch = _batch(data)
    torch.testing.assert_close(cached.logits(batch), live.logits(batch), rtol=tol, atol=tol)
    assert cached.bytes_per_sample == 10 * (4 if dtype == "fp32" else 2)


def test_topk_rows_keep_values_indices_and_tail(setup, data):
    config, live = setup
    cached = cache_teacher(config(format="topk", k=3), data)
    batch = _batch(data)
    got, want = cached.logits(batch), TopKLogits.from_logits(live.logits(batch), 3)
    assert isinstance(got, TopKLogits) and got.shape == (37, 10)
    torch.testing.assert_close(got.indices, want.indices)
    torch.testing.assert_close(got.values, want.values.float())
    torch.testing.assert_close(got.log_tail, want.log_tail.float())
    assert cached.bytes_per_sample == 3 * 4 + 3 * 2 + 4


@pytest.mark.parametrize("teacher", [{}, {"format": "topk", "k": 10}])
def test_cache_and_live_teacher_train_the_same_student(setup, data, tmp_path, teacher):
    config, _ = setup
    cfg = config(**teacher)
    cache_teacher(cfg, data)
    from_cache = distill(cfg, data=data, out_dir=tmp_path / "from_cache").model.state_dict()
    live_cfg = RunConfig.parse({**cfg.model_dump(mode="json"),
                                "teacher": {"kind": "live", "model": cfg.teacher.model.model_dump(mode="json")}})
    from_live = distill(live_cfg, data=data, out_dir=tmp_path / "from_live").model.state_dict()
    for name in from_live:
        torch.testing.assert_close(from_cache[name], from_live[name], rtol=1e-5, atol=1e-6)
    summary = json.loads((tmp_path / "from_cache" / "summary.json").read_text())
    assert summary["teacher"]["kind"] == "cache"


def test_cli_writes_the_cache(setup, tmp_path):
    from typer.testing import CliRunner

    from kdistill.cli import app

    config, _ = setup
    cfg = config(format="topk", k=2, dtype="fp16")
    (tmp_path / "run.yaml").write_text(cfg.to_yaml())
    result = CliRunner().invoke(app, ["cache-teacher", str(tmp_path / "run.yaml")])
    assert result.exit_code == 0, result.output
    assert "256 samples, topk fp16 k=2, 12 bytes per sample" in result.output


# ---------------------------------------------------------------- refusals
def test_refuses_random_augmentation(setup, data):
    config, _ = setup
    cfg = config()
    cache_teacher(cfg, data)
    jitter = cfg.model_copy(update={"data": cfg.data.model_copy(update={"augment": "jitter"})})
    with pytest.raises(CacheError, match="data.augment is 'jitter'"):
        open_cache(jitter, data)
    with pytest.raises(CacheError, match="data.augment"):
        cache_teacher(jitter, data)


def test_refuses_another_dataset(setup, data):
    config, _ = setup
    cfg = config()
    cache_teacher(cfg, data)
    other_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"limit_train": 128})})
    other = build_data(other_cfg.data)
    with pytest.raises(CacheError, match=r"dataset: the cache has 'mnist::train=256.*train_sha256"):
        open_cache(other_cfg, other)


def test_refuses_other_training_data_under_the_same_name(setup, data):
    config, _ = setup
    cfg = config()
    cache_teacher(cfg, data)
    data.train.inputs[0, 0, 0, 0] += 1.0
    try:
        with pytest.raises(CacheError, match="train_sha256") as err:
            open_cache(cfg, data)
        assert "dataset:" not in str(err.value)
    finally:
        data.train.inputs[0, 0, 0, 0] -= 1.0


def test_refuses_another_input_transform(setup, data):
    config, live = setup
    cfg = config()
    write_cache(live, data.train, cfg.teacher.path, dataset=data.identity,
                transform={"augment": "none", "image_size": 16, "grayscale": True},
                extra={"teacher_model": cfg.teacher.model.model_dump(mode="json")})
    with pytest.raises(CacheError, match="transform: the cache has .*image_size"):
        open_cache(cfg, data)


@pytest.mark.parametrize("change,field", [({"dtype": "fp16"}, "dtype"), ({"format": "topk", "k": 3}, "format"),
                                          ({"model": {"arch": "mlp", "hidden": [64]}}, "teacher_model")])
def test_refuses_other_cache_settings_or_teacher(setup, data, change, field):
    config, _ = setup
    cache_teacher(config(), data)
    with pytest.raises(CacheError, match=f"{field}: the cache has"):
        open_cache(config(**change), data)


def test_refuses_other_k(setup, data):
    config, _ = setup
    cache_teacher(config(format="topk", k=2), data)
    with pytest.raises(CacheError, match="k: the cache has 2, the run 3"):
        open_cache(config(format="topk", k=3), data)


def test_detects_a_truncated_cache(setup, data):
    config, _ = setup
    cfg = config()
    cache_teacher(cfg, data)
    file = cfg.teacher.path / "logits.bin"
    file.write_bytes(file.read_bytes()[:-7])
    with pytest.raises(CacheError, match="truncated"):
        open_cache(cfg, data)


def test_detects_a_corrupt_cache(setup, data):
    config, _ = setup
    cfg = config()
    cache_teacher(cfg, data)
    file = cfg.teacher.path / "logits.bin"
    raw = bytearray(file.read_bytes())
    raw[100] ^= 0xFF
    file.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="SHA-256"):
        open_cache(cfg, data)
    # without the checksum the size still matches: the damage goes unseen, as documented
    open_cache(config(verify_checksum=False), data)


def test_detects_missing_or_damaged_header(setup, data, tmp_path):
    config, _ = setup
    cfg = config()
    with pytest.raises(CacheError, match="no teacher cache .*kdistill cache-teacher"):
        open_cache(cfg, data)
    cache_teacher(cfg, data)
    (cfg.teacher.path / "cache.json").write_text("{not json")
    with pytest.raises(CacheError, match="not valid JSON"):
        open_cache(cfg, data)


def test_refuses_rows_past_the_cache(setup, data):
    config, _ = setup
    cached = cache_teacher(config(), data)
    with pytest.raises(CacheError, match="holds 256"):
        cached.logits({"index": torch.tensor([3, 256])})


def test_never_overwrites_a_folder_that_is_not_a_cache(setup, data):
    config, _ = setup
    cfg = config()
    cfg.teacher.path.mkdir()
    (cfg.teacher.path / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not a teacher cache"):
        cache_teacher(cfg, data)
    assert (cfg.teacher.path / "notes.txt").read_text() == "mine"


def test_config_needs_k_with_topk_only():
    with pytest.raises(ConfigError, match="needs k"):
        RunConfig.parse({"teacher": {"kind": "cache", "path": "c", "format": "topk"}})
    with pytest.raises(ConfigError, match="k applies to format 'topk' only"):
        RunConfig.parse({"teacher": {"kind": "cache", "path": "c", "k": 3}})
    assert RunConfig.parse({"teacher": {"model": TEACHER}}).teacher.kind == "live"


@pytest.mark.parametrize("field", [{"mass": 0.9}, {"min_prob": 0.01}, {"tail": "prior"}])
def test_refuses_language_model_record_options(setup, data, field):
    config, _ = setup
    with pytest.raises(ConfigError, match=f"teacher.{next(iter(field))}: causal-LM cache options"):
        cache_teacher(config(format="topk", k=3, **field), data)


def test_cache_teacher_needs_a_cache_config_with_a_model(setup, data):
    config, _ = setup
    with pytest.raises(ConfigError, match="teacher.model is not set"):
        cache_teacher(config(model=None), data)
    live = RunConfig.parse({"teacher": {"kind": "live", "model": TEACHER}})
    with pytest.raises(ConfigError, match="teacher.kind: cache"):
        cache_teacher(live, data)


def test_reads_without_per_sample_python(setup, data):
    """A batch's rows come from one fancy-indexing call on the memory map."""
    config, _ = setup
    cached = cache_teacher(config(), data)
    calls = []
    real = cached.arrays["logits"]

    class Spy:
        def __getitem__(self, idx):
            calls.append(idx)
            return real[idx]

    cached.arrays["logits"] = Spy()
    cached.logits(_batch(data, 64))
    assert len(calls) == 1 and isinstance(calls[0], np.ndarray) and calls[0].shape == (64,)
    assert isinstance(real, np.memmap)


def test_batches_slice_without_per_sample_python(data):
    batches = Batches(data.train, 64, shuffle=True, seed=0)
    batch = next(iter(batches))
    assert batch["inputs"].shape == (64, 1, 28, 28) and batch["index"].shape == (64,)
