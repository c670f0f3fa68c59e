"""The divergence guard: a run that is going nowhere stops with one line, not a saved ruin.

The non-finite guard catches NaN and inf; a learning rate far too high (``lr: 1e6``) can keep the
loss finite and still wreck the model. Two rules, each with its own knob, and an off switch:

- the training loss, averaged over the last ``window`` steps, exceeds ``loss_factor`` times the
  lowest loss of the first ``window`` steps (the loss at initialisation: later losses that are
  10x higher mean the updates push the wrong way). When every logged term has a scheduled weight
  (``soft`` / ``soft_weight``, ``dkd`` / ``dkd_weight``...), that start is the terms' start values
  under this step's weights: a schedule that ramps a term in (DKD's warm-up, a rising soft weight)
  raises the loss by design, not by divergence;
- after ``chance_after_epochs`` epochs, validation accuracy is no better than always predicting
  the most frequent validation class (plus ``chance_margin``), once ``chance_min_steps`` steps
  have been trained, on a validation split of at least ``chance_min_samples`` samples.
"""

from __future__ import annotations

from collections import deque
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from kdistill.errors import TrainingError

KNOBS = "train.divergence_guard"
DIAGNOSTICS = ("teacher_entropy", "temperature")  # logged beside the terms, not weighted into the loss


class DivergenceGuardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(True, description="false: never stop a finite run")
    window: int = Field(10, gt=0, description="steps in the start baseline and in the moving mean")
    loss_factor: float = Field(10.0, gt=1, description="stop when the moving mean of the training "
                               "loss exceeds this many times its start")
    chance_after_epochs: Optional[int] = Field(
        1, gt=0, description="stop when validation accuracy is at chance after this many epochs "
                             "(null: never)")
    chance_margin: float = Field(0.02, ge=0, lt=1, description="accuracy points above chance that "
                                 "still count as chance")
    chance_min_samples: int = Field(100, gt=0, description="check chance only on a validation split "
                                    "of at least this many samples (a tiny one is noise)")
    chance_min_steps: int = Field(100, ge=0, description="check chance only after this many "
                                  "optimizer steps (a few steps need not beat chance yet)")


class DivergenceGuard:
    """Fed each step's loss and each epoch's validation summary; raises TrainingError when a rule
    fires. ``state()`` / ``load_state()`` carry the start baseline across a resume."""

    def __init__(self, cfg: DivergenceGuardConfig, val_labels=None, lr_hint: str = ""):
        self.cfg, self.lr_hint = cfg, lr_hint
        self.chance = majority_share(val_labels, cfg.chance_min_samples)
        self.start: list[float] = []  # the first `window` step losses
        self.term_start: dict[str, list[float]] = {}  # each term's first `window` values
        self.recent: deque[float] = deque(maxlen=cfg.window)

    def state(self) -> dict:
        return {"start": list(self.start), "terms": {k: list(v) for k, v in self.term_start.items()}}

    def load_state(self, state: dict | None) -> None:
        self.start = list((state or {}).get("start", []))
        self.term_start = {k: list(v) for k, v in (state or {}).get("terms", {}).items()}

    def _baseline(self, terms: dict[str, float] | None, weights: dict[str, float] | None) -> float | None:
        """The start loss under this step's weights (see the module notes), the plain start when
        a term has no scheduled weight, None while a weighted term's start is still filling."""
        named = {k: v for k, v in (terms or {}).items() if k not in DIAGNOSTICS and k != "loss"}
        for name, value in named.items():
            start = self.term_start.setdefault(name, [])
            if len(start) < self.cfg.window:
                start.append(value)
        if not named or weights is None or any(f"{k}_weight" not in weights for k in named):
            return min(self.start)
        if any(len(self.term_start[k]) < self.cfg.window for k in named):
            return None
        return sum(weights[f"{k}_weight"] * min(self.term_start[k]) for k in named)

    def _cause(self) -> str:
        return (f"the learning rate ({self.lr_hint}) is likely too high, or the loss weights / "
                "temperature too large; lower optim.lr, or tune (or turn off) "
                f"{KNOBS}")

    def observe_step(self, step: int, epoch: int, loss: float | None, terms: dict[str, float] | None = None,
                     weights: dict[str, float] | None = None) -> None:
        """One step's loss (None: a skipped step), its unweighted terms and the scheduled values."""
        if not self.cfg.enabled or loss is None:
            return
        if len(self.start) < self.cfg.window:
            self.start.append(loss)
        self.recent.append(loss)
        baseline = self._baseline(terms, weights)
        if len(self.start) < self.cfg.window or len(self.recent) < self.cfg.window or baseline is None:
            return
        mean = sum(self.recent) / len(self.recent)
        if baseline > 0 and mean > self.cfg.loss_factor * baseline:
            rescaled = "" if baseline == min(self.start) else " under this step's loss weights"
            raise TrainingError(
                f"training diverged at step {step} (epoch {epoch + 1}): the loss averaged {mean:.4g} "
                f"over the last {len(self.recent)} steps, {mean / baseline:.3g}x its start{rescaled} "
                f"({baseline:.4g}; {KNOBS}.loss_factor is {self.cfg.loss_factor:g}): {self._cause()}")

    def verdict(self, epochs_done: int, summary: dict) -> str | None:
        """The stop message after an epoch, or None (a message, not a raise, so every rank of a
        distributed run can stop together)."""
        after = self.cfg.chance_after_epochs
        accuracy = summary.get("val_accuracy")
        if (not self.cfg.enabled or after is None or epochs_done < after or accuracy is None
                or self.chance is None or summary.get("step", 0) < self.cfg.chance_min_steps):
            return None
        if accuracy > self.chance + self.cfg.chance_margin:
            return None
        return (f"validation accuracy {accuracy:.4f} after epoch {epochs_done} is at chance "
                f"(always predicting the most frequent class scores {self.chance:.4f}): training is "
                f"going nowhere; {self._cause()} (chance_after_epochs: null skips this check)")


def majority_share(labels, min_samples: int = 1) -> float | None:
    """The accuracy of always predicting the most frequent label (chance for the guard); None
    for fewer than ``min_samples`` labelled samples."""
    import torch

    if labels is None:
        return None
    labels = torch.as_tensor(labels)
    labels = labels[labels >= 0]  # unlabelled samples carry a negative label
    if len(labels) < min_samples:
        return None
    return float(torch.bincount(labels).max()) / len(labels)


def _bad_rows(t, allow_neg_inf: bool = False):
    """Indices of the rows (first dimension) of a float tensor holding NaN or inf."""
    import torch

    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() == 0:
        return []
    bad = t.isnan() | (t.isposinf() if allow_neg_inf else ~t.isfinite())
    return bad.reshape(t.shape[0], -1).any(1).nonzero().flatten().tolist()


def nonfinite_culprits(batch: dict, student_out, teacher_out) -> tuple[str, list[int]]:
    """Which samples of a micro-batch made its loss non-finite, and why: ``input`` (the data holds
    NaN / inf), ``teacher`` (the teacher's outputs do), ``student`` (finite input, non-finite
    student outputs: training diverged) or ``loss`` (every output finite: the loss itself).
    Positions are within the micro-batch."""
    for key, value in batch.items():
        if key not in ("labels", "index") and (rows := _bad_rows(value)):
            return f"input '{key}'", rows
    import torch

    # a top-k cache: its log-probabilities (a tensor's own .values is a method)
    teacher = teacher_out if isinstance(teacher_out, torch.Tensor) else getattr(teacher_out, "values", None)
    if rows := _bad_rows(teacher, allow_neg_inf=True):
        return "teacher", rows
    if rows := _bad_rows(student_out):
        return "student", rows
    return "loss", []


def nonfinite_advice(kind: str, lr_hint: str) -> str:
    if kind.startswith("input"):
        return ("the training data holds NaN / inf there (bad input, not divergence): clean or drop "
                "those samples, or set train.on_nonfinite: skip")
    if kind == "teacher":
        return ("the teacher's outputs are NaN / inf for them: check the teacher's weights or "
                "cache (teacher.*), or set train.on_nonfinite: skip")
    return (f"training diverged (finite input): lower the learning rate ({lr_hint}), set "
            "optim.max_grad_norm, check the loss weights / temperature, or set train.on_nonfinite: skip")
