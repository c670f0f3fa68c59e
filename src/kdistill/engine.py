"""One training loop for every method and task.

The engine owns what every run shares: the optimizer and its learning-rate schedule, the
schedules the objective declares (temperature, loss weights), gradient accumulation with a loss normalised over the
whole optimizer step, optional bf16 autocast, the non-finite-loss guard, per-epoch evaluation,
atomic checkpoints and resume, a progress bar and a JSONL log of every step. What differs between
methods lives in the objective (a named method: which terms, which schedules), the task (how a
batch becomes outputs, and the logit loss of its kind of model) and the teacher source (where
teacher outputs come from), never in a copy of this loop.
"""

from __future__ import annotations

import copy
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
from kdistill.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from kdistill.config import RunConfig
from kdistill.errors import CheckpointError, RunInterrupted, TrainingError
from kdistill.evaluate import entropy_sum
from kdistill.guard import DivergenceGuard, nonfinite_advice, nonfinite_culprits
from kdistill.lock import RunLock
from kdistill.losses.objectives import Objective, build_objective
from kdistill.schedules import as_schedule
from kdistill.tasks.base import Task
from kdistill.teachers.base import TeacherSource
from kdistill.tracking import StepLogger, open_loggers

CHECKPOINT = "checkpoint.pt"
SHARDED = "checkpoint.dcp"  # train.parallel: fsdp: every rank's shards (torch.distributed.checkpoint)
METRICS = "metrics.jsonl"
# config fields a resumed run may change
# config fields a resumed run may change (output_dir: a moved run folder resumes)
RESUMABLE_CHANGES = ("train.epochs", "train.max_steps", "train.progress", "train.checkpoint_every_steps",
                     "train.log", "train.output_dir", "train.divergence_guard")
CHECKPOINT_KEYS = ("student", "optimizer", "step", "epoch", "torch_rng", "history", "config_fingerprint")
FLUSH_SECONDS = 1.0  # metrics.jsonl reaches the OS at least this often (and at every checkpoint)


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
    """Trains ``student`` on ``task`` towards ``objective`` (default: the config's method with a
    teacher, cross-entropy alone without one), reading ``teacher``'s outputs."""

    def __init__(self, cfg: RunConfig, student: nn.Module, task: Task, train_batches,
                 val_batches=None, teacher: TeacherSource | None = None,
                 out_dir: str | Path | None = None, num_outputs: int | None = None,
                 loggers: list[StepLogger] | None = None, objective: Objective | None = None):
        self.cfg, self.task, self.teacher = cfg, task, teacher
        self.objective = objective or build_objective(cfg.loss, teacher=teacher is not None)
        self.loggers = list(loggers or [])  # fed beside metrics.jsonl and the config's trackers
        self.device = torch.device(cfg.train.device)
        self.dist = distributed.current()
        self.fsdp = cfg.train.parallel == "fsdp" and self.dist.world_size > 1
        if self.fsdp:  # a sharded copy trains; ``student`` waits on the meta device for the result
            self.plain, self.student = student, copy.deepcopy(student)
            student.to("meta")
            self.model = distributed.shard(task.parallel_module(self.student), self.device)
        else:  # DDP under torchrun (around the task's view of the student): trains self.student
            self.student = student.to(self.device)
            self.model = (distributed.wrap(task.parallel_module(self.student), self.dist)
                          if self.dist.world_size > 1 else self.student)
        self.train_batches, self.val_batches = train_batches, val_batches
        self.out_dir = Path(out_dir or cfg.train.output_dir)
        self.num_outputs = num_outputs
        self.optimizer = build_optimizer(cfg.optim, [p for p in self.student.parameters() if p.requires_grad])
        self.schedules = {"lr": as_schedule(cfg.optim.lr), **self.objective.schedules()}
        self.steps_per_epoch = math.ceil(len(train_batches) / cfg.train.grad_accum_steps)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.history: list[dict] = []
        val_labels = getattr(getattr(val_batches, "split", None), "labels", None)
        self.guard = DivergenceGuard(cfg.train.divergence_guard, val_labels, self._lr_hint())

    def _lr_hint(self) -> str:
        lr = self.cfg.optim.lr
        return f"optim.lr is {lr if isinstance(lr, (int, float)) else lr.model_dump()}"

    # ------------------------------------------------------------------ schedules
    def hparams(self, step: int) -> dict[str, float]:
        """Every scheduled value at an optimizer step."""
        return {name: s(step, self.total_steps) for name, s in self.schedules.items()}

    # ------------------------------------------------------------------ checks
    def preflight(self) -> None:
        """Fail before any training if teacher, student and data disagree on the outputs."""
        batch = next(iter(self.train_batches))
        probe = {k: v[:2] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        self.student.eval()  # no dropout draws: the probe must not move the RNG
        with torch.no_grad():
            s = self.task.forward(self.model if self.fsdp else self.student, probe)
        self.student.train()
        if self.num_outputs is not None and s.logits is not None and s.logits.shape[-1] != self.num_outputs:
            raise TrainingError(f"the student predicts {s.logits.shape[-1]} classes but the data has "
                                f"{self.num_outputs}: set the student's output size to {self.num_outputs}")
        if self.teacher is not None:
            self.task.check_outputs(s, self.teacher.outputs(probe))

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
            teacher = None  # the teacher runs once per micro-batch, for every term that reads it
            if self.teacher is not None and self.objective.uses_teacher(hp):
                teacher = self.teacher.outputs(batch)
            with distributed.no_sync(self.model, sync=i == len(group) - 1):
                with self._autocast():
                    student = self.task.forward(self.model, batch)
                loss, terms = self.objective(self.task, student, teacher, batch, hp)
                # = (loss * world / total).backward() with one node fewer; DDP averages gradients
                # over ranks, so scaling by the world size leaves sum / global count
                loss.backward(torch.full_like(loss, self.dist.world_size / total))
            if teacher is not None and isinstance(teacher.logits, torch.Tensor) and "teacher_entropy" not in terms:
                # how soft the targets are (dense logits only, where the loss did not give it;
                # estimated on 2**20 logits at most: a diagnostic must not add a pass over every token)
                terms = {**terms, "teacher_entropy": entropy_sum(teacher.logits, hp.get("temperature", 1.0),
                                                                 max_elements=2**20)}
            loss_value = float(loss.detach())  # one read serves the finiteness check and the log
            if first_bad is None and not math.isfinite(loss_value):
                per_row = student.logits if student.logits is not None else student.pre_head
                first_bad = (i, batch, loss, terms, per_row.detach(), teacher.logits if teacher else None)
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
        i, batch, loss, terms, student_out, teacher_out = bad
        kind, rows = nonfinite_culprits(batch, student_out, teacher_out)
        index = batch.get("index")
        per_sample = isinstance(index, torch.Tensor) and student_out.shape[0] == index.shape[0]
        ids = [int(index[r]) for r in rows] if per_sample or kind.startswith("input") else rows
        shown = f"samples {ids[:16]}{'...' if len(ids) > 16 else ''}" if ids else "no single sample"
        described = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        rank = f", rank {self.dist.rank}" if self.dist.world_size > 1 else ""
        source = ("finite outputs" if kind == "loss" else
                  f"non-finite {kind}{' outputs' if kind in ('student', 'teacher') else ''}")
        return (f"non-finite loss at {where}{rank}, micro-batch {i}, {shown}: {source}): "
                f"loss={float(loss.detach())}, {described}; {nonfinite_advice(kind, self._lr_hint())}")

    def fit(self, resume: bool = False) -> list[dict]:
        """Train to the configured number of epochs; returns per-epoch evaluation records.
        Every step and epoch record goes to metrics.jsonl and to each logger (``self.loggers``
        and the trackers ``train.log`` turns on; rank 0 only), which are closed however the run
        ends. SIGTERM or Ctrl-C stops it after the current step with a checkpoint (RunInterrupted)."""
        main = self.dist.is_main
        with RunLock(self.cfg.train.output_dir if main else None):  # one run per output folder
            active = [*open_loggers(self.cfg, self.out_dir), *self.loggers] if main else []
            return self._fit_logged(resume, active)

    def _fit_logged(self, resume: bool, active: list[StepLogger]) -> list[dict]:
        failed = True
        try:
            with distributed.GracefulStop() as self.stop:
                history = self._fit(resume, active)
            if self.fsdp:  # the trained weights into the caller's (plain) student, on rank 0
                prefix = "lm." if self.model is not self.student else ""
                distributed.gather_full(self.model, self.plain, prefix, self.dist.is_main)
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
            if self.step >= self.total_steps:  # train.max_steps reached (on resume too)
                break
            self.epoch = epoch
            self.train_batches.set_epoch(epoch)
            # a mid-epoch checkpoint: the epoch's order is fixed, skip the steps it holds
            groups = itertools.islice(_groups(self.train_batches, self.cfg.train.grad_accum_steps),
                                      self.step_in_epoch, None)
            bar = tqdm(groups, initial=self.step_in_epoch, total=self.steps_per_epoch,
                       desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}",
                       disable=None if (self.cfg.train.progress and main) else True,  # None: off when not a TTY
                       leave=False, dynamic_ncols=True, mininterval=0.5)
            t0 = flushed = time.perf_counter()
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
                        if time.perf_counter() - flushed > FLUSH_SECONDS:  # a kill loses ~1 s of log
                            log.flush()
                            flushed = time.perf_counter()
                    self.guard.observe_step(record["step"], epoch, terms["loss"] if terms else None, terms, hp)
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
                    if self.step >= self.total_steps:
                        break
            # an epoch cut short by train.max_steps keeps its place, so a resume can go on
            finished = self.step_in_epoch >= self.steps_per_epoch
            if finished:
                self.epoch, self.step_in_epoch = epoch + 1, 0
            summary = {"epoch": self.epoch if finished else epoch + self.step_in_epoch / self.steps_per_epoch,
                       "step": self.step, "seconds": time.perf_counter() - t0}
            if self.val_batches is not None and (main or self.fsdp):  # sharded: every rank takes part
                summary.update({f"val_{k}": v for k, v in self._evaluate().items()})
            self.history.append(summary)
            with open(metrics, "a") as log:
                log.write(json.dumps({"eval": summary}) + "\n")
            for logger in loggers:
                logger.log_eval(summary)
            verdict = self.guard.verdict(self.epoch, summary) if main else None
            if self.dist.any(verdict is not None):  # rank 0 evaluates; every rank stops
                raise TrainingError(verdict or "validation is at chance on rank 0: see its message")
            if self.cfg.train.progress and main:
                tqdm.write("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in summary.items()))
            self._save()
        return self.history

    def _evaluate(self) -> dict:
        if not self.fsdp:
            return self.task.evaluate(self.student, self.val_batches)
        self.model.unshard()  # the root's embedding, norm and output layer; blocks gather themselves
        try:
            return self.task.evaluate(self.student, self.val_batches)
        finally:
            self.model.reshard()

    def _interrupted(self, signum: int | None) -> RunInterrupted:
        signum = signum or 15  # the signal reached another rank; SIGTERM is what torchrun sends
        return RunInterrupted(
            f"{signal.Signals(signum).name} at step {self.step} (epoch {self.epoch + 1}, step "
            f"{self.step_in_epoch} of {self.steps_per_epoch}): checkpoint saved to "
            f"{self.out_dir / CHECKPOINT}; continue with --resume", signum)

    # ------------------------------------------------------------------ checkpoints
    def _state(self, rng_states: list[torch.Tensor]) -> dict:
        return {  # sharded (fsdp): the weights and optimizer live in SHARDED, written by every rank
            "student": {} if self.fsdp else self.student.state_dict(),
            "optimizer": {} if self.fsdp else self.optimizer.state_dict(),
            "sharded": self.fsdp,
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "world_size": self.dist.world_size,
            "torch_rng": torch.stack(rng_states),  # one row per rank
            "hparams": self.hparams(self.step),
            "history": json.dumps(self.history),
            "config_fingerprint": self.cfg.fingerprint(exclude=RESUMABLE_CHANGES),
            "guard": json.dumps(self.guard.state()),
        }

    def _save(self) -> None:
        rng_states = self.dist.gather(torch.get_rng_state())  # every rank takes part
        if self.fsdp:
            distributed.save_sharded(self.model, self.optimizer, self.out_dir / SHARDED, self.step)
        if self.dist.is_main:
            save_checkpoint(self.out_dir / CHECKPOINT, self._state(rng_states))

    def _restore(self) -> None:
        state = load_checkpoint(self.out_dir / CHECKPOINT, required=CHECKPOINT_KEYS)
        if state["config_fingerprint"] != self.cfg.fingerprint(exclude=RESUMABLE_CHANGES):
            raise CheckpointError(f"{self.out_dir / CHECKPOINT} was written by a different config; "
                                  "resume with the same config (only train.epochs, train.progress and "
                                  "train.checkpoint_every_steps may change)")
        if state.get("world_size", 1) != self.dist.world_size:
            raise CheckpointError(f"{self.out_dir / CHECKPOINT} was written by {state.get('world_size', 1)} "
                                  f"process(es), this run has {self.dist.world_size}: resume with "
                                  f"--nproc {state.get('world_size', 1)} (the data shards depend on it)")
        if state.get("sharded", False) != self.fsdp:
            raise CheckpointError(f"{self.out_dir / CHECKPOINT} was written with train.parallel "
                                  f"{'fsdp' if state.get('sharded') else 'ddp'}: resume with the same setting")
        try:
            if self.fsdp and distributed.load_sharded(self.model, self.optimizer, self.out_dir / SHARDED) != state["step"]:
                raise CheckpointError(f"{self.out_dir / SHARDED} and {CHECKPOINT} are of different steps: "
                                      "drop --resume to start afresh")
            if not self.fsdp:
                self.student.load_state_dict(state["student"])
                self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{self.out_dir / CHECKPOINT} does not fit this run's model: "
                                  f"{' '.join(str(exc).split())[:300]}; drop --resume to start afresh") from None
        self.guard.load_state(json.loads(state.get("guard", "{}")))
        self.step, self.epoch = state["step"], state["epoch"]
        self.step_in_epoch = state.get("step_in_epoch", 0)
        self.history = json.loads(state["history"])
        rng = state["torch_rng"]
        torch.set_rng_state((rng[self.dist.rank] if rng.dim() == 2 else rng).clone())  # a row view at an offset segfaults
        # keep the log consistent with the checkpoint: drop steps logged after it was written
        path = self.out_dir / METRICS
        if path.exists() and self.dist.is_main:
            kept = [line for line, record in _records(path) if record.get("step", -1) < self.step
                    and record.get("eval", {}).get("epoch", 0) <= self.epoch]
            atomic_write_text(path, "".join(line + "\n" for line in kept))


def _records(path: Path) -> list[tuple[str, dict]]:
    """(line, record) of each whole JSON object in a metrics log. A line a kill tore in half
    (or any undecodable line) is dropped: the steps after the checkpoint are re-run anyway."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append((line, record))
    return out
