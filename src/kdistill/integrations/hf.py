"""Distillation with the Hugging Face ``Trainer``: TrainingArguments drive steps, logging,
checkpoints and ``report_to``; kdistill gives the loss.

    trainer = DistillationTrainer(model=student, args=TrainingArguments(...), train_dataset=ds,
                                  data_collator=collator, teacher=teacher,
                                  loss={"divergence": "forward_kl", "temperature": 1.0})
    trainer.train()

``compute_loss`` is ``kdistill.Distiller``'s: the run's objective, the task's loss (for a causal LM
the fused chunked loss: no B x L x V logits for the student), the schedules at
``state.global_step`` of ``state.max_steps``. The loss of an optimizer step is the sum over every
unit (target token, sample) of its micro-batches divided by their count (over all processes when
``average_tokens_across_devices``), exactly as kdistill's engine normalises, so the update equals
the engine's on the same batches. Each term and scheduled value is logged through ``Trainer.log``.

Batches are what HF collators make: ``input_ids``, ``attention_mask``, ``labels`` (-100 for
ignored tokens; missing labels default to the unpadded input ids). A dataset column ``index`` is
kept for teacher caches that look rows up by sample. Evaluation reports the distillation loss
(``eval_loss``) and its terms; no logits are returned (the fused loss never makes them).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Trainer

from kdistill.distiller import Distiller, lm_batch
from kdistill.tasks.causal_lm import CausalLMTask

KEPT_COLUMNS = ("index",)  # dataset columns the student's forward does not take but sources read


class DistillationTrainer(Trainer):
    """A ``transformers.Trainer`` whose loss is kdistill's distillation objective.

    ``teacher``: a model (moved to ``args.device`` unless ``move_teacher=False``), a kdistill
    ``TeacherSource`` (e.g. a cache), or None; ``loss``: the task's loss section as in a kdistill
    config (dict or section); ``task``: ``"causal_lm"`` (default), ``"classification"`` or a
    kdistill ``Task``; ``vocab_size``: the shared rows of a teacher and student whose
    vocabularies differ only by padding. Every other argument is ``Trainer``'s.
    """

    def __init__(self, *args, teacher=None, loss=None, task="causal_lm", vocab_size: int | None = None,
                 move_teacher: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(teacher, nn.Module) and move_teacher:
            teacher = teacher.to(self.args.device)
        self.distiller = Distiller(self.model, teacher, loss, task=task, vocab_size=vocab_size,
                                   total_steps=max(self.args.max_steps, 1), wrap_ddp=False)
        self._logged: dict[str, dict[str, list[float]]] = {"train": {}, "eval": {}}

    # ------------------------------------------------------------------ data
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns += [c for c in KEPT_COLUMNS if c not in self._signature_columns]

    def _as_batch(self, inputs: dict) -> dict:
        return lm_batch(inputs) if isinstance(self.distiller.task, CausalLMTask) else inputs

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The micro-batches of one optimizer step and their unit count (the task's ``count``:
        target tokens or samples), summed over processes when tokens are averaged across devices."""
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        count = torch.tensor(sum(self.distiller.task.count(self._as_batch(b)) for b in batches), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return batches, count

    # ------------------------------------------------------------------ the loss
    def _distil(self, model: nn.Module, inputs: dict):
        kd = self.distiller
        kd.total_steps = max(self.state.max_steps, 1)
        # a wrapper (DDP, DataParallel) is run whole so gradients synchronise; the plain model
        # goes through the task's fused path
        through = None if model is kd.student else model
        return kd(self._as_batch(inputs), step=self.state.global_step, model=through)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = self._distil(model, inputs)
        if num_items_in_batch is not None:  # normalised over the whole optimizer step
            loss = out.summed / num_items_in_batch
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages over processes
            self.loss_is_scaled_for_ga = True
        else:  # the Trainer divides per-batch means by the accumulation steps
            loss = out.loss
            self.loss_is_scaled_for_ga = False
        self._remember("train" if model.training else "eval", out)
        return (loss, {"loss": loss}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The distillation loss of an evaluation batch (no logits: the fused loss has none)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            out = self._distil(model, inputs)
        self._remember("eval", out)
        return out.loss.detach(), None, None

    # ------------------------------------------------------------------ logging
    def _remember(self, split: str, out) -> None:
        values = {**{k: float(v) for k, v in out.terms.items()}, **out.hparams}
        for name, value in values.items():
            self._logged[split].setdefault(name, []).append(value)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Adds each term and scheduled value (mean since the last log) to the Trainer's logs."""
        split = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if split == "eval" else ""
        for name, values in self._logged[split].items():
            logs.setdefault(prefix + name, sum(values) / len(values))
        self._logged[split] = {}
        super().log(logs, *args, **kwargs)
