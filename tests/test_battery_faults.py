"""The bad-input battery, part 2: faults during and between runs through the real CLI -- disk
full, read-only and not-a-folder outputs, folders in use, kills, torn logs, moved and planted
run folders, poisoned data and runs that diverge. Each ends in one line and exit 2 (or resumes
cleanly), and leaves no half-written file and the last good checkpoint intact."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from battery_helpers import (assert_error, base_config, invoke, merge, teacher_file, temporaries,
                             tensors_file, write_yaml)
from kdistill.checkpoint import load_checkpoint
from scale_helpers import cli, cli_env

STEPS = 240 // 16  # optimizer steps per epoch of the base config


@pytest.fixture
def files(tmp_path):
    return {"data": tensors_file(tmp_path / "data.safetensors"),
            "teacher": teacher_file(tmp_path / "teacher.safetensors")}


def _config(files, tmp_path, name="run.yaml", out="run", **over):
    return write_yaml(tmp_path / name, merge(base_config(files, tmp_path / out), over))


def _steps(log) -> list[int]:
    return [json.loads(line)["step"] for line in log.read_text().splitlines() if '"step"' in line[:8]]


# ---------------------------------------------------------------- the output folder fails
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT])
def test_checkpoint_that_cannot_be_written_keeps_the_last_one(files, tmp_path, monkeypatch, code):
    cfg = _config(files, tmp_path, train={"checkpoint_every_steps": 4})
    real, calls = os.replace, []

    def replace(src, dst, *a, **k):
        if str(dst).endswith("checkpoint.pt"):
            calls.append(dst)
            if len(calls) >= 2:
                raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    assert_error(invoke("train", cfg), "checkpoint.pt", os.strerror(code))
    monkeypatch.setattr(os, "replace", real)
    run = tmp_path / "run" / "scratch"
    assert temporaries(run) == [] and not (run / "model.safetensors").exists()
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4  # the last good one, verified


def test_torch_save_failing_midway_leaves_no_partial_file(files, tmp_path, monkeypatch):
    cfg = _config(files, tmp_path, train={"checkpoint_every_steps": 4})
    real, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(f)
        if len(calls) >= 2:
            open(f, "wb").write(b"PK\x03\x04 half a zip")
            raise RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed writing file")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    assert_error(invoke("train", cfg), "checkpoint.pt", "torch.save failed")
    monkeypatch.setattr(torch, "save", real)
    run = tmp_path / "run" / "scratch"
    assert temporaries(run) == [] and load_checkpoint(run / "checkpoint.pt")["step"] == 4


def test_read_only_output_folder(files, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True).returncode:
        pytest.skip("no read-only bind mount here (needs root with CAP_SYS_ADMIN)")
    try:
        if os.access(ro, os.W_OK) and not _really_read_only(ro):
            pytest.skip("the bind mount did not become read-only")
        cfg = _config(files, tmp_path, train={"output_dir": str(ro / "run")})
        assert_error(invoke("train", cfg), "train.output_dir", "Read-only file system")
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def _really_read_only(folder) -> bool:
    try:
        (folder / "probe").write_text("x")
    except OSError:
        return True
    (folder / "probe").unlink()
    return False


# ---------------------------------------------------------------- one run per folder
def test_folder_in_use_is_refused_naming_the_holder(files, tmp_path):
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "run").mkdir()
        lock = tmp_path / "run" / ".lock"
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "now"}))
        assert_error(invoke("train", _config(files, tmp_path)), f"PID {holder.pid}", "in use")
        assert json.loads(lock.read_text())["pid"] == holder.pid  # the holder's lock is untouched
        lock.write_text(json.dumps({"pid": 1, "host": "another-host"}))
        assert_error(invoke("train", _config(files, tmp_path)), "another-host")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("content", ["dead", "garbage"])
def test_stale_lock_is_taken_over(files, tmp_path, content):
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "run").mkdir()
    lock = tmp_path / "run" / ".lock"
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}) if content == "dead" else "\x00{")
    res = invoke("train", _config(files, tmp_path))
    assert res.code == 0, res.err
    assert not lock.exists() and (tmp_path / "run" / "scratch" / "model.safetensors").is_file()


# ---------------------------------------------------------------- resume after what a kill leaves
@pytest.mark.parametrize("damage", ["torn_last_line", "garbage_middle_line", "empty_log"])
def test_resume_survives_a_damaged_metrics_log(files, tmp_path, damage):
    assert invoke("train", _config(files, tmp_path)).code == 0  # one epoch, checkpointed
    log = tmp_path / "run" / "scratch" / "metrics.jsonl"
    lines = log.read_text().splitlines()
    if damage == "torn_last_line":
        log.write_text("\n".join(lines) + '\n{"step": 15, "epoch": 1, "lr": 0.0')
    elif damage == "garbage_middle_line":
        log.write_text("\n".join(lines[:3] + ["\x00\xff garbage"] + lines[3:]) + "\n")
    else:
        log.write_text("")
    res = invoke("train", _config(files, tmp_path, train={"epochs": 2}), "--resume")
    assert res.code == 0, res.err
    expected = list(range(2 * STEPS)) if damage != "empty_log" else list(range(STEPS, 2 * STEPS))
    assert _steps(log) == expected
    assert all(json.loads(line) for line in log.read_text().splitlines())


def test_moved_run_folder_resumes_to_the_uninterrupted_weights(files, tmp_path):
    assert invoke("train", _config(files, tmp_path, out="ref", train={"epochs": 2})).code == 0
    assert invoke("train", _config(files, tmp_path)).code == 0
    shutil.move(tmp_path / "run", tmp_path / "moved")
    res = invoke("train", _config(files, tmp_path, train={"epochs": 2}), "--resume",
                 "--output-dir", tmp_path / "moved")
    assert res.code == 0, res.err
    ref, moved = (load_file(str(tmp_path / d / "scratch" / "model.safetensors")) for d in ("ref", "moved"))
    assert all(torch.equal(ref[k], moved[k]) for k in ref)


@pytest.mark.parametrize("plant", ["torch_dict", "tensor", "no_checkpoint", "truncated", "other_config"])
def test_resume_refuses_a_checkpoint_that_is_not_this_runs(files, tmp_path, plant):
    assert invoke("train", _config(files, tmp_path)).code == 0
    ckpt = tmp_path / "run" / "scratch" / "checkpoint.pt"
    cfg = _config(files, tmp_path)
    if plant in ("torch_dict", "tensor"):
        from kdistill.checkpoint import save_checkpoint

        save_checkpoint(ckpt, {"weights": torch.zeros(3)} if plant == "torch_dict" else torch.zeros(3))
        needles = ["checkpoint.pt", "not a kdistill checkpoint"]
    elif plant == "no_checkpoint":
        ckpt.unlink()
        needles = ["no checkpoint"]
    elif plant == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
        needles = ["checksum"]
    else:
        cfg = _config(files, tmp_path, optim={"lr": 0.01})
        needles = ["different config"]
    assert_error(invoke("train", cfg, "--resume"), *needles)


# ---------------------------------------------------------------- poisoned data, diverging runs
def test_nan_input_names_the_sample_and_blames_the_data(files, tmp_path):
    tensors_file(tmp_path / "data.safetensors", nan_at=37)
    line = assert_error(invoke("train", _config(files, tmp_path)), "samples [37]", "bad input")
    assert "lower the learning rate" not in line
    res = invoke("train", _config(files, tmp_path, train={"on_nonfinite": "skip"}))
    assert res.code == 0, res.err


def test_nan_teacher_weights_blame_the_teacher(files, tmp_path):
    from safetensors.torch import save_file

    state = load_file(str(files["teacher"]))
    state["net.1.weight"][0, 0] = float("nan")
    save_file(state, str(files["teacher"]))
    line = assert_error(invoke("distill", _config(files, tmp_path), "--no-evaluate"), "teacher outputs")
    assert "lower the learning rate" not in line


@pytest.mark.parametrize("lr", [1e6, 1e4])
def test_huge_learning_rate_stops_and_saves_nothing(files, tmp_path, lr):
    line = assert_error(invoke("train", _config(files, tmp_path, optim={"lr": lr})), "optim.lr")
    assert "diverged" in line
    assert not (tmp_path / "run" / "scratch" / "model.safetensors").exists()


def test_validation_at_chance_stops_unless_switched_off(files, tmp_path):
    tensors_file(tmp_path / "data.safetensors", val=200)  # random labels: nothing to learn
    guard = {"chance_min_steps": 0}
    assert_error(invoke("train", _config(files, tmp_path, train={"divergence_guard": guard})),
                 "at chance", "train.divergence_guard")
    for off in ({"chance_after_epochs": None}, {"enabled": False}):
        res = invoke("train", _config(files, tmp_path, train={"divergence_guard": {**guard, **off}}))
        assert res.code == 0, res.err


def test_export_refuses_damaged_weights_by_name(files, tmp_path):
    pytest.importorskip("onnx")
    assert invoke("distill", _config(files, tmp_path), "--no-evaluate").code == 0
    weights = tmp_path / "run" / "distilled" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert_error(invoke("export", tmp_path / "run"), "model.safetensors", "not a readable safetensors")


# ---------------------------------------------------------------- real processes
def _wait(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended too early:\n{proc.stdout.read()}")
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail("timed out")


def test_second_process_refused_then_sigkill_then_resume_matches(tmp_path):
    """A real run holds its folder: a second one is refused naming its PID. SIGKILL leaves a stale
    lock and maybe a torn log line; --resume takes the lock over and ends with the weights of an
    uninterrupted run."""
    files = {"data": tensors_file(tmp_path / "data.safetensors", n=3200),
             "teacher": teacher_file(tmp_path / "teacher.safetensors")}
    cfg = _config(files, tmp_path, train={"checkpoint_every_steps": 5, "epochs": 2})
    proc = cli("train", str(cfg))
    ckpt = tmp_path / "run" / "scratch" / "checkpoint.pt"
    _wait(lambda: ckpt.exists() and (tmp_path / "run" / ".lock").exists(), proc)
    assert_error(invoke("train", cfg), f"PID {proc.pid}")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    res = invoke("train", cfg, "--resume")
    assert res.code == 0, res.err
    assert invoke("train", _config(files, tmp_path, out="ref", train={"epochs": 2})).code == 0
    ref, resumed = (load_file(str(tmp_path / d / "scratch" / "model.safetensors")) for d in ("ref", "run"))
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)
    assert _steps(tmp_path / "run" / "scratch" / "metrics.jsonl") == list(range(2 * 3200 // 16))


def test_usage_error_in_a_real_process_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kdistill", "distill"], capture_output=True, text=True,
                          env=cli_env(1), timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: Missing argument")
