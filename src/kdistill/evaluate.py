"""Evaluation: teacher vs student-from-scratch vs distilled student on the same held-out data."""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import save as save_bytes
from torch import nn

from kdistill.models import count_parameters


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE: the bin-weighted gap between confidence and accuracy over equal-width bins."""
    conf, pred = probs.max(-1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if inside.any():
            ece += inside.float().mean().item() * abs(conf[inside].mean().item() - correct[inside].mean().item())
    return ece


def agreement(logits: torch.Tensor, reference_logits: torch.Tensor) -> float:
    """Fraction of samples whose top-1 class matches the reference model's."""
    return (logits.argmax(-1) == reference_logits.argmax(-1)).float().mean().item()


def kl_to(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean KL(reference || model) at temperature 1, in nats."""
    ref = F.log_softmax(reference_logits.double(), -1)
    return (ref.exp() * (ref - F.log_softmax(logits.double(), -1))).sum(-1).mean().item()


def model_bytes(model: nn.Module) -> int:
    """Size of the model's weights as a safetensors file."""
    return len(save_bytes({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))


@torch.inference_mode()
def latency_ms(model: nn.Module, sample: torch.Tensor | dict, repeats: int = 50) -> float:
    """Median CPU latency of one forward pass at batch 1, in milliseconds (a dict sample is
    passed as keyword inputs, e.g. input_ids and attention_mask)."""
    model.eval()
    run = (lambda: model(**sample)) if isinstance(sample, dict) else (lambda: model(sample[:1]))
    for _ in range(5):
        run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3


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


def compare(models: dict[str, nn.Module], task, batches, *, teacher: str | None = "teacher",
            timing_sample: torch.Tensor | None = None,
            timing_samples: dict | None = None) -> list[ModelReport]:
    """Evaluate each model on the same batches; agreement and KL are against ``teacher``.

    For models that read different inputs of the same samples (e.g. each its own tokenization),
    ``task`` may be a dict of tasks by model name and ``timing_samples`` one sample per model."""
    tasks = task if isinstance(task, dict) else dict.fromkeys(models, task)
    samples = timing_samples or dict.fromkeys(models, timing_sample)
    outputs = {name: tasks[name].predict(model, batches) for name, model in models.items()}
    ref = outputs[teacher][0] if teacher in outputs else None
    rows = []
    for name, model in models.items():
        logits, labels = outputs[name]
        wrong = int((logits.argmax(-1) != labels).sum())
        rows.append(ModelReport(
            name=name, accuracy=1 - wrong / len(labels), errors=wrong,
            nll=float(F.cross_entropy(logits, labels)),
            ece=expected_calibration_error(logits.softmax(-1), labels),
            agreement=agreement(logits, ref) if ref is not None else None,
            kl_to_teacher=kl_to(ref, logits) if ref is not None else None,
            parameters=count_parameters(model), size_bytes=model_bytes(model),
            latency_ms_b1=latency_ms(model, samples[name]) if samples[name] is not None else float("nan"),
        ))
    return rows


def format_table(rows: list[ModelReport], title: str = "") -> str:
    """The comparison as a plain-text table (what the CLI prints)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None)
    for col in ["model", "accuracy", "test errors", "NLL", "ECE", "agree w/ teacher",
                "KL to teacher", "params", "size", "latency b1"]:
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(
            r.name, f"{100 * r.accuracy:.2f}%", str(r.errors), f"{r.nll:.4f}", f"{r.ece:.4f}",
            "-" if r.agreement is None else f"{100 * r.agreement:.2f}%",
            "-" if r.kl_to_teacher is None else f"{r.kl_to_teacher:.4f}",
            f"{r.parameters:,}", f"{r.size_bytes / 1e6:.2f} MB", f"{r.latency_ms_b1:.3f} ms")
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def rows_as_dicts(rows: list[ModelReport]) -> list[dict]:
    return [asdict(r) for r in rows]
