"""Evaluation: teacher vs student-from-scratch vs distilled student on the same held-out data.

Metric functions are pure (tensors in, numbers out) and tested against hand-computed values;
``compare`` runs them over models, and ``aggregate_rows`` summarises several seeds as
mean ± std (sample std, ddof=1) of the last-epoch models.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save as save_bytes
from torch import nn

from kdistill.models import count_parameters

ECE_BINS = 15


# ---------------------------------------------------------------- metric functions
def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).double().mean().item()


def top_k_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> float:
    """Fraction of samples whose label is among the k highest logits."""
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
    return (top == labels[:, None]).any(-1).double().mean().item()


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the labels, in nats."""
    return F.cross_entropy(logits.double(), labels).item()


def reliability_curve(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> list[dict]:
    """Equal-width confidence bins ``(lo, hi]`` (the first also holds 0): per bin the sample
    count, mean confidence and accuracy (None where empty). The reliability diagram's data."""
    conf, pred = probs.double().max(-1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(conf, edges[1:-1], right=False)
    curve = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        curve.append({"lower": edges[b].item(), "upper": edges[b + 1].item(), "count": n,
                      "confidence": conf[inside].mean().item() if n else None,
                      "accuracy": correct[inside].mean().item() if n else None})
    return curve


def ece_from_curve(curve: list[dict]) -> float:
    """The bin-weighted gap between confidence and accuracy."""
    total = sum(b["count"] for b in curve)
    return sum(b["count"] / total * abs(b["confidence"] - b["accuracy"]) for b in curve if b["count"])


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width confidence bins (15 by default, as in Guo et al. 2017)."""
    return ece_from_curve(reliability_curve(probs, labels, bins))


def agreement(logits: torch.Tensor, reference_logits: torch.Tensor) -> float:
    """Fraction of samples whose top-1 class matches the reference model's."""
    return (logits.argmax(-1) == reference_logits.argmax(-1)).double().mean().item()


def kl_to(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean KL(reference || model) at temperature 1, in nats."""
    ref = F.log_softmax(reference_logits.double(), -1)
    return (ref.exp() * (ref - F.log_softmax(logits.double(), -1))).sum(-1).mean().item()


def entropy_sum(logits: torch.Tensor, temperature: float = 1.0, max_elements: int | None = None) -> torch.Tensor:
    """Summed entropy (nats) of softmax(logits / T) over every row: the engine logs the teacher's
    soft-target entropy with it (how soft the targets the student sees are). With
    ``max_elements``, a larger input is estimated from evenly spaced rows holding at most that
    many logits (scaled to the full count), so a diagnostic never costs another pass over every
    token's vocabulary (at 49k classes, 2**20 elements are 21 rows)."""
    rows = logits.detach().reshape(-1, logits.shape[-1])
    max_rows = None if max_elements is None else max(1, max_elements // rows.shape[-1])
    scale = 1.0
    if max_rows is not None and rows.shape[0] > max_rows:
        scale = rows.shape[0] / max_rows
        rows = rows[torch.linspace(0, rows.shape[0] - 1, max_rows, device=rows.device).long()]
    logp = F.log_softmax(rows.float() / temperature, -1)
    return -(logp.exp() * logp).sum() * scale


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy within each true class (None for a class absent from the split)."""
    correct = (logits.argmax(-1) == labels).double()
    counts = torch.bincount(labels, minlength=num_classes).double()
    hits = torch.bincount(labels, weights=correct, minlength=num_classes)
    return [(h / c).item() if c else None for h, c in zip(hits, counts)]


# ---------------------------------------------------------------- size and speed
def model_bytes(model: nn.Module) -> int:
    """Size of the model's weights as a safetensors file."""
    return len(save_bytes({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 3,
               budget_s: float | None = None, min_repeats: int = 3) -> list[float]:
    """Wall-clock seconds of up to ``repeats`` calls of ``fn`` after ``warmup`` untimed calls;
    with ``budget_s``, stops once that much time is spent and ``min_repeats`` calls are timed
    (a big model on a slow machine then costs seconds, not minutes)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if budget_s is not None and len(times) >= min_repeats and time.perf_counter() - start > budget_s:
            break
    return times


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics."""
    return torch.quantile(torch.tensor(values, dtype=torch.float64), q / 100).item()


def _rows(sample: torch.Tensor | dict, n: int) -> torch.Tensor | dict:
    """The first ``n`` rows of a tensor, or of each tensor of keyword inputs."""
    return {k: v[:n] for k, v in sample.items()} if isinstance(sample, dict) else sample[:n]


def _caller(model: nn.Module, inputs: torch.Tensor | dict) -> Callable[[], object]:
    return (lambda: model(**inputs)) if isinstance(inputs, dict) else (lambda: model(inputs))


@torch.inference_mode()
def latency_ms(model: nn.Module, sample: torch.Tensor | dict, repeats: int = 100,
               budget_s: float = 2.0) -> tuple[float, float]:
    """CPU latency of one forward pass at batch 1, in milliseconds: (median, p95) of up to
    ``repeats`` passes (fewer, at least 3, when they take over ``budget_s``). A dict sample is
    passed as keyword inputs (e.g. input_ids and attention_mask)."""
    model.eval()
    times = time_calls(_caller(model, _rows(sample, 1)), repeats, warmup=5, budget_s=budget_s)
    return statistics.median(times) * 1e3, percentile(times, 95) * 1e3


@torch.inference_mode()
def throughput(model: nn.Module, inputs: torch.Tensor | dict, repeats: int = 10, budget_s: float = 2.0) -> float:
    """Samples per second at batch ``len(inputs)``: the median of up to ``repeats`` timed passes
    (fewer, at least 3, when they take over ``budget_s``)."""
    model.eval()
    n = len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)
    times = time_calls(_caller(model, inputs), repeats, warmup=1, budget_s=budget_s)
    return n / statistics.median(times)


# ---------------------------------------------------------------- comparison
@dataclass
class ModelReport:
    name: str
    accuracy: float
    errors: int
    nll: float
    ece: float
    agreement: float | None
    kl_to_teacher: float | None
    parameters: int
    size_bytes: int
    latency_ms_b1: float
    latency_ms_b1_p95: float = math.nan
    throughput_per_s: float = math.nan
    throughput_batch: int = 0
    top5_accuracy: float | None = None
    samples: int = 0
    per_class_accuracy: list[float | None] = field(default_factory=list)
    reliability: list[dict] = field(default_factory=list)


@dataclass
class LMReport:
    """A causal LM on held-out text: per-token perplexity, agreement with and KL to the teacher,
    size, and forward tokens per second."""

    name: str
    ppl: float
    nll: float
    agreement: float | None
    kl_to_teacher: float | None
    parameters: int
    size_bytes: int
    tokens_per_s: float
    tokens: int = 0
    eval_seconds: float = math.nan
    exact_match: float | None = None


def compare(models: dict[str, nn.Module], task, batches, *, teacher: str | None = "teacher",
            timing_sample: torch.Tensor | None = None, throughput_batch: int = 1000,
            latency_repeats: int = 100, throughput_repeats: int = 10,
            timing_samples: dict | None = None) -> list[ModelReport]:
    """Evaluate each model on the same batches; agreement and KL are against ``teacher``.

    ``timing_sample``: inputs for the CPU timings, its first row for latency at batch 1 and up to
    ``throughput_batch`` rows for throughput (no timing when None). For models that read
    different inputs of the same samples (e.g. each its own tokenization), ``task`` may be a dict
    of tasks by model name and ``timing_samples`` the timing inputs per model.
    """
    tasks = task if isinstance(task, dict) else dict.fromkeys(models, task)
    samples = timing_samples or dict.fromkeys(models, timing_sample)
    outputs = {name: tasks[name].predict(model, batches) for name, model in models.items()}
    ref = outputs[teacher][0] if teacher in outputs else None
    rows = []
    for name, model in models.items():
        logits, labels = outputs[name]
        num_classes = logits.shape[-1]
        lat = p95 = rate = math.nan
        timed = samples[name]
        if timed is not None:
            lat, p95 = latency_ms(model, timed, latency_repeats)
            timed = _rows(timed, throughput_batch)
            rate = throughput(model, timed, throughput_repeats)
        curve = reliability_curve(logits.softmax(-1), labels)
        rows.append(ModelReport(
            name=name, accuracy=accuracy(logits, labels),
            errors=int((logits.argmax(-1) != labels).sum()), nll=nll(logits, labels),
            ece=ece_from_curve(curve),
            agreement=agreement(logits, ref) if ref is not None else None,
            kl_to_teacher=kl_to(ref, logits) if ref is not None else None,
            parameters=count_parameters(model), size_bytes=model_bytes(model),
            latency_ms_b1=lat, latency_ms_b1_p95=p95, throughput_per_s=rate,
            throughput_batch=0 if timed is None else len(next(iter(timed.values())) if isinstance(timed, dict) else timed),
            top5_accuracy=top_k_accuracy(logits, labels, 5) if num_classes > 10 else None,
            samples=len(labels), per_class_accuracy=per_class_accuracy(logits, labels, num_classes),
            reliability=curve,
        ))
    return rows


def rows_as_dicts(rows: list[ModelReport]) -> list[dict]:
    return [asdict(r) for r in rows]


# Scalar metrics summarised over seeds (the per-bin and per-class lists are pooled by the report).
SCALARS = ("accuracy", "top5_accuracy", "errors", "nll", "ece", "agreement", "kl_to_teacher",
           "parameters", "size_bytes", "latency_ms_b1", "latency_ms_b1_p95", "throughput_per_s")


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) with the values."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "values": values}


def aggregate_rows(runs: list[list]) -> list[dict]:
    """Per model (in the first run's order): each scalar metric as mean ± std over the runs
    (classifier ``ModelReport`` rows or causal-LM ``LMReport`` rows)."""
    out = []
    for first in runs[0]:
        same = [r for run in runs for r in run if r.name == first.name]
        row = {"name": first.name, "runs": len(same)}
        scalars = SCALARS if isinstance(first, ModelReport) else [
            k for k, v in asdict(first).items() if k != "name" and (v is None or isinstance(v, (int, float)))]
        for key in scalars:
            values = [getattr(r, key) for r in same]
            row[key] = None if any(v is None for v in values) else mean_std([float(v) for v in values])
        out.append(row)
    return out
