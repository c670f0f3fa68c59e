"""How comparisons are shown, the same in the CLI and the HTML report: the table's columns and
cells (classifier rows or causal-LM rows, single runs or mean ± std over seeds) and the verdict."""

from __future__ import annotations

import io
import math
from dataclasses import asdict

# (header, field, kind): shared by the CLI table and the HTML report.
COLUMNS = [
    ("model", "name", "text"), ("accuracy", "accuracy", "pct"), ("top-5", "top5_accuracy", "pct"),
    ("test errors", "errors", "int"), ("NLL", "nll", "float"), ("ECE", "ece", "float"),
    ("agree w/ teacher", "agreement", "pct"), ("KL to teacher", "kl_to_teacher", "float"),
    ("params", "parameters", "int"), ("size", "size_bytes", "mb"),
    ("latency b1", "latency_ms_b1", "ms"), ("p95", "latency_ms_b1_p95", "ms"),
    ("throughput", "throughput_per_s", "rate"),
]
# causal LMs (``LMReport`` rows): held-out perplexity first
LM_COLUMNS = [
    ("model", "name", "text"), ("held-out ppl", "ppl", "float2"), ("NLL", "nll", "float"),
    ("agree w/ teacher", "agreement", "pct"), ("KL to teacher", "kl_to_teacher", "float"),
    ("params", "parameters", "int"), ("size", "size_bytes", "mb"), ("tokens/s", "tokens_per_s", "rate"),
]


# kind -> (scale, decimals, unit)
_FORMATS = {"pct": (100, 2, "%"), "int": (1, 0, ""), "float": (1, 4, ""), "float2": (1, 2, ""), "mb": (1e-6, 3, " MB"),
            "ms": (1, 3, " ms"), "rate": (1, 0, "/s")}


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


def _dicts(rows: list) -> list[dict]:
    """Report rows (``ModelReport`` / ``LMReport``) or their mean ± std aggregates, as dicts."""
    return [r if isinstance(r, dict) else asdict(r) for r in rows]


def is_lm(row: dict) -> bool:
    """A causal-LM row (an ``LMReport`` or its aggregate): judged by perplexity, not accuracy."""
    return "ppl" in row


def table_cells(rows: list) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells, dropping columns that are empty for every model."""
    dicts = _dicts(rows)
    columns = LM_COLUMNS if dicts and is_lm(dicts[0]) else COLUMNS
    cols = [c for c in columns if c[2] == "text" or any(format_cell(c[2], d.get(c[1])) != "-" for d in dicts)]
    return [c[0] for c in cols], [[format_cell(kind, d.get(key)) for _, key, kind in cols] for d in dicts]


def verdict(rows: list) -> tuple[bool | None, str]:
    """Did distillation pay? (held, one sentence): the distilled student against the same
    architecture trained from scratch, and against the teacher. ``held`` is None without both
    students. Over seeds it compares means and says whether the gap exceeds the spread."""
    dicts = {d["name"]: d for d in _dicts(rows)}
    metric = "ppl" if dicts and is_lm(next(iter(dicts.values()))) else "accuracy"

    def acc(name):
        a = dicts[name][metric]
        return (a["mean"], a["std"]) if isinstance(a, dict) else (a, 0.0)

    if "distilled" not in dicts or "scratch" not in dicts:
        return None, "Needs both a scratch and a distilled student to judge distillation."
    if metric == "ppl":
        return _lm_verdict(dicts, acc)
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


def _lm_verdict(dicts: dict, ppl) -> tuple[bool, str]:
    """The causal-LM verdict: held-out perplexity, lower is better."""
    (d, d_std), (s, s_std) = ppl("distilled"), ppl("scratch")
    held = d < s
    text = (f"The distilled student reaches held-out perplexity {d:.2f} against {s:.2f} for the same "
            f"architecture trained from scratch: distillation {'paid' if held else 'did not pay'}")
    if d_std or s_std:
        text += (" (the gap is larger than the two seed spreads combined)"
                 if abs(d - s) > d_std + s_std else " (but the gap is within the seed spread)")
    if "teacher" in dicts:
        t, _ = ppl("teacher")
        text += f". The teacher's perplexity is {t:.2f}"
        if d <= t:
            text += "; the distilled student matches or beats it"
        elif held:
            text += f"; the distilled student closes {100 * (s - d) / (s - t):.0f}% of the scratch-to-teacher gap"
        else:
            text += "; the distilled student closes none of the scratch-to-teacher gap"
    return held, text + "."


def format_table(rows: list, title: str = "", with_verdict: bool = True) -> str:
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
