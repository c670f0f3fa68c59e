"""Evaluation: teacher vs student-from-scratch vs distilled student on the same held-out data.

Metric functions are pure (tensors in, numbers out) and tested against hand-computed values;
``compare`` runs them over models, and ``aggregate_rows`` summarises several seeds as
mean ± std (sample std, ddof=1) of the last-epoch models.
"""

from __future__ import annotations

import io
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, is_dataclass
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
    exact_match: float | None = None          # greedy answers the checker accepts (config `reasoning:`)
    exact_match_hard: float | None = None     # the same on the harder split
    pass_at_k: float | None = None            # k of reasoning.pass_k, from reasoning.samples answers
    reasoning_tokens: float | None = None     # mean length of the greedy answers, tokens
    generate_tokens_per_s: float | None = None


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


# ---------------------------------------------------------------- presentation
# (header, field, kind): shared by the CLI table and the HTML report.
COLUMNS = [
    ("model", "name", "text"), ("accuracy", "accuracy", "pct"), ("top-5", "top5_accuracy", "pct"),
    ("test errors", "errors", "int"), ("ppl", "ppl", "float"), ("NLL", "nll", "float"), ("ECE", "ece", "float"),
    ("agree w/ teacher", "agreement", "pct"), ("KL to teacher", "kl_to_teacher", "float"),
    ("params", "parameters", "int"), ("size", "size_bytes", "mb"),
    ("latency b1", "latency_ms_b1", "ms"), ("p95", "latency_ms_b1_p95", "ms"),
    ("throughput", "throughput_per_s", "rate"),
    ("exact match", "exact_match", "pct"), ("exact match (hard)", "exact_match_hard", "pct"),
    ("pass@k", "pass_at_k", "pct"), ("answer tokens", "reasoning_tokens", "len"),
    ("generate", "generate_tokens_per_s", "rate"),
]


# kind -> (scale, decimals, unit)
_FORMATS = {"pct": (100, 2, "%"), "int": (1, 0, ""), "float": (1, 4, ""), "mb": (1e-6, 3, " MB"),
            "ms": (1, 3, " ms"), "rate": (1, 0, "/s"),
            "len": (1, 1, "")}


def format_cell(kind: str, value) -> str:
    """One table cell: a number, a ``{"mean", "std"}`` summary (shown as mean ± std; the ± is
    dropped where every seed gave the same value), or None ("-")."""
    if kind == "text":
        return str(value)
    if isinstance(value, dict):
        value, std = value["mean"], value["std"]
    else:
        std = 0.0
    if value is None or math.isnan(value):
        return "-"
    scale, decimals, unit = _FORMATS[kind]
    if std:
        decimals = max(decimals, 1)
        return f"{value * scale:,.{decimals}f} ± {std * scale:,.{decimals}f}{unit}"
    return f"{value * scale:,.{decimals}f}{unit}"


def table_cells(rows: list[ModelReport] | list[dict]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells, dropping columns that are empty for every model."""
    dicts = [asdict(r) if is_dataclass(r) else r for r in rows]
    cols = [c for c in COLUMNS if c[2] == "text" or any(format_cell(c[2], d.get(c[1])) != "-" for d in dicts)]
    return [c[0] for c in cols], [[format_cell(kind, d.get(key)) for _, key, kind in cols] for d in dicts]


def verdict(rows: list[ModelReport] | list[dict]) -> tuple[bool | None, str]:
    """Did distillation pay? (held, one sentence): the distilled student against the same
    architecture trained from scratch, and against the teacher. ``held`` is None without both
    students. Over seeds it compares means and says whether the gap exceeds the spread."""
    dicts = {d["name"]: d for d in (asdict(r) if is_dataclass(r) else r for r in rows)}
    if any("accuracy" not in d for d in dicts.values()):
        return None, ""  # causal-LM rows: no single accuracy to judge by

    def acc(name):
        a = dicts[name]["accuracy"]
        return (a["mean"], a["std"]) if isinstance(a, dict) else (a, 0.0)

    if "distilled" not in dicts or "scratch" not in dicts:
        return None, "Needs both a scratch and a distilled student to judge distillation."
    (d, d_std), (s, s_std) = acc("distilled"), acc("scratch")
    gain = 100 * (d - s)
    held = d > s
    text = (f"The distilled student reaches {100 * d:.2f}% against {100 * s:.2f}% for the same "
            f"architecture trained from scratch ({gain:+.2f} points): distillation "
            f"{'paid' if held else 'did not pay'}")
    if d_std or s_std:
        text += (" (the gap is larger than the two seed spreads combined)"
                 if abs(d - s) > d_std + s_std else " (but the gap is within the seed spread)")
    text += "."
    if "teacher" in dicts:
        t, _ = acc("teacher")
        text += f" The teacher reaches {100 * t:.2f}%"
        if d >= t:
            text += "; the distilled student matches or beats it"
        elif d > s:
            text += f"; the distilled student closes {100 * (d - s) / (t - s):.0f}% of the scratch-to-teacher gap"
        else:
            text += "; the distilled student closes none of the scratch-to-teacher gap"
        tp, dp = dicts["teacher"]["parameters"], dicts["distilled"]["parameters"]
        tp, dp = (tp["mean"], dp["mean"]) if isinstance(tp, dict) else (tp, dp)
        text += f" with {tp / dp:.1f}x fewer parameters." if dp else "."
    return held, text


def format_table(rows: list[ModelReport] | list[dict], title: str = "", with_verdict: bool = True) -> str:
    """The comparison as a plain-text table (what the CLI prints), with the verdict below unless
    the caller judges the rows itself (e.g. per-seed rows that the verdict cannot pair up)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None)
    headers, cells = table_cells(rows)
    for col in headers:
        table.add_column(col, justify="left" if col == "model" else "right")
    for line in cells:
        table.add_row(*line)
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    if with_verdict:
        console.print(verdict(rows)[1])
    return console.export_text()
