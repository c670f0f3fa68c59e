"""Export of a run directory's model: the CLI's ``kdistill export RUN_DIR``."""

from __future__ import annotations

from pathlib import Path

from kdistill.errors import ExportError
from kdistill.export.parity import export_model


def export_run(run_dir: str | Path, *, role: str = "distilled", quantize: str | None = None,
               torch_export: bool = False, threads: int = 1, samples: int | None = None,
               **options) -> dict:
    """Export a run's model (``role``: distilled, scratch or teacher) from ``RUN_DIR/<role>/``,
    check parity on the run's test split (its first ``samples``, default all), time it against the
    run's teacher, and write ``RUN_DIR/export.json``. Artifacts go to ``RUN_DIR/export/``."""
    from kdistill.config import RunConfig
    from kdistill.data import build_data
    from kdistill.runs import ROLES, STUDENT_WEIGHTS, load_role

    run_dir = Path(run_dir)
    if role not in ROLES:
        raise ExportError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    if not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist")
    # every role's folder holds the run's config; a bundled teacher has no folder of its own
    configs = [run_dir / r / "config.yaml" for r in (role, *ROLES)]
    config = next((c for c in configs if c.is_file()), None)
    if config is None:
        raise ExportError(f"{run_dir} holds no run (no {'/'.join(ROLES)}/config.yaml): give the run's "
                          "output directory, after `kdistill distill CONFIG`")
    weights = run_dir / role / STUDENT_WEIGHTS
    if role != "teacher" and not weights.is_file():  # checked before the data is loaded
        found = [r for r in ROLES if (run_dir / r / STUDENT_WEIGHTS).is_file()]
        raise ExportError(f"{run_dir} has no {role!r} model ({weights} not found); it has: "
                          f"{', '.join(found) or 'nothing yet'} (choose with --role)")
    cfg = RunConfig.from_yaml(config)
    cfg.train.output_dir = run_dir  # the run may have moved since it was written
    data = build_data(cfg.data)
    model = load_role(cfg, role, data)
    if model is None:
        raise ExportError(f"{run_dir} has no teacher: {weights} not found and the config names no "
                          "teacher weights")
    teacher = load_role(cfg, "teacher", data) if role != "teacher" else None
    test = data.test.subset(samples) if samples else data.test
    return export_model(model, run_dir / "export", inputs=test.inputs, labels=test.labels,
                        teacher=teacher, name=role, quantize=quantize, torch_export=torch_export,
                        threads=threads, report_path=run_dir / "export.json", **options)
