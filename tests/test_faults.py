"""Surviving faults: SIGTERM / Ctrl-C checkpoints, SIGKILL + --resume, damaged checkpoints,
non-finite losses. Resumed runs must end with the weights of an uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
import torch

from kdistill.checkpoint import load_checkpoint, save_checkpoint
from kdistill.config import RunConfig
from kdistill.data.sources import splits_from_tensors
from kdistill.errors import CheckpointError, RunInterrupted, TrainingError
from kdistill.models import MLP
from kdistill.runs import distill
from kdistill.teachers import LiveTeacher
from scale_helpers import cli, torch_threads, weights, write_config, write_teacher


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):  # small models: intra-op threads only spin on a busy machine
        yield


# ---------------------------------------------------------------- in-process, synthetic data
def _data(n: int = 96, nan_at: int | None = None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 4, 4, generator=g)
    if nan_at is not None:
        x[nan_at] = float("nan")
    y = torch.randint(0, 3, (n,), generator=g)
    return splits_from_tensors({"train_inputs": x, "train_labels": y,
                                "test_inputs": x[:8], "test_labels": y[:8]}, num_classes=3)


def _cfg(out, live: bool = False, **train) -> RunConfig:
    """``live``: the teacher runs on every batch (``teacher.reuse: off``; its model is passed in)."""
    return RunConfig.parse({
        "seed": 1, "data": {"dataset": "tensors", "batch_size": 8},
        "student": {"arch": "mlp", "hidden": [8]},
        **({"teacher": {"model": {"arch": "mlp", "hidden": [12]}, "reuse": "off"}} if live else {}),
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "train": {"epochs": 2, "progress": False, "output_dir": str(out), **train}})


def _teacher():
    torch.manual_seed(7)
    return MLP(16, [12], 3)


class SignalsAtCall(LiveTeacher):
    """A live teacher that sends ``signum`` to this process at its ``at``-th batch."""

    def __init__(self, model, at: int, signum: int):
        super().__init__(model, num_outputs=3)
        self.calls, self.at, self.signum = 0, at, signum

    def logits(self, batch):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return super().logits(batch)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_mid_epoch_and_resume_matches(tmp_path, signum):
    data, steps_per_epoch = _data(), 96 // 8
    reference = distill(_cfg(tmp_path / "ref"), teacher=_teacher(), data=data).model.state_dict()
    cfg = _cfg(tmp_path / "run", live=True)  # the teacher counts batches of the second epoch too
    at = steps_per_epoch + 4  # the 4th step of the second epoch (+1 for the preflight probe)
    with pytest.raises(RunInterrupted) as stopped:
        distill(cfg, teacher=SignalsAtCall(_teacher(), at, signum), data=data)
    assert stopped.value.signum == signum and "--resume" in str(stopped.value)
    state = load_checkpoint(tmp_path / "run" / "distilled" / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"], state["step"]) == (1, 3, steps_per_epoch + 3)
    assert signal.getsignal(signum) is not None  # handlers are restored after the run
    resumed = distill(cfg, teacher=_teacher(), data=data, resume=True).model.state_dict()
    for name, w in reference.items():
        assert torch.equal(resumed[name], w), name
    log = (tmp_path / "run" / "distilled" / "metrics.jsonl").read_text().splitlines()
    steps = [int(line.split(",")[0].split(":")[1]) for line in log if line.startswith('{"step"')]
    assert steps == list(range(2 * steps_per_epoch))  # each step logged once despite the stop


def test_nonfinite_loss_stops_naming_step_batch_and_terms(tmp_path):
    with pytest.raises(TrainingError) as err:
        distill(_cfg(tmp_path), teacher=_teacher(), data=_data(nan_at=5))
    msg = str(err.value)
    assert re.search(r"non-finite loss at step \d+ \(epoch 0, micro-batch 0, samples \[[\d, ]*\b5\b", msg), msg
    assert "soft=nan" in msg and "hard=nan" in msg and "on_nonfinite: skip" in msg


def test_nonfinite_loss_skips_the_step_when_configured(tmp_path):
    run = distill(_cfg(tmp_path, on_nonfinite="skip"), teacher=_teacher(), data=_data(nan_at=5))
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    log = (tmp_path / "distilled" / "metrics.jsonl").read_text()
    assert log.count('"skipped": true') == 2  # the batch holding sample 5, once per epoch


def _checkpointed(tmp_path):
    cfg = _cfg(tmp_path, checkpoint_every_steps=5)
    distill(cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})}),
            teacher=_teacher(), data=_data())
    return cfg, tmp_path / "distilled" / "checkpoint.pt"


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_checksum"])
def test_damaged_checkpoint_is_refused(tmp_path, damage):
    cfg, path = _checkpointed(tmp_path)
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[len(blob) // 2] ^= 0xFF
        path.write_bytes(bytes(blob))
    elif damage == "truncate":
        path.write_bytes(bytes(blob[: len(blob) // 3]))
    else:
        path.with_name("checkpoint.pt.sha256").unlink()
    with pytest.raises(CheckpointError, match="checksum|cannot verify"):
        distill(cfg, teacher=_teacher(), data=_data(), resume=True)


def test_resume_refuses_another_process_count(tmp_path):
    cfg, path = _checkpointed(tmp_path)
    save_checkpoint(path, {**load_checkpoint(path), "world_size": 2})
    with pytest.raises(CheckpointError, match="--nproc 2"):
        distill(cfg, teacher=_teacher(), data=_data(), resume=True)


# ---------------------------------------------------------------- real processes, MNIST subset
def _wait_for_checkpoint(path, proc, accept, timeout=120.0) -> dict:
    """Poll ``path`` until a checkpoint satisfies ``accept``; fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the fault could be injected:\n{proc.stdout.read()}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if accept(state):
                return state
        except (FileNotFoundError, RuntimeError, EOFError):
            pass
        time.sleep(0.01)
    pytest.fail("no checkpoint appeared in time")


def test_sigterm_then_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """The CLI in a real process: SIGTERM mid-epoch exits 143 after a checkpoint; a resumed run
    is SIGKILLed mid-epoch; a second --resume finishes with the uninterrupted run's weights."""
    teacher = write_teacher(tmp_path / "teacher.safetensors", hidden=(256,))
    config = write_config(tmp_path, "ref", teacher=teacher, teacher_hidden=(256,),
                          batch_size=20, limit_train=4000, epochs=2, checkpoint_every_steps=10)
    steps_per_epoch = 4000 // 20
    run_dir = tmp_path / "faulty"
    ckpt = run_dir / "distilled" / "checkpoint.pt"
    args = ("distill", str(config), "--output-dir", str(run_dir))

    proc = cli(*args)
    _wait_for_checkpoint(ckpt, proc, lambda s: s["step"] > 0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "checkpoint saved" in out and "Traceback" not in out
    after_term = load_checkpoint(ckpt)

    proc = cli(*args, "--resume")
    killed_at = _wait_for_checkpoint(
        ckpt, proc, lambda s: s["step"] > after_term["step"] and s["step_in_epoch"] > 0)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    proc = cli(*args, "--resume")
    distill(RunConfig.from_yaml(config))  # meanwhile, the uninterrupted reference in this process
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert 0 < killed_at["step"] < 2 * steps_per_epoch
    reference, resumed = weights(tmp_path / "ref"), weights(run_dir)
    for name, w in reference.items():
        assert torch.equal(resumed[name], w), name
