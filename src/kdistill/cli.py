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
    from kdistill.evaluate import format_table

    typer.echo(format_table(rows, title))


@app.command()
def demo(output_dir: Optional[Path] = typer.Option(None, help="where the run goes"),
         epochs: Optional[int] = typer.Option(None, help="override the demo's epochs")) -> None:
    """The embedded default: distil the bundled MNIST CNN into a small MLP, with the proof."""
    from kdistill.runs import run_comparison

    text = resources.files("kdistill.presets").joinpath("mnist_demo.yaml").read_text()
    import yaml

    cfg = RunConfig.parse(yaml.safe_load(text), source="mnist_demo.yaml")
    if output_dir is not None:
        cfg.train.output_dir = output_dir
    if epochs is not None:
        cfg.train.epochs = epochs
    rows = run_comparison(cfg)
    _print_rows(rows, f"{cfg.name}: MNIST test set (10,000 images)")
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
            output_dir: Optional[Path] = typer.Option(None), nproc: int = NPROC) -> None:
    """Distil the config's teacher into its student (``torchrun --nproc_per_node=N -m kdistill
    distill CONFIG``, or ``--nproc N``, for data parallelism)."""
    from kdistill.runs import distill as run_distill

    _relaunch(nproc, "distill", config, resume, output_dir)
    result = run_distill(_load(config, output_dir), resume=resume)
    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"saved {result.out_dir}")


@app.command("eval")
def eval_(config: Path = CONFIG, output_dir: Optional[Path] = typer.Option(None)) -> None:
    """Compare the run's teacher, scratch and distilled students on the test split."""
    from kdistill.runs import evaluate_run

    cfg = _load(config, output_dir)
    _print_rows(evaluate_run(cfg), f"{cfg.name}: test split")


@app.command()
def compare(config: Path = CONFIG, output_dir: Optional[Path] = typer.Option(None)) -> None:
    """Everything in one go: teacher (if untrained), scratch, distilled, comparison."""
    from kdistill.runs import run_comparison

    cfg = _load(config, output_dir)
    _print_rows(run_comparison(cfg), f"{cfg.name}: test split")


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
