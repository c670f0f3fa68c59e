"""The report's figures, drawn with matplotlib's Agg backend from a loaded run (no re-training).

Each function takes a ``RunReport`` and returns a Figure; with several seeds, curves are drawn
once per seed, reliability bins are pooled, and bars and points show the mean with ± std.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter  # noqa: E402

from kdistill.evaluate import LMReport  # noqa: E402
from kdistill.report.load import RunReport  # noqa: E402

ROLE_ORDER = ("teacher", "scratch", "distilled")
COLORS = {"teacher": "#444444", "scratch": "#e07b39", "distilled": "#2b6cb0"}
# Step-record keys that are schedules or bookkeeping, not loss terms.
NOT_TERMS = {"step", "epoch", "lr", "temperature", "teacher_entropy", "skipped"}


def _color(name: str, i: int = 0) -> str:
    return COLORS.get(name, f"C{i + 3}")


def _roles(report: RunReport) -> list[str]:
    names = {m.name for run in report.runs for m in run.models}
    return [r for r in ROLE_ORDER if r in names] + sorted(names - set(ROLE_ORDER))


def _smooth(y: np.ndarray) -> np.ndarray:
    """A centred moving average over ~2% of the steps (the raw curve is drawn faintly beside)."""
    w = max(1, len(y) // 50)
    if w == 1:
        return y
    kernel = np.ones(w) / w
    padded = np.pad(y, (w // 2, w - 1 - w // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def _series(steps: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in steps if isinstance(r.get(key), (int, float))]
    if not pts:
        return np.array([]), np.array([])
    x, y = zip(*pts)
    return np.asarray(x, float), np.asarray(y, float)


def _terms(steps: list[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for r in steps:
        for k, v in r.items():
            if k not in NOT_TERMS and not k.endswith("_weight") and isinstance(v, (int, float)) \
                    and not isinstance(v, bool):
                keys[k] = None
    return list(keys)


def _lm(report: RunReport) -> bool:
    return isinstance(report.runs[0].models[0], LMReport)


def learning_curves(report: RunReport) -> Figure:
    """Each loss term per optimizer step, one panel per trained role, and validation accuracy
    (held-out perplexity for causal LMs)."""
    roles = [r for r in _roles(report) if any(r in run.curves for run in report.runs)]
    fig, axes = plt.subplots(1, len(roles) + 1, figsize=(4.2 * (len(roles) + 1), 3.4), squeeze=False)
    axes = axes[0]
    many = len(report.runs) > 1
    for ax, role in zip(axes, roles):
        for run_i, run in enumerate(report.runs):
            if role not in run.curves:
                continue
            steps = run.curves[role].steps
            for i, term in enumerate(_terms(steps)):
                x, y = _series(steps, term)
                if not len(x):
                    continue
                if not many:
                    ax.plot(x, y, color=f"C{i}", alpha=0.25, lw=0.7)
                ax.plot(x, _smooth(y), color=f"C{i}", lw=1.4, alpha=0.7 if many else 1.0,
                        label=term if run_i == 0 else None)
        ax.set_title(f"{role}: loss terms")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("per-sample loss")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[-1]
    key, scale, label = ("val_ppl", 1, "perplexity") if _lm(report) else ("val_accuracy", 100, "accuracy")
    for role in roles:
        for run_i, run in enumerate(report.runs):
            evals = run.curves[role].evals if role in run.curves else []
            pts = [(e["epoch"], scale * e[key]) for e in evals if key in e]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=_color(role), alpha=0.7 if many else 1.0,
                        label=role if run_i == 0 else None)
    ax.set_title(f"validation {label} per epoch")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{label} (%)" if scale == 100 else label)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def schedules(report: RunReport) -> Figure:
    """Temperature, loss weights, learning rate and the teacher's soft-target entropy per step,
    as the distilled run logged them."""
    run = report.runs[0]
    role = "distilled" if "distilled" in run.curves else next(iter(run.curves), None)
    steps = run.curves[role].steps if role else []
    weights = sorted({k for r in steps for k in r if k.endswith("_weight")})
    panels = [("temperature", ["temperature"]), ("loss weights", weights), ("learning rate", ["lr"]),
              ("teacher entropy (nats, at T)", ["teacher_entropy"])]
    panels = [(t, keys) for t, keys in panels if any(len(_series(steps, k)[0]) for k in keys)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4 * max(1, len(panels)), 3.2), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for i, key in enumerate(keys):
            x, y = _series(steps, key)
            ax.plot(x, y if key != "teacher_entropy" else _smooth(y), color=f"C{i}", label=key)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        if len(keys) > 1:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if not panels:
        axes[0][0].text(0.5, 0.5, "no step records", ha="center", va="center")
    fig.suptitle(f"schedules ({role or 'none'} run)", fontsize=10)
    fig.tight_layout()
    return fig


def _pooled_bins(report: RunReport, name: str) -> tuple[list[dict], float]:
    """Reliability bins summed over seeds, and the ECE of the pooled bins."""
    bins = None
    for run in report.runs:
        for m in run.models:
            if m.name != name:
                continue
            if bins is None:
                bins = [{"lower": b["lower"], "upper": b["upper"], "count": 0, "conf": 0.0, "acc": 0.0}
                        for b in m.reliability]
            for pooled, b in zip(bins, m.reliability):
                if b["count"]:
                    pooled["count"] += b["count"]
                    pooled["conf"] += b["count"] * b["confidence"]
                    pooled["acc"] += b["count"] * b["accuracy"]
    bins = bins or []
    total = sum(b["count"] for b in bins) or 1
    ece = sum(abs(b["conf"] - b["acc"]) for b in bins) / total
    return bins, ece


def reliability(report: RunReport) -> Figure:
    """Accuracy against confidence in 15 equal-width bins per model; the diagonal is calibrated."""
    roles = _roles(report)
    fig, axes = plt.subplots(1, len(roles), figsize=(3.6 * len(roles), 3.6), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], roles)):
        bins, ece = _pooled_bins(report, name)
        full = [b for b in bins if b["count"]]
        width = [b["upper"] - b["lower"] for b in full]
        left = [b["lower"] for b in full]
        ax.bar(left, [b["acc"] / b["count"] for b in full], width=width, align="edge",
               color=_color(name, i), alpha=0.8, edgecolor="white", label="accuracy")
        ax.plot([b["conf"] / b["count"] for b in full], [b["acc"] / b["count"] for b in full],
                "k.", ms=4, label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="gray", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}: ECE {ece:.4f}")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def per_class(report: RunReport) -> Figure:
    """Test accuracy within each true class, per model (mean ± std over seeds)."""
    roles = _roles(report)
    names = report.runs[0].class_names
    n = max(len(m.per_class_accuracy) for run in report.runs for m in run.models)
    names = names if len(names) == n else [str(c) for c in range(n)]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * n * len(roles)), 3.6))
    width = 0.8 / len(roles)
    low = 100.0
    for i, name in enumerate(roles):
        per_seed = np.array([[np.nan if v is None else 100 * v for v in m.per_class_accuracy]
                             for run in report.runs for m in run.models if m.name == name], float)
        mean = np.nanmean(per_seed, axis=0)
        std = np.nanstd(per_seed, axis=0, ddof=1) if len(per_seed) > 1 else None
        ax.bar(np.arange(n) + (i - (len(roles) - 1) / 2) * width, mean, width, yerr=std,
               color=_color(name, i), label=name, capsize=2)
        if np.isfinite(mean).any():
            low = min(low, float(np.nanmin(mean)))
    ax.set_xticks(np.arange(n))
    ax.set_xticklabels(names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right" if max(map(len, names)) > 3 else "center")
    ax.set_ylim(max(0.0, math.floor(low - 2)), 100.5)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("per-class test accuracy")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _scatter(report: RunReport, key: str, scale: float, xlabel: str, title: str, *, y_key: str = "accuracy",
             y_scale: float = 100, ylabel: str = "test accuracy (%)") -> Figure:
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    xs = []
    for i, name in enumerate(_roles(report)):
        ms = [m for run in report.runs for m in run.models if m.name == name]
        x = np.array([getattr(m, key) * scale for m in ms], float)
        y = np.array([y_scale * getattr(m, y_key) for m in ms], float)
        if not np.isfinite(x).all():
            continue
        yerr = y.std(ddof=1) if len(y) > 1 else None
        ax.errorbar(x.mean(), y.mean(), yerr=yerr, fmt="o", ms=8, color=_color(name, i), capsize=3)
        ax.annotate(name, (x.mean(), y.mean()), textcoords="offset points", xytext=(6, 6))
        xs.append(x.mean())
    if xs and max(xs) / max(min(xs), 1e-12) > 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.ticklabel_format(axis="x", useOffset=False)
    if not xs:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.margins(0.2)
    fig.tight_layout()
    return fig


def accuracy_vs_size(report: RunReport) -> Figure:
    return _scatter(report, "size_bytes", 1e-6, "weights file size (MB)", "accuracy vs size")


def accuracy_vs_latency(report: RunReport) -> Figure:
    return _scatter(report, "latency_ms_b1", 1.0, "CPU latency per sample at batch 1, median (ms)",
                    "accuracy vs latency")


def ppl_vs_size(report: RunReport) -> Figure:
    return _scatter(report, "size_bytes", 1e-6, "weights file size (MB)", "held-out perplexity vs size",
                    y_key="ppl", y_scale=1, ylabel="held-out perplexity (lower is better)")


# (id, caption, figure function): the report shows them in this order.
FIGURES = [
    ("learning-curves", "Learning curves: each loss term per optimizer step (raw, faint, and "
     "smoothed), and validation accuracy per epoch.", learning_curves),
    ("schedules", "Temperature, loss weights, learning rate and the teacher's soft-target entropy "
     "at the step's temperature, per optimizer step.", schedules),
    ("reliability", "Reliability diagrams (15 equal-width confidence bins): bars on the diagonal "
     "are perfectly calibrated; below it, over-confident.", reliability),
    ("per-class", "Per-class test accuracy of the teacher and the students.", per_class),
    ("accuracy-vs-size", "Test accuracy against the size of the weights file.", accuracy_vs_size),
    ("accuracy-vs-latency", "Test accuracy against CPU latency per sample at batch 1.", accuracy_vs_latency),
]
# a causal-LM run has no classes, calibration bins or batch-1 latency: those plots are left out
LM_FIGURES = [
    FIGURES[0][:1] + ("Learning curves: each loss term per optimizer step (raw, faint, and smoothed), "
                      "and held-out perplexity per epoch.", learning_curves),
    FIGURES[1],
    ("ppl-vs-size", "Held-out perplexity against the size of the weights file.", ppl_vs_size),
]


def figures_for(report: RunReport) -> list:
    """The figures that fit the run's kind of model."""
    return LM_FIGURES if _lm(report) else FIGURES
