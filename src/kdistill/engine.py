"""One training loop for every method and task.

The engine owns what every run shares: the optimizer and its learning-rate schedule, the
temperature and loss-weight schedules, gradient accumulation with a loss normalised over the
whole optimizer step, optional bf16 autocast, the non-finite-loss guard, per-epoch evaluation,
atomic checkpoints and resume, a progress bar and a JSONL log of every step. What differs between
methods lives in the task (how a batch becomes a loss) and the teacher source (where soft targets
come from), never in a copy of this loop.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from kdistill.checkpoint import load_checkpoint, save_checkpoint
from kdistill.config import RunConfig
from kdistill.errors import CheckpointError, TrainingError
from kdistill.schedules import as_schedule
from kdistill.tasks.base import Task
from kdistill.teachers.base import TeacherSource

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    lr = as_schedule(cfg.lr)(0, 1)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def _groups(batches: Iterable, size: int):
    it = iter(batches)
    while group := list(itertools.islice(it, size)):
        yield group


class Engine:
    """Trains ``student`` on ``task`` with soft targets from ``teacher`` (or none: a baseline)."""

    def __init__(self, cfg: RunConfig, student: nn.Module, task: Task, train_batches,
                 val_batches=None, teacher: TeacherSource | None = None,
                 out_dir: str | Path | None = None, num_outputs: int | None = None):
        self.cfg, self.task, self.teacher = cfg, task, teacher
        self.device = torch.device(cfg.train.device)
        self.student = student.to(self.device)
        self.train_batches, self.val_batches = train_batches, val_batches
        self.out_dir = Path(out_dir or cfg.train.output_dir)
        self.num_outputs = num_outputs
        self.optimizer = build_optimizer(cfg.optim, [p for p in self.student.parameters() if p.requires_grad])
        self.schedules = {"lr": as_schedule(cfg.optim.lr)}
        if teacher is not None:
            self.schedules.update(temperature=as_schedule(cfg.loss.temperature),
                                  soft_weight=as_schedule(cfg.loss.soft_weight),
                                  hard_weight=as_schedule(cfg.loss.hard_weight))
        self.steps_per_epoch = math.ceil(len(train_batches) / cfg.train.grad_accum_steps)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.step, self.epoch = 0, 0
        self.history: list[dict] = []

    # ------------------------------------------------------------------ schedules
    def hparams(self, step: int) -> dict[str, float]:
        """Every scheduled value at an optimizer step; a run without a teacher is plain CE."""
        hp = {name: s(step, self.total_steps) for name, s in self.schedules.items()}
        if self.teacher is None:
            hp.update(temperature=1.0, soft_weight=0.0, hard_weight=1.0)
        return hp

    # ------------------------------------------------------------------ checks
    def preflight(self) -> None:
        """Fail before any training if teacher, student and data disagree on the outputs."""
        batch = next(iter(self.train_batches))
        probe = {k: v[:2] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.no_grad():
            s = self.task.forward(self.student, probe)
        if self.num_outputs is not None and s.shape[-1] != self.num_outputs:
            raise TrainingError(f"the student predicts {s.shape[-1]} classes but the data has "
                                f"{self.num_outputs}: set the student's output size to {self.num_outputs}")
        if self.teacher is not None:
            self.task.check_outputs(s, self.teacher.logits(probe))

    # ------------------------------------------------------------------ training
    def _autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, group: list[dict], hp: dict[str, float]) -> dict[str, float] | None:
        """One optimizer step over the micro-batches of ``group``; the loss is the sum over every
        unit in the group divided by their total count, whatever the micro-batching."""
        for g in self.optimizer.param_groups:
            g["lr"] = hp["lr"]
        total = sum(self.task.count(b) for b in group)
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for i, batch in enumerate(group):
            teacher_logits = None
            if self.teacher is not None and hp["soft_weight"] != 0:
                teacher_logits = self.teacher.logits(batch)
            with self._autocast():
                student_logits = self.task.forward(self.student, batch)
            loss, terms = self.task.objective(student_logits.float(), teacher_logits, batch, hp)
            if not torch.isfinite(loss):
                described = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
                if self.cfg.train.on_nonfinite == "stop":
                    raise TrainingError(
                        f"non-finite loss at step {self.step} (epoch {self.epoch}, micro-batch {i}, "
                        f"samples {batch['index'][:8].tolist()}...): loss={float(loss)}, {described}; "
                        "lower the learning rate or set train.on_nonfinite: skip")
                self.optimizer.zero_grad(set_to_none=True)
                return None
            (loss / total).backward()
            for k, v in {"loss": loss, **terms}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        if self.cfg.optim.max_grad_norm:
            nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.optim.max_grad_norm)
        self.optimizer.step()
        return {k: v / total for k, v in sums.items()}

    def fit(self, resume: bool = False) -> list[dict]:
        """Train to the configured number of epochs; returns per-epoch evaluation records."""
        torch.manual_seed(self.cfg.seed)
        if self.cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._restore()
        else:
            (self.out_dir / METRICS).write_text("")
        self.preflight()
        self.student.train()
        for epoch in range(self.epoch, self.cfg.train.epochs):
            self.epoch = epoch
            self.train_batches.set_epoch(epoch)
            bar = tqdm(_groups(self.train_batches, self.cfg.train.grad_accum_steps),
                       total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                       disable=not self.cfg.train.progress, leave=False, dynamic_ncols=True)
            t0 = time.perf_counter()
            with open(self.out_dir / METRICS, "a") as log:
                for group in bar:
                    hp = self.hparams(self.step)
                    terms = self.train_step(group, hp)
                    record = {"step": self.step, "epoch": epoch, **hp, **(terms or {"skipped": True})}
                    self.step += 1
                    if self.step % self.cfg.train.log_every_steps == 0 or terms is None:
                        log.write(json.dumps(record) + "\n")
                    if terms:
                        bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                                         if k in ("loss", "soft", "hard", "temperature")})
            self.epoch = epoch + 1
            summary = {"epoch": self.epoch, "step": self.step, "seconds": time.perf_counter() - t0}
            if self.val_batches is not None:
                summary.update({f"val_{k}": v for k, v in self.task.evaluate(self.student, self.val_batches).items()})
            self.history.append(summary)
            with open(self.out_dir / METRICS, "a") as log:
                log.write(json.dumps({"eval": summary}) + "\n")
            if self.cfg.train.progress:
                tqdm.write("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in summary.items()))
            self._save()
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        return {
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "torch_rng": torch.get_rng_state(),
            "hparams": self.hparams(self.step),
            "history": json.dumps(self.history),
            "config_fingerprint": self.cfg.fingerprint(exclude=("train.epochs", "train.progress")),
        }

    def _save(self) -> None:
        save_checkpoint(self.out_dir / CHECKPOINT, self._state())

    def _restore(self) -> None:
        state = load_checkpoint(self.out_dir / CHECKPOINT)
        if state["config_fingerprint"] != self.cfg.fingerprint(exclude=("train.epochs", "train.progress")):
            raise CheckpointError(f"{self.out_dir / CHECKPOINT} was written by a different config; "
                                  "resume with the same config (only train.epochs may change)")
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["torch_rng"])
        # keep the log consistent with the checkpoint: drop steps logged after it was written
        path = self.out_dir / METRICS
        if path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line and json.loads(line).get("step", -1) < self.step
                    and json.loads(line).get("eval", {}).get("epoch", 0) <= self.epoch]
            path.write_text("".join(line + "\n" for line in kept))
