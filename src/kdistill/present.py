"""Presentation: the comparison table and the verdict, for the CLI and the HTML report alike.

A row is a ``ModelReport`` (or any dataclass) or a dict of metrics, one value each or, over seeds,
``{"mean", "std"}`` summaries (``kdistill.evaluate.aggregate_rows``). The table shows the columns
whose metric some row has, so the same code renders classifier rows (accuracy, errors, ECE, ...)
and causal-LM rows (held-out perplexity, agreement, KL, tokens/s, exact match when present).
"""

from __future__ import annotations

import dataclasses
import io
import math

# (header, field, kind), in display order; a column no row fills is dropped.
COLUMNS = [
    ("model", "name", "text"), ("accuracy", "accuracy", "pct"), ("top-5", "top5_accuracy", "pct"),
    ("test errors", "errors", "int"), ("held-out ppl", "ppl", "float2"), ("NLL", "nll", "float"),
    ("ECE", "ece", "float"), ("agree w/ teacher", "agreement", "pct"),
    ("KL to teacher", "kl_to_teacher", "float"), ("exact match", "exact_match", "pct"),
    ("exact match (hard)", "exact_match_hard", "pct"), ("pass@k", "pass_at_k", "pct"),
    ("answer tokens", "reasoning_tokens", "len"), ("generate", "generate_tokens_per_s", "rate"),
    ("params", "parameters", "int"), ("size", "size_bytes", "mb"),
    ("latency b1", "latency_ms_b1", "ms"), ("p95", "latency_ms_b1_p95", "ms"),
    ("throughput", "throughput_per_s", "rate"), ("tokens/s", "tokens_per_s", "rate"),
    ("tokens", "tokens", "int"),
]

# kind -> (scale, decimals, unit)
_FORMATS = {"pct": (100, 2, "%"), "int": (1, 0, ""), "float": (1, 4, ""), "float2": (1, 2, ""),
            "mb": (1e-6, 3, " MB"), "ms": (1, 3, " ms"), "rate": (1, 0, "/s"), "len": (1, 1, "")}


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


def as_dict(row) -> dict:
    """A row as a dict with its model's name under ``name`` (LM rows used to say ``model``)."""
    d = dataclasses.asdict(row) if dataclasses.is_dataclass(row) else dict(row)
    if "name" not in d and "model" in d:
        d["name"] = d["model"]
    return d


def table_cells(rows) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells, dropping columns that are empty for every model."""
    dicts = [as_dict(r) for r in rows]
    cols = [c for c in COLUMNS if c[2] == "text" or any(format_cell(c[2], d.get(c[1])) != "-" for d in dicts)]
    return [c[0] for c in cols], [[format_cell(kind, d.get(key)) for _, key, kind in cols] for d in dicts]


def _mean_std(value) -> tuple[float, float]:
    return (value["mean"], value["std"]) if isinstance(value, dict) else (value, 0.0)


def _spread(gap: float, a_std: float, b_std: float) -> str:
    if not (a_std or b_std):
        return ""
    return (" (the gap is larger than the two seed spreads combined)" if abs(gap) > a_std + b_std
            else " (but the gap is within the seed spread)")


def _fewer_parameters(dicts: dict) -> str:
    tp, dp = _mean_std(dicts["teacher"]["parameters"])[0], _mean_std(dicts["distilled"]["parameters"])[0]
    return f" with {tp / dp:.1f}x fewer parameters." if dp else "."


def verdict(rows) -> tuple[bool | None, str]:
    """Did distillation pay? (held, one sentence): the distilled student against the same
    architecture trained from scratch (on accuracy for classifiers, held-out perplexity for
    language models), and against the teacher. ``held`` is None without both students. Over
    seeds it compares means and says whether the gap exceeds the spread."""
    dicts = {d["name"]: d for d in map(as_dict, rows)}
    if "distilled" not in dicts or "scratch" not in dicts:
        return None, "Needs both a scratch and a distilled student to judge distillation."
    if dicts["distilled"].get("accuracy") is None and dicts["distilled"].get("ppl") is not None:
        return _lm_verdict(dicts)
    acc = lambda name: _mean_std(dicts[name]["accuracy"])
    (d, d_std), (s, s_std) = acc("distilled"), acc("scratch")
    held = d > s
    text = (f"The distilled student reaches {100 * d:.2f}% against {100 * s:.2f}% for the same "
            f"architecture trained from scratch ({100 * (d - s):+.2f} points): distillation "
            f"{'paid' if held else 'did not pay'}{_spread(d - s, d_std, s_std)}.")
    if "teacher" in dicts:
        t, _ = acc("teacher")
        text += f" The teacher reaches {100 * t:.2f}%"
        if d >= t:
            text += "; the distilled student matches or beats it"
        elif d > s:
            text += f"; the distilled student closes {100 * (d - s) / (t - s):.0f}% of the scratch-to-teacher gap"
        else:
            text += "; the distilled student closes none of the scratch-to-teacher gap"
        text += _fewer_parameters(dicts)
    return held, text


def _lm_verdict(dicts: dict) -> tuple[bool, str]:
    """Language models: lower held-out perplexity than the scratch student is what pays; the
    agreement with the teacher's next-token choices is said beside it."""
    ppl = lambda name: _mean_std(dicts[name]["ppl"])
    (d, d_std), (s, s_std) = ppl("distilled"), ppl("scratch")
    held = d < s
    text = (f"The distilled student reaches held-out perplexity {d:.2f} against {s:.2f} for the same "
            f"architecture trained from scratch ({d - s:+.2f}): distillation "
            f"{'paid' if held else 'did not pay'}{_spread(d - s, d_std, s_std)}.")
    if dicts["distilled"].get("agreement") is not None and dicts["scratch"].get("agreement") is not None:
        da, sa = _mean_std(dicts["distilled"]["agreement"])[0], _mean_std(dicts["scratch"]["agreement"])[0]
        text += (f" It agrees with the teacher's next token on {100 * da:.2f}% of held-out tokens "
                 f"against {100 * sa:.2f}% for scratch.")
    if "teacher" in dicts and dicts["teacher"].get("ppl") is not None:
        text += f" The teacher's perplexity is {ppl('teacher')[0]:.2f}"
        text += _fewer_parameters(dicts) if dicts["teacher"].get("parameters") is not None else "."
    return held, text


def _render(table, lines: list[str], width: int) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    for line in lines:
        console.print(line)
    return console.export_text()


def format_table(rows, title: str = "", with_verdict: bool = True) -> str:
    """The comparison as a plain-text table (what the CLI prints), with the verdict below unless
    the caller judges the rows itself (e.g. per-seed rows that the verdict cannot pair up)."""
    from rich.table import Table

    table = Table(title=title or None)
    headers, cells = table_cells(rows)
    for col in headers:
        table.add_column(col, justify="left" if col == "model" else "right")
    for line in cells:
        table.add_row(*line)
    return _render(table, [verdict(rows)[1]] if with_verdict else [], 200)


def format_export_rows(report: dict) -> str:
    """An export report (kdistill.export) as a plain-text table, with its parity lines."""
    from rich.table import Table

    table = Table(title=f"export of {report['model']}")
    large = (report.get("timing") or {}).get("batch_size_large", "")
    for col in ["variant", "runtime", "size", "accuracy", "b1 median", "b1 p95", f"throughput b{large}"]:
        table.add_column(col, justify="left" if col in ("variant", "runtime") else "right")
    ms = lambda v: "-" if v is None else f"{v:.3f} ms"
    for r in report["rows"]:
        table.add_row(r["name"], f"{r['runtime']} {r['precision']}", f"{r['size_bytes'] / 1e3:,.1f} kB",
                      "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%",
                      ms(r["latency_ms_b1_median"]), ms(r["latency_ms_b1_p95"]),
                      "-" if r["throughput_per_s"] is None else f"{r['throughput_per_s']:,.0f}/s")
    lines = []
    for k, p in report["parity"].items():
        acc = "" if p["accuracy_delta_points"] is None else f", accuracy delta {p['accuracy_delta_points']:+.2f} points"
        lines.append(f"parity {k}: max |logit diff| {p['max_abs_diff']:.2e}, top-1 agreement "
                     f"{100 * p['top1_agreement']:.2f}%{acc}")
    console_text = _render(table, [], 140)
    return console_text + "\n".join(lines)
