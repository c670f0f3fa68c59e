"""The ``kdistill`` command line: each command is a thin layer over the Python API."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Optional

import typer

from kdistill.config import RunConfig
from kdistill.errors import KDistillError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Knowledge distillation: soft targets, schedules, one engine, and the proof.")

CONFIG = typer.Argument(..., help="run config (YAML)", exists=False)


def _load(config: Path, output_dir: Optional[Path]) -> RunConfig:
    cfg = RunConfig.from_yaml(config)
    if output_dir is not None:
        cfg.train.output_dir = output_dir
    return cfg


def _print_rows(rows, title: str) -> None:
    if rows and isinstance(rows[0], dict):  # causal-LM comparisons
        from kdistill.lm_runs import format_lm_table

        typer.echo(format_lm_table(rows, title))
        return
    from kdistill.evaluate import format_table

    typer.echo(format_table(rows, title))


@app.command()
def demo(output_dir: Optional[Path] = typer.Option(None, help="where the run goes"),
         epochs: Optional[int] = typer.Option(None, help="override the demo's epochs"),
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
          output_dir: Optional[Path] = typer.Option(None)) -> None:
    """Train a model on hard labels (the teacher, or the student-from-scratch baseline)."""
    from kdistill.runs import train as run_train

    result = run_train(_load(config, output_dir), role=role, resume=resume)
    typer.echo(f"saved {result.out_dir}")


@app.command()
def distill(config: Path = CONFIG,
            resume: bool = typer.Option(False, help="continue from the last checkpoint"),
            output_dir: Optional[Path] = typer.Option(None)) -> None:
    """Distil the config's teacher into its student."""
    from kdistill.runs import distill as run_distill

    result = run_distill(_load(config, output_dir), resume=resume)
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


@app.command()
def generate(config: Path = CONFIG) -> None:
    """The config's teacher answers `generate.prompts` into `generate.output` (JSONL, resumable):
    the data of sequence-level distillation (train on it with data.dataset: jsonl)."""
    from kdistill.lm_runs import generate as run_generate

    typer.echo(f"wrote {run_generate(RunConfig.from_yaml(config))}")


def main() -> None:
    """Entry point: user errors print one line and exit 2, not a traceback."""
    try:
        app(standalone_mode=False)
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
