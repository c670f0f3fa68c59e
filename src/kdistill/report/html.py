"""One HTML file per run: the comparison table, the verdict and every plot inline (base64 PNG),
no script and nothing fetched, so it opens offline and can be mailed as it is."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from pathlib import Path

from kdistill.checkpoint import atomic_write_text
from kdistill.evaluate import LMReport, aggregate_rows
from kdistill.present import table_cells, verdict
from kdistill.report.load import RunReport, load_run

REPORT = "report.html"

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #1a202c; }
h1 { margin-bottom: 0.1em; } .meta { color: #4a5568; margin-top: 0; }
table { border-collapse: collapse; margin: 1em 0; font-variant-numeric: tabular-nums; }
th, td { padding: 0.35em 0.6em; border-bottom: 1px solid #e2e8f0; text-align: right; }
td { white-space: nowrap; } .scroll { overflow-x: auto; }
th:first-child, td:first-child { text-align: left; } th { background: #f7fafc; }
.verdict { padding: 0.7em 1em; border-radius: 6px; border-left: 5px solid; }
.held { background: #f0fff4; border-color: #38a169; } .missed { background: #fff5f5; border-color: #e53e3e; }
.unknown { background: #f7fafc; border-color: #a0aec0; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; }
figcaption { color: #4a5568; font-size: 0.9em; }
pre { background: #f7fafc; padding: 1em; overflow-x: auto; } dt { font-weight: 600; }
"""

GLOSSARY = [
    ("accuracy / top-5", "fraction of test samples whose label is the top class (top-5: among the "
     "five highest, shown when there are more than 10 classes)."),
    ("test errors", "misclassified test samples."),
    ("NLL", "mean negative log-likelihood of the true labels (nats); lower is better."),
    ("ECE", "expected calibration error: the sample-weighted gap between confidence and accuracy "
     "over 15 equal-width confidence bins; 0 is perfectly calibrated."),
    ("agree w/ teacher", "fraction of test samples whose top-1 class matches the teacher's."),
    ("KL to teacher", "mean KL(teacher || model) at temperature 1, in nats."),
    ("params / size", "parameter count; size of the weights as a safetensors file."),
    ("latency / throughput", "CPU wall time of one forward pass at batch 1 (median and 95th "
     "percentile of repeats) and samples per second at a large batch (median of repeats), "
     "measured on the machine that ran the evaluation, under its load at the time."),
]


LM_GLOSSARY = [
    ("held-out ppl", "perplexity: exp of the mean negative log-likelihood per target token on the "
     "held-out blocks; lower is better."),
    ("NLL", "mean negative log-likelihood per held-out target token (nats)."),
    ("agree w/ teacher", "fraction of held-out target tokens whose top-1 next token matches the teacher's."),
    ("KL to teacher", "mean KL(teacher || model) per held-out target token at temperature 1, in nats."),
    ("params / size", "parameter count; size of the weights as a safetensors file."),
    ("tokens/s", "forward-pass tokens per second on one held-out batch, measured on the machine "
     "that ran the evaluation, under its load at the time."),
]


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table(rows) -> str:
    headers, cells = table_cells(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in cells)
    return f'<table id="comparison"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render(report: RunReport) -> str:
    """The report's HTML text."""
    from kdistill.report.plots import figures_for

    many = len(report.runs) > 1
    lm = isinstance(report.runs[0].models[0], LMReport)
    rows = aggregate_rows([run.models for run in report.runs]) if many else report.runs[0].models
    held, sentence = verdict(rows)
    mark, css = {True: ("✔", "held"), False: ("✘", "missed"), None: ("•", "unknown")}[held]
    seeds = (f"mean ± std (sample std) over {len(report.runs)} seeds {report.seeds}, models at the last epoch"
             if many else f"seed {report.seeds[0]}, models at the last epoch")
    samples = report.runs[0].samples
    figures = "".join(
        f'<figure id="plot-{fid}"><img alt="{html.escape(fid)}" src="data:image/png;base64,{_png(make(report))}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for fid, caption, make in figures_for(report))
    glossary = "".join(f"<dt>{html.escape(t)}</dt><dd>{html.escape(d)}</dd>"
                       for t, d in (LM_GLOSSARY if lm else GLOSSARY))
    split = "held-out text" if lm else "test split"
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>kdistill report: {html.escape(report.name)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(report.name)}</h1>
<p class="meta">kdistill run report · {html.escape(str(report.path))} · {split} ({samples:,} {"blocks" if lm else "samples"}) ·
{html.escape(seeds)} · generated {generated}</p>
<p id="verdict" class="verdict {css}">{mark} {html.escape(sentence)}</p>
<h2>Comparison on the {split}</h2>
<div class="scroll">{_table(rows)}</div>
<h2>Plots</h2>
{figures}
<h2>How to read the table</h2>
<dl>{glossary}</dl>
<details><summary>config.yaml</summary><pre>{html.escape(report.config_text)}</pre></details>
</body></html>
"""


def write_report(run_dir: str | Path) -> Path:
    """(Re)build ``run_dir/report.html`` from the run's files alone (nothing is re-trained)."""
    report = load_run(run_dir)
    path = Path(run_dir) / REPORT
    # non-ASCII as character references: the file reads the same whatever the locale
    atomic_write_text(path, render(report).encode("ascii", "xmlcharrefreplace").decode("ascii"))
    return path
