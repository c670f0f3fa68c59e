"""Export of a run's model, for every task: the recipe loads it and gives the held-out inputs,
``kdistill.export`` writes ONNX (and int8), checks parity and times it; the recipe adds its own
checks (causal LMs: greedy generation from ONNX against PyTorch)."""

from __future__ import annotations

import json
from pathlib import Path

from kdistill.checkpoint import atomic_write_text
from kdistill.config import RunConfig
from kdistill.errors import ExportError
from kdistill.runs.recipes import ROLES, recipe_for


def export_run(run_dir: str | Path, *, role: str = "distilled", quantize: str | None = None,
               torch_export: bool = False, threads: int = 1, samples: int | None = None,
               **options) -> dict:
    """Export a run's model (``role``: distilled, scratch or teacher) from ``RUN_DIR/<role>/``,
    check parity on the run's held-out split (its first ``samples``), time it against the run's
    teacher, and write ``RUN_DIR/export.json``. Artifacts go to ``RUN_DIR/export/``."""
    from kdistill.export import export_model

    run_dir = Path(run_dir)
    if role not in ROLES:
        raise ExportError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    if not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist")
    # every role's folder holds the run's config; a bundled teacher has no folder of its own
    config = next((c for c in (run_dir / r / "config.yaml" for r in (role, *ROLES)) if c.is_file()), None)
    if config is None:
        raise ExportError(f"{run_dir} holds no run (no {'/'.join(ROLES)}/config.yaml): give the run's "
                          "output directory, after `kdistill distill CONFIG`")
    cfg = RunConfig.from_yaml(config)
    cfg.train.output_dir = run_dir  # the run may have moved since it was written
    recipe = recipe_for(cfg)
    if role != "teacher" and not (run_dir / role / "summary.json").is_file():  # before any data loads
        found = [r for r in ROLES[1:] if (run_dir / r / "summary.json").is_file()]
        raise ExportError(f"{run_dir} has no {role!r} model (not trained); it has: {', '.join(found) or 'nothing yet'}"
                          " (choose with --role)")
    data = recipe.build_data(cfg)
    model = recipe.load(cfg, data, role)
    if model is None:
        raise ExportError(f"{run_dir} has no {role} model (not trained, and the config names no weights)")
    teacher = recipe.load(cfg, data, "teacher") if role != "teacher" else None
    if teacher is not None and not recipe.same_inputs_as_teacher(cfg):
        teacher = None  # it reads other inputs than the exported model: no side-by-side timing
    inputs, labels = recipe.export_inputs(cfg, data, samples)
    report = export_model(model, run_dir / "export", inputs=inputs, labels=labels, teacher=teacher, name=role,
                          quantize=quantize, torch_export=torch_export, threads=threads,
                          report_path=run_dir / "export.json", **options)  # artifact paths relative to it
    report.update(recipe.export_checks(model, run_dir / "export", role, inputs, quantize))
    atomic_write_text(run_dir / "export.json", json.dumps(report, indent=2))
    return report
