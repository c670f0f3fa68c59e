"""Text classification: token ids -> class logits, with optional intermediate-layer terms.

The objective is the classification one (soft targets + labels) plus, for transformer students,
hidden-state MSE through learned projections (TinyBERT) and attention-map KL (MiniLM) on the
layer pairs of ``loss.layer_map``, each weighted by its own schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from kdistill.errors import ConfigError, TrainingError
from kdistill.losses import attention_kl, hidden_state_mse
from kdistill.models.text import encoder_of
from kdistill.schedules import as_schedule
from kdistill.tasks.classification import ClassificationTask
from kdistill.teachers.base import to_logits

STUDENT_OUTPUTS = "student_outputs"


@dataclass
class LayerTerms:
    """Which student/teacher hidden-state indices are matched (0 = embeddings, i = layer i)."""

    hidden_pairs: list[tuple[int, int]] = field(default_factory=list)
    attention_pairs: list[tuple[int, int]] = field(default_factory=list)

    @property
    def teacher_hidden(self) -> tuple[int, ...]:
        return tuple(sorted({t for _, t in self.hidden_pairs}))

    @property
    def teacher_attention(self) -> tuple[int, ...]:
        return tuple(sorted({t for _, t in self.attention_pairs}))


def projection_key(pair: tuple[int, int]) -> str:
    return f"s{pair[0]}_t{pair[1]}"


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Embeddings to embeddings, then student layer i to teacher layer round(i * T / S)."""
    return [(0, 0)] + [(i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]


def plan_layer_terms(loss_cfg, student: nn.Module, teacher: nn.Module) -> tuple[LayerTerms, nn.ModuleDict]:
    """The layer pairs for the active terms and a projection per hidden pair whose widths differ."""
    hidden_on = ever_nonzero(loss_cfg.hidden_weight)
    attention_on = ever_nonzero(loss_cfg.attention_weight)
    if not (hidden_on or attention_on):
        return LayerTerms(), nn.ModuleDict()
    s_cfg, t_cfg = encoder_of(student).config, encoder_of(teacher).config
    s_n, t_n = s_cfg.num_hidden_layers, t_cfg.num_hidden_layers
    pairs = [tuple(p) for p in loss_cfg.layer_map] if loss_cfg.layer_map else uniform_layer_map(s_n, t_n)
    for s, t in pairs:
        if not (0 <= s <= s_n and 0 <= t <= t_n):
            raise ConfigError(f"loss.layer_map pair [{s}, {t}]: the student has hidden states 0..{s_n} "
                              f"and the teacher 0..{t_n} (0 = embeddings)")
    terms = LayerTerms(hidden_pairs=pairs if hidden_on else [],
                       attention_pairs=[p for p in pairs if p[0] > 0] if attention_on else [])
    if attention_on and s_cfg.num_attention_heads != t_cfg.num_attention_heads:
        raise ConfigError(f"loss.attention_weight: the student has {s_cfg.num_attention_heads} attention "
                          f"heads and the teacher {t_cfg.num_attention_heads}; attention maps are matched "
                          "head by head: give the student as many heads")
    projections = nn.ModuleDict()
    if s_cfg.hidden_size != t_cfg.hidden_size:
        for pair in terms.hidden_pairs:
            projections[projection_key(pair)] = nn.Linear(s_cfg.hidden_size, t_cfg.hidden_size)
    return terms, projections


def ever_nonzero(spec) -> bool:
    """Whether a weight schedule is non-zero at some point of training."""
    s = as_schedule(spec)
    return bool(s.at(0.0) or s.at(0.5) or s.at(1.0) or (s.warmup_steps and s.warmup_start))


class TextClassificationTask(ClassificationTask):
    """Classification on tokenized text; ``inputs="teacher"`` feeds a model the teacher's tokens.

    For intermediate terms give ``teacher`` (a ``TextTeacher``), ``layer_terms``, ``loss_cfg``
    (their weight schedules) and ``projections`` (the same modules the engine optimises inside
    ``WithProjections``).
    """

    def __init__(self, num_classes: int, device: str | torch.device = "cpu", *, inputs: str = "student",
                 teacher=None, layer_terms: LayerTerms | None = None, loss_cfg=None,
                 projections: nn.ModuleDict | None = None):
        super().__init__(num_classes, device)
        self.prefix = "teacher_" if inputs == "teacher" else ""
        self.teacher, self.terms, self.loss_cfg = teacher, layer_terms or LayerTerms(), loss_cfg
        self.projections = projections if projections is not None else nn.ModuleDict()

    def schedules(self) -> dict:
        if self.loss_cfg is None:
            return {}
        return {"hidden_weight": as_schedule(self.loss_cfg.hidden_weight),
                "attention_weight": as_schedule(self.loss_cfg.attention_weight)}

    def forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        kwargs = {k: batch[self.prefix + k].to(self.device, non_blocking=True)
                  for k in ("input_ids", "attention_mask")}
        intermediate = model.training and (self.terms.hidden_pairs or self.terms.attention_pairs)
        if intermediate:
            kwargs.update(output_hidden_states=bool(self.terms.hidden_pairs),
                          output_attentions=bool(self.terms.attention_pairs))
        out = model(**kwargs)
        if intermediate:
            batch[STUDENT_OUTPUTS] = out
        return to_logits(out)

    @torch.no_grad()
    def predict(self, model: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """All logits and labels of a split in sample order (batches come in length order, which
        differs between tokenizers), so models with different tokenizers line up."""
        logits, labels = super().predict(model, batches)
        order = torch.cat([b["index"] for b in batches]).argsort()
        return logits[order], labels[order]

    def objective(self, student_logits, teacher_logits, batch, hp):
        loss, terms = super().objective(student_logits, teacher_logits, batch, hp)
        hidden_w, attention_w = hp.get("hidden_weight", 0.0), hp.get("attention_weight", 0.0)
        if not (hidden_w or attention_w):
            return loss, terms
        if STUDENT_OUTPUTS not in batch or self.teacher is None:
            raise TrainingError("intermediate-layer terms need the student's hidden states and a text "
                                "teacher: build the task with layer_terms and teacher")
        s_out, t_out = batch[STUDENT_OUTPUTS], self.teacher.outputs(batch)
        mask = batch["attention_mask"].to(self.device)
        if batch["teacher_attention_mask"].shape != mask.shape or not torch.equal(
                batch["teacher_attention_mask"].to(self.device), mask):
            raise TrainingError("hidden-state and attention terms match tokens one to one: the student "
                                "must use the teacher's tokenizer (student.tokenizer)")
        if hidden_w and self.terms.hidden_pairs:
            values = []
            for pair in self.terms.hidden_pairs:
                key = projection_key(pair)
                proj = self.projections[key] if key in self.projections else None
                values.append(hidden_state_mse(
                    s_out.hidden_states[pair[0]].float(), t_out["hidden"][pair[1]], mask,
                    weight=None if proj is None else proj.weight, bias=None if proj is None else proj.bias,
                    reduction="sum"))
            terms["hidden"] = torch.stack(values).mean()  # mean over pairs: weight is depth-free
            loss = loss + hidden_w * terms["hidden"]
        if attention_w and self.terms.attention_pairs:
            values = [attention_kl(s_out.attentions[s - 1].float(), t_out["attention"][t], mask,
                                   reduction="sum") for s, t in self.terms.attention_pairs]
            terms["attention"] = torch.stack(values).mean()
            loss = loss + attention_w * terms["attention"]
        return loss, terms

