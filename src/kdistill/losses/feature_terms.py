"""Feature terms of ``loss.terms``: each pure loss of ``kdistill.losses.features`` as a weighted
``Term`` on features tapped by module path (``kdistill.taps``), with its connector.

Everything that can be known before training is checked here, in one line naming the term: a
path that names no module (with the nearest names), shapes that no connector bridges, a
micro-batch too small for a relational term. The shapes come from one forward of two training
samples through the student (in eval mode: no dropout draw, no batch-norm update) and the teacher.

    loss:
      terms:
        - {kind: hint, student: features.2, teacher: features.5, weight: 100}
        - {kind: rkd_distance, student: classifier.1, teacher: classifier.1, weight: 25}
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kdistill.errors import ConfigError
from kdistill.losses.features import attention_transfer, hint_mse, pkt, rkd_angle, rkd_distance
from kdistill.losses.objectives import Term
from kdistill.taps import FeatureTaps, make_connector, probe_shapes, resolve_modules

FEATURE_KINDS = ("hint", "attention", "rkd_distance", "rkd_angle", "pkt")
#: the samples a relational term needs in each micro-batch
MIN_BATCH = {"rkd_distance": 2, "rkd_angle": 3, "pkt": 2}
#: names the engine or the logit part already logs
RESERVED_NAMES = ("loss", "soft", "hard", "dkd", "dist", "temperature", "teacher_entropy", "lr", "ctkd_strength",
                  "hidden", "step", "epoch", "skipped")


def _field(i: int, side: str | None = None) -> str:
    return f"loss.terms[{i}]" + (f".{side}" if side else "")


def check_paths(model: nn.Module, term_cfgs: Sequence, side: str) -> tuple[str, ...]:
    """The distinct ``side`` ("student" / "teacher") paths of the terms, each checked on ``model``."""
    for i, cfg in enumerate(term_cfgs):
        resolve_modules(model, [getattr(cfg, side)], field=_field(i, side))
    return tuple(dict.fromkeys(getattr(cfg, side) for cfg in term_cfgs))


def _check_attention(i: int, s: tuple, t: tuple) -> None:
    same_positions = (len(s) == len(t) == 3 and s[1:] == t[1:]) or (len(s) == len(t) == 1 and s == t)
    if not same_positions:
        raise ConfigError(f"{_field(i)}: attention transfer compares spatial maps position by position, but "
                          f"the student feature is {s} and the teacher's {t}; tap conv maps (C, H, W) of "
                          "the same H x W (channels may differ)")


def _term(i: int, cfg, s_shape: tuple, t_shape: tuple, batch_size: int) -> Term:
    kind, s_path, t_path = cfg.kind, cfg.student, cfg.teacher
    minimum = MIN_BATCH.get(kind, 1)
    if batch_size < minimum:
        raise ConfigError(f"{_field(i)}: {kind} relates samples within a micro-batch and needs at least "
                          f"{minimum}; data.batch_size is {batch_size}")
    connector = None
    if kind == "hint":
        connector = make_connector(s_shape, t_shape, field=_field(i))
        connector = None if isinstance(connector, nn.Identity) else connector
    elif kind == "attention":
        _check_attention(i, s_shape, t_shape)
    p = cfg.p or 2.0

    def fn(student, teacher, batch) -> torch.Tensor:
        s, t = student.features[s_path].float(), teacher.features[t_path]
        if s.shape[0] < minimum:  # the last, partial micro-batch of an epoch holds no pair / triplet
            return s.new_zeros(())
        if kind == "hint":
            return hint_mse(connector(s) if connector is not None else s, t, reduction="sum")
        if kind == "attention":
            return attention_transfer(s, t, p, reduction="sum")
        if kind == "rkd_angle":
            return rkd_angle(s, t, reduction="sum", vertices=cfg.vertices)
        return {"rkd_distance": rkd_distance, "pkt": pkt}[kind](s, t, reduction="sum")

    return Term(cfg.label, cfg.weight, fn, module=connector)


@torch.no_grad()
def _student_shapes(student: nn.Module, paths: Sequence[str], inputs) -> dict[str, tuple[int, ...]]:
    was_training = student.training
    student.eval()
    device = next((p.device for p in student.parameters()), torch.device("cpu"))
    try:
        return probe_shapes(student, paths, lambda: student(inputs.to(device)))
    finally:
        student.train(was_training)


def feature_terms(term_cfgs: Sequence, student: nn.Module, teacher_source, probe_batch: dict,
                  batch_size: int) -> tuple[list[Term], FeatureTaps | None]:
    """The ``Term`` of each ``loss.terms`` entry (connectors built from the probed shapes) and the
    student's taps they read; ``teacher_source.outputs`` must give the teacher paths' features
    (a ``LiveTeacher`` built with ``feature_paths``)."""
    if not term_cfgs:
        return [], None
    s_paths = check_paths(student, term_cfgs, "student")
    t_paths = tuple(dict.fromkeys(cfg.teacher for cfg in term_cfgs))
    missing = [p for p in t_paths if p not in getattr(teacher_source, "feature_paths", ())]
    if missing:
        raise ConfigError(f"loss.terms read teacher features {missing}, but the teacher "
                          f"({teacher_source.describe().get('kind')}) gives logits only: use a live teacher "
                          "(a cache or an ensemble has no single feature map)")
    s_shapes = _student_shapes(student, s_paths, probe_batch["inputs"])
    t_shapes = {p: tuple(f.shape[1:]) for p, f in teacher_source.outputs(probe_batch).features.items()}
    terms = [_term(i, cfg, s_shapes[cfg.student], t_shapes[cfg.teacher], batch_size)
             for i, cfg in enumerate(term_cfgs)]
    return terms, FeatureTaps(student, s_paths, field="loss.terms student")
