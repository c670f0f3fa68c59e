"""One training loop for every method and task.

The engine owns what every run shares: the optimizer and its learning-rate schedule, the
temperature and loss-weight schedules, gradient accumulation with a loss normalised over the
whole optimizer step, optional bf16 autocast, the non-finite-loss guard, per-epoch evaluation,
atomic checkpoints and resume, a progress bar and a JSONL log of every step. What differs between
methods lives in the task (how a batch becomes a loss) and the teacher source (where soft targets
come from), never in a copy of this loop.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from kdistill import distributed, precision
from kdistill.checkpoint import load_checkpoint, save_checkpoint
from kdistill.config import RunConfig
from kdistill.errors import CheckpointError, RunInterrupted, TrainingError
from kdistill.evaluate import entropy_sum
from kdistill.schedules import as_schedule
from kdistill.tasks.base import Task
from kdistill.teachers.base import TeacherSource
from kdistill.tracking import StepLogger, open_loggers

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
# config fields a resumed run may change
RESUMABLE_CHANGES = ("train.epochs", "train.progress", "train.checkpoint_every_steps", "train.log")


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    lr = as_schedule(cfg.lr)(0, 1)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


@torch.no_grad()
def constrain_max_norm(model: nn.Module, max_norm: float) -> None:
    """Rescale each output unit's incoming weights (a row of a linear layer, a filter of a
    convolution) to an L2 norm of at most ``max_norm``: the constraint that lets dropout nets
    train at high learning rates (Srivastava et al. 2014)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            module.weight.renorm_(2, 0, max_norm)


def _groups(batches: Iterable, size: int):
    it = iter(batches)
    while group := list(itertools.islice(it, size)):
        yield group


class Engine:
    """Trains ``student`` on ``task`` with soft targets from ``teacher`` (or none: a baseline)."""

    def __init__(self, cfg: RunConfig, student: nn.Module, task: Task, train_batches,
                 val_batches=None, teacher: TeacherSource | None = None,
                 out_dir: str | Path | None = None, num_outputs: int | None = None,
                 loggers: list[StepLogger] | None = None):
        self.cfg, self.task, self.teacher = cfg, task, teacher
        self.loggers = list(loggers or [])  # fed beside metrics.jsonl and the config's trackers
        self.device = torch.device(cfg.train.device)
        self.student = student.to(self.device)
        self.dist = distributed.current()
        # DDP under torchrun (around the task's view of the student): trains self.student
        self.model = (distributed.wrap(task.parallel_module(self.student), self.dist)
                      if self.dist.world_size > 1 else self.student)
        self.train_batches, self.val_batches = train_batches, val_batches
        self.out_dir = Path(out_dir or cfg.train.output_dir)
        self.num_outputs = num_outputs
        self.optimizer = build_optimizer(cfg.optim, [p for p in self.student.parameters() if p.requires_grad])
        self.schedules = {"lr": as_schedule(cfg.optim.lr)}
        if teacher is not None:
            self.schedules.update(temperature=as_schedule(cfg.loss.temperature),
                                  soft_weight=as_schedule(cfg.loss.soft_weight),
                                  hard_weight=as_schedule(cfg.loss.hard_weight))
            self.schedules.update(task.schedules())
        self.steps_per_epoch = math.ceil(len(train_batches) / cfg.train.grad_accum_steps)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
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
        self.student.eval()  # no dropout draws: the probe must not move the RNG
        with torch.no_grad():
            s = self.task.forward(self.student, probe)
        self.student.train()
        if self.num_outputs is not None and s.shape[-1] != self.num_outputs:
            raise TrainingError(f"the student predicts {s.shape[-1]} classes but the data has "
                                f"{self.num_outputs}: set the student's output size to {self.num_outputs}")
        if self.teacher is not None:
            self.task.check_outputs(s, self.teacher.logits(probe))

    # ------------------------------------------------------------------ training
    def _autocast(self):
        return precision.autocast(self.cfg.train.precision, self.device)

    def train_step(self, group: list[dict], hp: dict[str, float]) -> dict[str, float] | None:
        """One optimizer step over the micro-batches of ``group``; the loss is the sum over every
        unit in the group, on every rank, divided by their total count, whatever the
        micro-batching and the number of processes."""
        for g in self.optimizer.param_groups:
            g["lr"] = hp["lr"]
        total = self.dist.all_sum([sum(self.task.count(b) for b in group)])[0]
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        first_bad = None
        for i, batch in enumerate(group):
            teacher_logits = None
            if self.teacher is not None and hp["soft_weight"] != 0:
                teacher_logits = self.teacher.logits(batch)
            with distributed.no_sync(self.model, sync=i == len(group) - 1):
                with self._autocast():
                    student_logits = self.task.forward(self.model, batch)
                loss, terms = self.task.objective(student_logits.float(), teacher_logits, batch, hp)
                # = (loss * world / total).backward() with one node fewer; DDP averages gradients
                # over ranks, so scaling by the world size leaves sum / global count
                loss.backward(torch.full_like(loss, self.dist.world_size / total))
            if isinstance(teacher_logits, torch.Tensor):  # how soft the targets are (dense logits only;
                # estimated on 2**20 logits at most: a diagnostic must not add a pass over every token)
                terms = {**terms, "teacher_entropy": entropy_sum(teacher_logits, hp["temperature"],
                                                                 max_elements=2**20)}
            loss_value = float(loss.detach())  # one read serves the finiteness check and the log
            if first_bad is None and not math.isfinite(loss_value):
                first_bad = (i, batch, loss, terms)
            sums["loss"] = sums.get("loss", 0.0) + loss_value
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        sums = dict(zip(sums, self.dist.all_sum(list(sums.values()))))
        if not all(math.isfinite(v) for v in sums.values()):  # every rank sees the same sums
            self.optimizer.zero_grad(set_to_none=True)
            if self.cfg.train.on_nonfinite == "stop":
                raise TrainingError(self._nonfinite_message(first_bad))
            return None
        if self.cfg.optim.max_grad_norm:
            nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.optim.max_grad_norm)
        self.optimizer.step()
        if self.cfg.optim.max_norm:
            constrain_max_norm(self.student, self.cfg.optim.max_norm)
        return {k: v / total for k, v in sums.items()}

    def _nonfinite_message(self, bad) -> str:
        where = f"step {self.step} (epoch {self.epoch}"
        if bad is None:
            return (f"non-finite loss at {where}) on another rank: see its message; lower the "
                    "learning rate or set train.on_nonfinite: skip")
        i, batch, loss, terms = bad
        described = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        rank = f", rank {self.dist.rank}" if self.dist.world_size > 1 else ""
        return (f"non-finite loss at {where}{rank}, micro-batch {i}, samples "
                f"{batch['index'][:8].tolist()}...): loss={float(loss.detach())}, {described}; "
                "lower the learning rate or set train.on_nonfinite: skip")

    def fit(self, resume: bool = False) -> list[dict]:
        """Train to the configured number of epochs; returns per-epoch evaluation records.
        Every step and epoch record goes to metrics.jsonl and to each logger (``self.loggers``
        and the trackers ``train.log`` turns on; rank 0 only), which are closed however the run
        ends. SIGTERM or Ctrl-C stops it after the current step with a checkpoint (RunInterrupted)."""
        active = [*open_loggers(self.cfg, self.out_dir), *self.loggers] if self.dist.is_main else []
        failed = True
        try:
            with distributed.GracefulStop() as self.stop:
                history = self._fit(resume, active)
            failed = False
            return history
        finally:
            for logger in active:
                logger.close(failed=failed)

    def _fit(self, resume: bool, loggers: list[StepLogger]) -> list[dict]:
        # each rank its own random stream: dropout masks and augmentations must not repeat across ranks
        torch.manual_seed(self.cfg.seed + self.dist.rank)
        if self.cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.preflight()
        main = self.dist.is_main  # only rank 0 logs, evaluates and writes files
        metrics = self.out_dir / METRICS if main else os.devnull
        if resume:
            self._restore()
        elif main:
            (self.out_dir / METRICS).write_text("")
        self.student.train()
        for epoch in range(self.epoch, self.cfg.train.epochs):
            self.epoch = epoch
            self.train_batches.set_epoch(epoch)
            # a mid-epoch checkpoint: the epoch's order is fixed, skip the steps it holds
            groups = itertools.islice(_groups(self.train_batches, self.cfg.train.grad_accum_steps),
                                      self.step_in_epoch, None)
            bar = tqdm(groups, initial=self.step_in_epoch, total=self.steps_per_epoch,
                       desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                       disable=None if (self.cfg.train.progress and main) else True,  # None: off when not a TTY
                       leave=False, dynamic_ncols=True, mininterval=0.5)
            t0 = time.perf_counter()
            with open(metrics, "a") as log:
                for group in bar:
                    hp = self.hparams(self.step)
                    terms = self.train_step(group, hp)
                    record = {"step": self.step, "epoch": epoch, **hp, **(terms or {"skipped": True})}
                    self.step += 1
                    self.step_in_epoch += 1
                    if self.step % self.cfg.train.log_every_steps == 0 or terms is None:
                        log.write(json.dumps(record) + "\n")
                        for logger in loggers:
                            logger.log_step(record)
                    if terms and self.step % 20 == 0:
                        bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                                         if k in ("loss", "soft", "hard", "temperature")})
                    every = self.cfg.train.checkpoint_every_steps
                    if every and self.step % every == 0:
                        log.flush()
                        self._save()
                    if self.dist.any(self.stop.signum is not None):
                        log.flush()
                        self._save()
                        raise self._interrupted(self.stop.signum)
            self.epoch, self.step_in_epoch = epoch + 1, 0
            summary = {"epoch": self.epoch, "step": self.step, "seconds": time.perf_counter() - t0}
            if self.val_batches is not None and main:
                summary.update({f"val_{k}": v for k, v in self.task.evaluate(self.student, self.val_batches).items()})
            self.history.append(summary)
            with open(metrics, "a") as log:
                log.write(json.dumps({"eval": summary}) + "\n")
            for logger in loggers:
                logger.log_eval(summary)
            if self.cfg.train.progress and main:
                tqdm.write("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in summary.items()))
            self._save()
        return self.history

    def _interrupted(self, signum: int | None) -> RunInterrupted:
        signum = signum or 15  # the signal reached another rank; SIGTERM is what torchrun sends
        return RunInterrupted(
            f"{signal.Signals(signum).name} at step {self.step} (epoch {self.epoch + 1}, step "
            f"{self.step_in_epoch} of {self.steps_per_epoch}): checkpoint saved to "
            f"{self.out_dir / CHECKPOINT}; continue with --resume", signum)

    # ------------------------------------------------------------------ checkpoints
    def _state(self, rng_states: list[torch.Tensor]) -> dict:
        return {
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "world_size": self.dist.world_size,
            "torch_rng": torch.stack(rng_states),  # one row per rank
            "hparams": self.hparams(self.step),
            "history": json.dumps(self.history),
            "config_fingerprint": self.cfg.fingerprint(exclude=RESUMABLE_CHANGES),
        }

    def _save(self) -> None:
        rng_states = self.dist.gather(torch.get_rng_state())  # every rank takes part
        if self.dist.is_main:
            save_checkpoint(self.out_dir / CHECKPOINT, self._state(rng_states))

    def _restore(self) -> None:
        state = load_checkpoint(self.out_dir / CHECKPOINT)
        if state["config_fingerprint"] != self.cfg.fingerprint(exclude=RESUMABLE_CHANGES):
            raise CheckpointError(f"{self.out_dir / CHECKPOINT} was written by a different config; "
                                  "resume with the same config (only train.epochs, train.progress and "
                                  "train.checkpoint_every_steps may change)")
        if state.get("world_size", 1) != self.dist.world_size:
            raise CheckpointError(f"{self.out_dir / CHECKPOINT} was written by {state.get('world_size', 1)} "
                                  f"process(es), this run has {self.dist.world_size}: resume with "
                                  f"--nproc {state.get('world_size', 1)} (the data shards depend on it)")
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.step_in_epoch = state.get("step_in_epoch", 0)
        self.history = json.loads(state["history"])
        rng = state["torch_rng"]
        torch.set_rng_state(rng[self.dist.rank] if rng.dim() == 2 else rng)
        # keep the log consistent with the checkpoint: drop steps logged after it was written
        path = self.out_dir / METRICS
        if path.exists() and self.dist.is_main:
            kept = [line for line in path.read_text().splitlines()
                    if line and json.loads(line).get("step", -1) < self.step
                    and json.loads(line).get("eval", {}).get("epoch", 0) <= self.epoch]
            path.write_text("".join(line + "\n" for line in kept))
