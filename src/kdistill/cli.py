"""The ``kdistill`` command line: each command is a thin layer over the Python API."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path
from typing import Optional

import typer

from kdistill.config import RunConfig
from kdistill.errors import ConfigError, KDistillError, RunInterrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Knowledge distillation: soft targets, schedules, one engine, and the proof.")

CONFIG = typer.Argument(..., help="run config (YAML)", exists=False)
NPROC = typer.Option(1, "--nproc", min=1, help="data-parallel processes on this machine: "
                     "re-runs the command under torchrun (torch.distributed.run)")


def _relaunch(nproc: int, command: str, config: Path, resume: bool, output_dir: Optional[Path],
              *extra: str) -> None:
    """``--nproc N`` > 1: exec torchrun with the same command, which then runs N copies."""
    if nproc == 1:
        return
    from kdistill import distributed

    if distributed.launched_by_torchrun():
        raise ConfigError("--nproc is for a plain launch; under torchrun set --nproc_per_node instead")
    distributed.exec_torchrun(nproc, [command, str(config), *extra, *(["--resume"] if resume else []),
                                      *(["--output-dir", str(output_dir)] if output_dir else [])])


def _load(config: Path, output_dir: Optional[Path]) -> RunConfig:
    cfg = RunConfig.from_yaml(config)
    if output_dir is not None:
        cfg.train.output_dir = output_dir
    return cfg


def _print_rows(rows, title: str) -> None:
    from kdistill.presentation import format_table

    typer.echo(format_table(rows, title))


SEEDS = typer.Option(1, min=1, help="run the comparison over N seeds (seed, seed+1, ...) in "
                                   "OUTPUT_DIR/seed_K/ and report mean ± std at the last epoch")


def _say_report(cfg: RunConfig) -> None:
    path = Path(cfg.train.output_dir) / "report.html"
    if path.is_file():
        typer.echo(f"report: {path}")


def _evaluate(cfg: RunConfig) -> None:
    from kdistill.runs import evaluate_run

    _print_rows(evaluate_run(cfg), f"{cfg.name}: test split")
    _say_report(cfg)


def _compare(cfg: RunConfig, seeds: int, title: str) -> None:
    from kdistill.runs import run_comparison, run_seeds

    if seeds > 1:
        _print_rows(run_seeds(cfg, seeds), f"{title}, mean ± std over {seeds} seeds")
    else:
        _print_rows(run_comparison(cfg), title)
    _say_report(cfg)


@app.command()
def demo(output_dir: Optional[Path] = typer.Option(None, help="where the run goes"),
         epochs: Optional[int] = typer.Option(None, help="override the demo's epochs"),
         seeds: int = SEEDS,
         llm: bool = typer.Option(False, "--llm", help="distil SmolLM2-135M-Instruct into a small "
                                                       "Llama on local text instead")) -> None:
    """The embedded default: distil the bundled MNIST CNN into a small MLP, with the proof."""
    if llm:
        from kdistill.lm_demo import run_llm_demo

        out = output_dir or Path("runs/llm-demo")
        rows = run_llm_demo(out, **({"epochs": epochs} if epochs else {}), echo=typer.echo)
        _print_rows(rows, "llm demo: held-out text, same token budget for both students")
        typer.echo(f"run directory: {out}")
        return
    text = resources.files("kdistill.presets").joinpath("mnist_demo.yaml").read_text()
    import yaml

    cfg = RunConfig.parse(yaml.safe_load(text), source="mnist_demo.yaml")
    if output_dir is not None:
        cfg.train.output_dir = output_dir
    if epochs is not None:
        cfg.train.epochs = epochs
    _compare(cfg, seeds, f"{cfg.name}: MNIST test set (10,000 images)")
    typer.echo(f"run directory: {cfg.train.output_dir}")


@app.command()
def train(config: Path = CONFIG,
          role: str = typer.Option("scratch", help="scratch: the student on labels alone; "
                                                   "teacher: the config's teacher architecture"),
          resume: bool = typer.Option(False, help="continue from the last checkpoint"),
          output_dir: Optional[Path] = typer.Option(None), nproc: int = NPROC) -> None:
    """Train a model on hard labels (the teacher, or the student-from-scratch baseline)."""
    from kdistill.runs import train as run_train

    _relaunch(nproc, "train", config, resume, output_dir, "--role", role)
    result = run_train(_load(config, output_dir), role=role, resume=resume)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        typer.echo(f"saved {result.out_dir}")


@app.command()
def distill(config: Path = CONFIG,
            resume: bool = typer.Option(False, help="continue from the last checkpoint"),
            output_dir: Optional[Path] = typer.Option(None), nproc: int = NPROC,
            evaluate: bool = typer.Option(True, help="then compare the run's teacher, scratch (if trained) "
                                                     "and distilled students, as `kdistill eval`")) -> None:
    """Distil the config's teacher into its student (``torchrun --nproc_per_node=N -m kdistill
    distill CONFIG``, or ``--nproc N``, for data parallelism), then compare it with the teacher."""
    from kdistill.runs import distill as run_distill

    _relaunch(nproc, "distill", config, resume, output_dir, *([] if evaluate else ["--no-evaluate"]))
    cfg = _load(config, output_dir)
    result = run_distill(cfg, resume=resume)
    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"saved {result.out_dir}")
        if evaluate:
            _evaluate(cfg)


@app.command("cache-teacher")
def cache_teacher(config: Path = CONFIG, output_dir: Optional[Path] = typer.Option(None)) -> None:
    """Run the teacher once over the training split and write its outputs to teacher.path."""
    from kdistill.teachers.cache import cache_teacher as write

    cached = write(_load(config, output_dir))
    typer.echo(f"wrote {cached.path}: {cached.rows} samples, {cached.format} {cached.dtype}"
               f"{f' k={cached.k}' if cached.k else ''}, {cached.bytes_per_sample:.0f} bytes per sample")


@app.command("eval")
def eval_(config: Path = CONFIG, output_dir: Optional[Path] = typer.Option(None)) -> None:
    """Compare the run's teacher, scratch and distilled students on the test split."""
    _evaluate(_load(config, output_dir))


@app.command()
def compare(config: Path = CONFIG, output_dir: Optional[Path] = typer.Option(None),
            seeds: int = SEEDS) -> None:
    """Everything in one go: the teacher (when it needs training), scratch, distilled, the
    comparison and the report; roles already trained from the same config are reused."""
    cfg = _load(config, output_dir)
    _compare(cfg, seeds, f"{cfg.name}: test split")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run's output directory")) -> None:
    """Rebuild RUN_DIR/report.html from the run's files alone (nothing is re-trained)."""
    from kdistill.report import write_report

    typer.echo(f"report: {write_report(run_dir)}")


@app.command()
def export(run_dir: Path = typer.Argument(..., help="the run's output directory"),
           format: str = typer.Option("onnx", "--format", help="export format (onnx)"),
           quantize: Optional[str] = typer.Option(None, help="int8: also a dynamically quantized model"),
           torch_export: bool = typer.Option(False, "--torch-export", help="also save a torch.export .pt2"),
           role: str = typer.Option("distilled", help="which model: distilled, scratch or teacher"),
           threads: int = typer.Option(1, min=1, help="intra-op threads for the timings"),
           repeats: int = typer.Option(200, min=1, help="batch-1 timing repeats"),
           samples: Optional[int] = typer.Option(None, min=1, help="parity on the first N test samples (default: all)"),
           int8_max_drop: float = typer.Option(2.0, help="fail if int8 loses more accuracy points")) -> None:
    """Export a run's student to ONNX (optionally int8), check parity, time it: RUN_DIR/export.json."""
    from kdistill.errors import ExportError
    from kdistill.export import format_rows
    from kdistill.runs.export import export_run

    if format != "onnx":
        raise ExportError(f"--format {format!r} is not supported: use --format onnx")
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize!r} is not supported: use --quantize int8")
    report = export_run(run_dir, role=role, quantize=quantize, torch_export=torch_export,
                        threads=threads, repeats_b1=repeats, samples=samples,
                        int8_max_drop_points=int8_max_drop)
    typer.echo(format_rows(report))
    typer.echo(f"wrote {run_dir / 'export.json'}")


@app.command()
def generate(config: Path = CONFIG) -> None:
    """The config's teacher answers `generate.prompts` into `generate.output` (JSONL, resumable):
    the data of sequence-level distillation (train on it with data.dataset: completions_jsonl)."""
    from kdistill.runs import generate as run_generate

    typer.echo(f"wrote {run_generate(RunConfig.from_yaml(config))}")


def main() -> None:
    """Entry point: user errors print one line and exit 2, not a traceback."""
    try:
        app(standalone_mode=False)
    except RunInterrupted as exc:
        typer.echo(f"stopped: {exc}", err=True)
        sys.exit(128 + exc.signum)
    except KDistillError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit codes
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
