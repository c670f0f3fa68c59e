"""Read a run directory back for the report, naming the file whenever one is missing or damaged.

A single run holds ``comparison.json`` (the test metrics, reliability bins and per-class
accuracy of each model; for causal LMs held-out perplexity, agreement, KL, size and tokens/s),
``config.yaml`` and ``<role>/metrics.jsonl``; a multi-seed run holds its own
``comparison.json`` and ``config.yaml`` listing ``seed_<k>/`` single runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from kdistill.config import RunConfig
from kdistill.errors import ReportError
from kdistill.evaluate import LMReport, ModelReport

REBUILD = "re-run `kdistill eval CONFIG` (or the comparison) to rewrite it"


@dataclass
class Curves:
    """One role's training log: per-step records and per-epoch evaluation summaries."""

    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)


@dataclass
class SingleRun:
    path: Path
    name: str
    seed: int
    samples: int
    class_names: list[str]
    models: list[ModelReport] | list[LMReport]
    curves: dict[str, Curves]


@dataclass
class RunReport:
    """What the report shows: one or more seeds of the same comparison."""

    path: Path
    name: str
    config_text: str
    runs: list[SingleRun]
    seeds: list[int]


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ReportError(f"{path} is missing: {REBUILD}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path} is damaged (not valid JSON: {exc}): {REBUILD}") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} is damaged (expected a JSON object): {REBUILD}")
    return data


def _field(data: dict, key: str, path: Path):
    if key not in data:
        raise ReportError(f"{path} is damaged (no {key!r} field): {REBUILD}")
    return data[key]


def read_metrics(path: Path) -> Curves:
    """A role's metrics.jsonl: step records and ``{"eval": ...}`` lines."""
    if not path.is_file():
        raise ReportError(f"{path} is missing: the report plots its learning curves; re-run that "
                          "role's training, or restore the file")
    curves = Curves()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path} line {n} is damaged (not valid JSON: {exc}); re-run that role's "
                              "training, or delete the broken line") from None
        if not isinstance(record, dict) or not ("eval" in record or "step" in record):
            raise ReportError(f"{path} line {n} is damaged (neither a step nor an eval record)")
        if "eval" in record:
            curves.evals.append(record["eval"])
        else:
            curves.steps.append(record)
    return curves


def inside(run_dir: Path, relative, named_in: Path) -> Path:
    """``run_dir / relative``, refused unless it stays inside the run folder: a comparison.json
    from someone else must not make the report read files elsewhere."""
    if not isinstance(relative, str):
        raise ReportError(f"{named_in} is damaged (a log path must be a string, got {relative!r}): {REBUILD}")
    target = (run_dir / relative).resolve()
    if Path(relative).is_absolute() or not target.is_relative_to(run_dir.resolve()):
        raise ReportError(f"{named_in} names {relative!r}, outside the run folder {run_dir}: the "
                          f"report reads only files inside it; {REBUILD}")
    return target


# the rows of comparison.json by the run's task (classifiers by default)
_MODELS = {"causal_lm": TypeAdapter(list[LMReport])}
_CLASSIFIER_MODELS = TypeAdapter(list[ModelReport])


def read_single(path: Path) -> SingleRun:
    file = path / "comparison.json"
    data = read_json(file)
    try:
        models = _MODELS.get(data.get("task"), _CLASSIFIER_MODELS).validate_python(_field(data, "models", file))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ReportError(f"{file} is damaged (models.{where}: {err['msg']}): {REBUILD}") from None
    logs = _field(data, "logs", file)
    if not isinstance(logs, dict):
        raise ReportError(f"{file} is damaged ('logs' must map roles to metrics files): {REBUILD}")
    curves = {role: read_metrics(inside(path, rel, file)) for role, rel in logs.items() if rel}
    return SingleRun(path=path, name=str(data.get("name", path.name)), seed=int(data.get("seed", 0)),
                     samples=int(data.get("samples", 0)), class_names=list(data.get("class_names", [])),
                     models=models, curves=curves)


def load_run(run_dir: str | Path) -> RunReport:
    """A run directory (single or multi-seed) as the report needs it."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ReportError(f"run directory {path} does not exist")
    top = read_json(path / "comparison.json")
    config = path / "config.yaml"
    if not config.is_file():
        raise ReportError(f"{config} is missing: {REBUILD}")
    RunConfig.from_yaml(config)  # a damaged config fails here, naming the file and field
    if "runs" in top:
        names = _field(top, "runs", path / "comparison.json")
        if not names or not all(isinstance(n, str) and Path(n).name == n and n not in (".", "..")
                                for n in names):
            raise ReportError(f"{path / 'comparison.json'} is damaged ('runs' must list the seed "
                              f"folders inside the run directory): {REBUILD}")
        runs = [read_single(path / name) for name in names]
    else:
        runs = [read_single(path)]
    return RunReport(path=path, name=runs[0].name, config_text=config.read_text(), runs=runs,
                     seeds=[r.seed for r in runs])
