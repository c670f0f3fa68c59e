"""The bad-input battery, part 1: mistakes a careless user makes in the command line, the config
file and the files it names, each through the real CLI. Every one must exit 2 with one line on
stderr naming the field or file, before a run folder is made (nothing trained, nothing written).
Part 2 (test_battery_faults.py) covers faults during and between runs."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
import yaml

from battery_helpers import (DELETE, assert_error, base_config, invoke, merge, pickle_bytes, teacher_file,
                             tensors_file, write_yaml)

NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("battery")
    good = teacher_file(d / "teacher.safetensors")
    blob = good.read_bytes()
    (d / "garbage.safetensors").write_bytes(b"\x00\x01not a safetensors file" * 10)
    (d / "truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    (d / "wrong_shape.safetensors").write_bytes(teacher_file(d / "w.safetensors", hidden=(5,)).read_bytes())
    (d / "a_file").write_text("not a folder")
    return {"dir": d, "data": tensors_file(d / "data.safetensors"), "teacher": good,
            "test_shape": tensors_file(d / "test_shape.safetensors", test_shape=(1, 5, 5)),
            "val_shape": tensors_file(d / "val_shape.safetensors", val=40, val_shape=(2, 4, 4))}


def _run(files, tmp_path, over: dict, *args: str):
    out = tmp_path / "run"
    cfg = write_yaml(tmp_path / "run.yaml", merge(base_config(files, out), over))
    return invoke(*(args or ("distill",)), cfg, *(["--no-evaluate"] if not args else [])), out


CONFIG_MISTAKES = {
    # every number finite
    "nan_temperature": ({"loss": {"temperature": NAN}}, ["loss.temperature", "finite"]),
    "inf_lr": ({"optim": {"lr": INF}}, ["optim.lr", "finite"]),
    "nan_soft_weight": ({"loss": {"soft_weight": NAN}}, ["loss.soft_weight"]),
    "nan_in_schedule": ({"loss": {"temperature": {"kind": "cosine", "start": NAN, "end": 2}}},
                        ["loss.temperature.start"]),
    "nan_dropout": ({"student": {"dropout": NAN}}, ["student.dropout"]),
    "nan_momentum": ({"optim": {"momentum": NAN}}, ["optim.momentum"]),
    "inf_grad_norm": ({"optim": {"max_grad_norm": INF}}, ["optim.max_grad_norm"]),
    # loss weights
    "negative_soft_weight": ({"loss": {"soft_weight": -0.5}}, ["loss.soft_weight", ">= 0"]),
    "negative_hard_schedule": ({"loss": {"hard_weight": {"kind": "linear", "start": 0.5, "end": -0.5}}},
                               ["loss.hard_weight.end"]),
    "all_weights_zero": ({"loss": {"soft_weight": 0, "hard_weight": 0}}, ["all 0", "loss.soft_weight"]),
    "weights_zero_at_end": ({"loss": {"soft_weight": {"kind": "linear", "start": 1, "end": 0},
                                      "hard_weight": 0}}, ["end of training"]),
    "zero_temperature": ({"loss": {"temperature": 0}}, ["temperature"]),
    # learning rates > 0 over the schedule
    "negative_lr": ({"optim": {"lr": -0.1}}, ["optim.lr", "gradient ascent"]),
    "zero_lr": ({"optim": {"lr": 0}}, ["optim.lr", "nothing would train"]),
    "lr_crosses_zero": ({"optim": {"lr": {"kind": "linear", "start": 0.1, "end": -0.1}}}, ["optim.lr.end"]),
    "lr_cosine_negative": ({"optim": {"lr": {"kind": "cosine", "start": 0.1, "end": -0.01}}}, ["optim.lr.end"]),
    "lr_step_negative": ({"optim": {"lr": {"kind": "step", "values": [0.1, -0.1], "milestones": [0.5]}}},
                         ["optim.lr.values[1]"]),
    "lr_step_zero": ({"optim": {"lr": {"kind": "step", "values": [0.1, 0], "milestones": [0.5]}}},
                     ["optim.lr.values[1]"]),
    "lr_warmup_negative": ({"optim": {"lr": {"kind": "linear", "start": 0.1, "end": 0.01, "warmup_steps": 3,
                                             "warmup_start": -0.1}}}, ["optim.lr.warmup_start"]),
    "teacher_lr_negative": ({"teacher": {"optim": {"lr": -1}}}, ["teacher.optim.lr"]),
    # devices that do not exist here
    "device_cuda_99": ({"train": {"device": "cuda:99"}}, ["train.device", "cuda:99"]),
    "device_tpu": ({"train": {"device": "tpu"}}, ["train.device", "tpu"]),
    "device_gpu_word": ({"train": {"device": "gpu"}}, ["train.device"]),
    "device_xla": ({"train": {"device": "xla"}}, ["train.device"]),
    "teacher_device": ({"teacher": {"device": "cuda:7"}}, ["teacher.device"]),
    # structure
    "unknown_key": ({"train": {"epoch": 3}}, ["train.epoch", "unknown key"]),
    "wrong_type": ({"train": {"epochs": "ten"}}, ["train.epochs"]),
    "zero_width_layer": ({"student": {"hidden": [0]}}, ["student.hidden.0"]),
    "negative_width_layer": ({"teacher": {"model": {"hidden": [-4]}}}, ["teacher.model.hidden.0"]),
    "seed_overflow": ({"seed": 2**70}, ["seed"]),
    "teacher_weights_folder": ({"teacher": {"model": {"weights": "{dir}"}}}, ["is a folder"]),
    "unknown_arch": ({"student": {"arch": "transformer9000"}}, ["student"]),
    "unknown_guard_knob": ({"train": {"divergence_guard": {"factor": 3}}}, ["train.divergence_guard.factor"]),
    "distill_without_teacher": ({"teacher": DELETE}, ["needs a teacher"]),
    # files the config names
    "teacher_weights_missing": ({"teacher": {"model": {"weights": "/nonexistent/t.safetensors"}}},
                                ["/nonexistent/t.safetensors"]),
    "teacher_weights_garbage": ({"teacher": {"model": {"weights": "{dir}/garbage.safetensors"}}},
                                ["garbage.safetensors", "not a readable safetensors"]),
    "teacher_weights_truncated": ({"teacher": {"model": {"weights": "{dir}/truncated.safetensors"}}},
                                  ["truncated.safetensors"]),
    "teacher_weights_wrong_shape": ({"teacher": {"model": {"weights": "{dir}/wrong_shape.safetensors"}}},
                                    ["wrong_shape.safetensors", "do not fit"]),
    "student_weights_garbage": ({"student": {"weights": "{dir}/garbage.safetensors"}}, ["garbage.safetensors"]),
    "data_path_missing": ({"data": {"path": "/nonexistent/d.safetensors"}}, ["data.path"]),
    "data_path_garbage": ({"data": {"path": "{dir}/garbage.safetensors"}}, ["data.path"]),
    "data_path_is_weights": ({"data": {"path": "{dir}/teacher.safetensors"}}, ["lacks", "train_inputs"]),
    "test_shape_differs": ({"data": {"path": "{dir}/test_shape.safetensors"}}, ["test split", "(1, 5, 5)"]),
    "val_shape_differs": ({"data": {"path": "{dir}/val_shape.safetensors"}}, ["val split", "(2, 4, 4)"]),
    # the output folder
    "output_dir_is_a_file": ({"train": {"output_dir": "{dir}/a_file"}}, ["train.output_dir", "a_file"]),
    "output_dir_under_a_file": ({"train": {"output_dir": "{dir}/a_file/run"}}, ["train.output_dir", "is a file"]),
}


def _fill(node, d):
    if isinstance(node, dict):
        return {k: _fill(v, d) for k, v in node.items()}
    return node.replace("{dir}", str(d)) if isinstance(node, str) else node


@pytest.mark.parametrize("case", CONFIG_MISTAKES, ids=str)
def test_config_mistake_is_one_line_before_any_work(files, tmp_path, case):
    over, needles = CONFIG_MISTAKES[case]
    res, out = _run(files, tmp_path, _fill(over, files["dir"]))
    assert_error(res, *needles)
    assert not out.exists(), "a run folder was made before the mistake was reported"


def test_model_configs_may_not_name_code(files, tmp_path):
    lm = {"task": "causal_lm", "data": {"dataset": "python_docs"},
          "student": {"arch": "hf_causal_lm", "config": {"model_type": "llama", "auto_map": {"AutoModel": "m.M"}}},
          "teacher": {"model": {"arch": "hf_causal_lm", "source": "x"}}}
    for over, needle in [(lm, "student.config"),
                         (merge(lm, {"student": {"config": {"auto_map": DELETE}},
                                     "teacher": {"model": {"source": DELETE, "config": {
                                         "model_type": "llama", "sub": {"trust_remote_code": True}}}}}),
                          "teacher.model.config")]:
        res, _ = _run(files, tmp_path, over)
        assert_error(res, needle, "names code")


# ---------------------------------------------------------------- the config file itself
MARKER = "pwned-by-yaml"
FILES = {
    "missing": (None, ["does not exist"]),
    "empty": ("", ["mapping"]),
    "top_level_list": ("- 1\n- 2\n", ["mapping"]),
    "duplicate_top_key": ("name: a\ntrain: {epochs: 1}\ntrain: {epochs: 2}\n", ["duplicate key 'train'", "line 3"]),
    "duplicate_deep_key": ("loss:\n  temperature:\n    kind: linear\n    start: 4\n    start: 8\n    end: 1\n",
                           ["duplicate key 'start'", "line 5", "first on line 4"]),
    "duplicate_flow_key": ("train: {epochs: 1, epochs: 2}\n", ["duplicate key 'epochs'", "line 1"]),
    "syntax_error": ("train: [1, 2\n", ["not valid YAML", "line"]),
    "tab_indent": ("train:\n\tepochs: 1\n", ["not valid YAML"]),
    "python_tag": (f"name: !!python/object/apply:os.system ['touch {MARKER}']\n", ["not valid YAML"]),
}


@pytest.mark.parametrize("case", FILES, ids=str)
def test_config_file_mistake(tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    text, needles = FILES[case]
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    assert_error(invoke("distill", path), str(path) if case != "missing" else "c.yaml", *needles)
    assert not (tmp_path / MARKER).exists()


def test_config_that_is_a_folder_or_not_utf8(tmp_path):
    assert_error(invoke("train", tmp_path), "is a folder")
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert_error(invoke("train", path), "latin1.yaml", "UTF-8")


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize("args,needles", [
    (["distill"], ["Missing argument", "kdistill distill --help"]),
    (["distill", "c.yaml", "--bogus"], ["No such option: --bogus"]),
    (["distill", "c.yaml", "--nproc", "0"], ["--nproc"]),
    (["train", "c.yaml", "--nproc", "two"], ["--nproc"]),
    (["distil", "c.yaml"], ["No such command", "distil"]),
    (["export", "somewhere", "--threads", "0"], ["--threads"]),
    (["compare", "c.yaml", "--seeds", "0"], ["--seeds"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_usage_error_is_one_line_exit_2(args, needles):
    assert_error(invoke(*args), *needles)


def test_bare_command_prints_help_and_exits_0():
    res = invoke()
    assert res.code == 0 and "Usage" in res.out and res.err == ""


def test_bad_role_and_export_format(files, tmp_path):
    res, _ = _run(files, tmp_path, {}, "train")
    assert res.code == 0  # the base config itself is fine
    assert_error(invoke("train", tmp_path / "run.yaml", "--role", "wizard"), "role", "wizard")
    assert_error(invoke("export", tmp_path / "run", "--format", "tflite"), "--format", "tflite")


def test_debug_flag_and_env_show_the_traceback(files, tmp_path, monkeypatch):
    over = {"loss": {"soft_weight": -1}}
    for extra, env in ((["--debug"], None), ([], "1")):
        if env:
            monkeypatch.setenv("KDISTILL_DEBUG", env)
        cfg = write_yaml(tmp_path / "run.yaml", merge(base_config(files, tmp_path / "run"), over))
        res = invoke("distill", cfg, *extra)
        last = res.err.strip().splitlines()[-1]
        assert res.code == 2 and "Traceback" in res.err
        assert last.startswith("error: ") and "loss.soft_weight" in last


# ---------------------------------------------------------------- weights files that attack
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt", "evil.pth", "evil.bin"])
def test_pickle_weights_are_refused_never_run(files, tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    if name.endswith(".pt"):
        from battery_helpers import Exploit

        torch.save({"net.1.weight": Exploit(marker)}, path)
    else:
        path.write_bytes(pickle_bytes(marker))
    res, _ = _run(files, tmp_path, {"teacher": {"model": {"weights": str(path)}}})
    assert_error(res, name)
    assert not marker.exists()


# ---------------------------------------------------------------- text labels, hub ids, reports
def test_text_label_seen_once_is_refused_unless_listed(tmp_path):
    from text_helpers import text_config, toy_rows, write_csv

    raw = text_config(tmp_path, n=60, epochs=1)
    rows = toy_rows(60)
    rows[7]["label"] = "postive"  # a typo
    write_csv(tmp_path / "toy.csv", rows)
    cfg = write_yaml(tmp_path / "text.yaml", raw)
    assert_error(invoke("train", cfg), "'postive'", "row 7", "data.classes")
    assert not (tmp_path / "run").exists()
    write_csv(tmp_path / "toy.csv", toy_rows(60))
    res = invoke("train", cfg)
    assert res.code == 0, res.err
    assert "classes from the training labels" in res.out and "neg (" in res.out and "pos (" in res.out


def test_missing_hub_id_offline_fails_fast_naming_it(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from kdistill.models import hf

    hf.hub_reachable.cache_clear()
    cfg = write_yaml(tmp_path / "lm.yaml", {
        "task": "causal_lm", "data": {"dataset": "python_docs"},
        "student": {"arch": "hf_causal_lm", "config": {"model_type": "llama", "hidden_size": 16}},
        "teacher": {"model": {"arch": "hf_causal_lm", "source": "nobody/no-such-model"}},
        "train": {"epochs": 1, "progress": False, "output_dir": str(tmp_path / "run")}})
    t0 = time.monotonic()
    assert_error(invoke("distill", cfg, "--no-evaluate"), "nobody/no-such-model", "huggingface-cli download")
    assert time.monotonic() - t0 < 30
    hf.hub_reachable.cache_clear()


@pytest.mark.parametrize("log", ["../../../etc/passwd", "/etc/passwd", 7])
def test_report_reads_nothing_outside_the_run_folder(files, tmp_path, log):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    res, _ = _run(files, tmp_path, {}, "compare")
    assert res.code == 0, res.err
    comparison = run / "comparison.json"
    data = json.loads(comparison.read_text())
    data["logs"] = {**data["logs"], "distilled": log}
    comparison.write_text(json.dumps(data))
    assert_error(invoke("report", run), "comparison.json")


def test_yaml_merge_keys_are_no_duplicates(files, tmp_path):
    raw = yaml.safe_dump(base_config(files, tmp_path / "run"), sort_keys=False)
    text = "defaults: &opt {name: sgd, lr: 0.05}\n" + raw.replace("optim:\n  name: sgd\n  lr: 0.05\n",
                                                                   "optim:\n  <<: *opt\n  lr: 0.01\n")
    (tmp_path / "m.yaml").write_text(text)
    assert_error(invoke("train", tmp_path / "m.yaml"), "defaults", "unknown key")  # merged fine, then refused
