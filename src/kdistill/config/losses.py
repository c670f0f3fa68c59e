"""Loss sections, one per task: each says which method (a named objective in
``kdistill.losses.objectives``) the run optimises, and with which scheduled weights.

Classifiers default to Hinton's recipe (T = 4, 0.7 soft / 0.3 hard); causal LMs to token-level
forward KL at T = 1 on the teacher alone (soft 1, hard 0), as GKD and MiniLLM train. A field of
one method (``alpha`` of dkd, ``gamma`` of dist...) is refused under another, in one line.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from kdistill.config.base import Strict
from kdistill.losses.feature_terms import FEATURE_KINDS, RESERVED_NAMES
from kdistill.losses.objectives import OBJECTIVES
from kdistill.losses.divergences import DIVERGENCES
from kdistill.schedules import Constant, Cosine, Exponential, Linear, ScheduleSpec, Step, as_schedule

Method = Literal[tuple(OBJECTIVES)]


class PerSampleTemperatureSpec(Strict):
    """T_i = max - (max - min) * H(teacher_i) / log C: confident teacher samples softened most."""

    kind: Literal["per_sample"] = "per_sample"
    min: float = Field(1.0, gt=0)
    max: float = Field(8.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class LearnedTemperatureSpec(Strict):
    """CTKD (Li et al. 2023): one temperature in (min, max), trained adversarially with the
    student; the reversal strength ramps from 0 to 1 over ``loops_epochs`` (a cosine)."""

    kind: Literal["learned"] = "learned"
    min: float = Field(1.0, gt=0)
    max: float = Field(21.0, gt=0)
    initial: Optional[float] = Field(None, description="starting temperature; default (min + max) / 2")
    loops_epochs: float = Field(10.0, ge=0, description="epochs over which the reversal strength ramps up")

    @model_validator(mode="after")
    def _inside(self):
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        if self.initial is not None and not self.min < self.initial < self.max:
            raise ValueError(f"initial ({self.initial}) must lie strictly inside (min, max)")
        return self


def _temperature_kind(value) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number"
    return value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)


#: a number, a schedule, or a temperature that adapts (per sample, learned)
TemperatureSpec = Annotated[
    Union[tuple(Annotated[t, Tag(k)] for k, t in (
        ("number", float), ("constant", Constant), ("linear", Linear), ("cosine", Cosine),
        ("exponential", Exponential), ("step", Step), ("per_sample", PerSampleTemperatureSpec),
        ("learned", LearnedTemperatureSpec)))],
    Discriminator(_temperature_kind)]
ADAPTIVE = ("per_sample", "learned")


class FeatureTerm(Strict):
    """A weighted term on intermediate features, read by module path on student and teacher."""

    kind: Literal[FEATURE_KINDS]
    student: str = Field(..., description="student module path, as model.named_modules() names it")
    teacher: str = Field(..., description="teacher module path, as model.named_modules() names it")
    weight: ScheduleSpec = 1.0
    name: Optional[str] = Field(None, description="logged as <name> and <name>_weight; default: kind")
    p: Optional[float] = Field(None, gt=0, description="attention: the power of |f| in the map (default 2)")
    vertices: Optional[int] = Field(
        None, ge=1, description="rkd_angle: angles at the batch's first `vertices` samples only, O(m N^2) "
                                "work instead of O(N^3) (an unbiased estimate on shuffled batches); default all")

    @model_validator(mode="after")
    def _fits_kind(self):
        if self.p is not None and self.kind != "attention":
            raise ValueError(f"p applies to kind attention only (kind is {self.kind}): remove it")
        if self.vertices is not None and self.kind != "rkd_angle":
            raise ValueError(f"vertices applies to kind rkd_angle only (kind is {self.kind}): remove it")
        if self.name in RESERVED_NAMES:
            raise ValueError(f"name {self.name!r} is taken by a logged value: choose another")
        return self

    @property
    def label(self) -> str:
        return self.name or self.kind


#: the fields only some methods take, with their defaults under those methods
METHOD_FIELDS = {"alpha": {"dkd": 1.0}, "beta": {"dkd": 8.0, "dist": 2.0}, "gamma": {"dist": 2.0},
                 "warmup_epochs": {"dkd": 20.0}}


class KDLoss(Strict):
    """Soft targets (KL at temperature T, times T^2) plus cross-entropy on the labels; or DKD /
    DIST in place of the soft term (``method``); plus feature ``terms``."""

    method: Method = Field("kd", description="the named objective (see the README's methods table)")
    temperature: TemperatureSpec = 4.0
    soft_weight: Optional[ScheduleSpec] = Field(0.7, description="kd only (none under dkd, dist)")
    hard_weight: ScheduleSpec = Field(0.3, description="default 0.3 (kd), 1.0 (dkd, dist)")
    standardize: bool = Field(False, description="z-score both logits before the soft term (Sun et al. 2024)")
    terms: list[FeatureTerm] = Field(default_factory=list, description="feature terms (hint, attention, "
                                     "rkd_distance, rkd_angle, pkt) on tapped modules")
    alpha: Optional[float] = Field(None, ge=0, description="dkd: TCKD weight (default 1)")
    beta: Optional[float] = Field(None, ge=0, description="dkd: NCKD weight (default 8); dist: inter-class "
                                  "weight (default 2)")
    gamma: Optional[float] = Field(None, ge=0, description="dist: intra-class weight (default 2)")
    warmup_epochs: Optional[float] = Field(None, ge=0, description="dkd: epochs of linear warm-up (default 20)")

    @model_validator(mode="before")
    @classmethod
    def _method_fields(cls, raw):
        """Refuse another method's fields; fill this method's defaults (dkd and dist: hard_weight 1,
        no soft_weight). Runs on every validated assignment too, with all fields, as written back."""
        if not isinstance(raw, dict):
            return raw
        method = raw.get("method", "kd")
        if method not in OBJECTIVES:
            return raw  # the Literal names the choices
        raw = dict(raw)
        for name, defaults in METHOD_FIELDS.items():
            if raw.get(name) is not None and method not in defaults:
                raise ValueError(f"{name} applies to method {' or '.join(defaults)} only (method is {method}): "
                                 f"remove it or set method: {next(iter(defaults))}")
            if method in defaults and raw.get(name) is None:
                raw[name] = defaults[method]
        if method == "kd":
            if raw.get("soft_weight", 0) is None:
                del raw["soft_weight"]  # the default
            return raw
        if raw.get("soft_weight") is not None:
            raise ValueError(f"soft_weight applies to method kd only: {method} weighs its own terms "
                             f"({'alpha and beta' if method == 'dkd' else 'beta and gamma'}), so remove it")
        raw["soft_weight"] = None
        raw.setdefault("hard_weight", 1.0)
        temperature = raw.get("temperature")
        kind = temperature.get("kind") if isinstance(temperature, dict) else getattr(temperature, "kind", None)
        if kind in ADAPTIVE:
            raise ValueError(f"temperature kind {kind} applies to method kd only: give {method} a number or "
                             "a schedule")
        return raw

    @field_validator("temperature", mode="after")
    @classmethod
    def _positive_temperature(cls, v):
        if getattr(v, "kind", None) in ADAPTIVE:
            return v  # bounded by its own min / max
        sched = as_schedule(v)
        first = sched.warmup_start if sched.warmup_steps else sched.initial
        if sched.at(0.0) <= 0 or sched.at(1.0) <= 0 or first <= 0:
            raise ValueError("temperature must stay > 0 (set warmup_start > 0 when warming up)")
        return v

    @field_validator("terms", mode="after")
    @classmethod
    def _distinct_names(cls, terms):
        labels = [t.label for t in terms]
        twice = sorted({n for n in labels if labels.count(n) > 1})
        if twice:
            raise ValueError(f"two terms are named {twice[0]!r}: give each its own `name`")
        return terms


class TextKDLoss(KDLoss):
    """KD plus, for transformer students, hidden-state (TinyBERT) and attention-map (MiniLM) terms."""

    hidden_weight: ScheduleSpec = Field(0.0, description="hidden-state MSE (TinyBERT) weight")
    attention_weight: ScheduleSpec = Field(0.0, description="attention-map KL (MiniLM) weight")
    layer_map: Optional[list[tuple[int, int]]] = Field(
        None, description="[student, teacher] hidden-state indices (0 = embeddings, i = layer i)"
                          "; default: a uniform map including 0 -> 0")

    @field_validator("terms", mode="after")
    @classmethod
    def _no_feature_terms(cls, terms):
        if terms:
            raise ValueError("feature terms are wired for task classification; text students distil "
                             "intermediate layers with hidden_weight / attention_weight")
        return terms


class LMLoss(KDLoss):
    """Token-level distillation: a divergence per target token (see losses/divergences.py and losses/fused.py). Method kd
    only: the fused token loss never materialises the logits that dkd, dist, standardize and
    feature terms would read."""

    temperature: ScheduleSpec = 1.0
    soft_weight: ScheduleSpec = 1.0
    hard_weight: ScheduleSpec = 0.0
    divergence: Literal[DIVERGENCES] = "forward_kl"
    jsd_beta: float = Field(0.5, ge=0, le=1, description="GKD's beta: 0 = forward KL, 1 = reverse KL")
    skew: float = Field(0.1, ge=0, lt=1, description="skew KL's mixing weight alpha")
    chunk_tokens: Optional[int] = Field(None, gt=0, description="tokens per chunk of the memory-bounded "
                                        "loss; default: sized by the vocabulary and device")
    on_policy_fraction: float = Field(0.0, ge=0, le=1, description="GKD lambda: share of batches whose "
                                      "completions the student samples (jsonl prompt data only)")
    on_policy_max_new_tokens: int = Field(64, gt=0)

    @model_validator(mode="after")
    def _token_kd_only(self):
        if self.method != "kd":
            raise ValueError(f"method {self.method} is for classifiers; a causal LM distils with method kd "
                             "and a divergence")
        if self.standardize or self.terms:
            raise ValueError("standardize and terms are for classifiers: remove them for a causal LM")
        return self
