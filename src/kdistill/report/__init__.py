"""The self-contained HTML report of a run: ``write_report(run_dir)`` (``kdistill report RUN``)."""

from kdistill.report.html import render, write_report
from kdistill.report.load import load_run

__all__ = ["load_run", "render", "write_report"]
