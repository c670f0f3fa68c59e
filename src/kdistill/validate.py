"""Checks that run before any model is built, so a careless config fails in one line, not after
an hour of training (or, worse, trains a ruined model and exits 0).

Each check is a plain function: the config's pydantic validators call the ones that depend on the
config alone (they raise ``ValueError`` naming the dotted field); ``check_environment`` holds the
ones that depend on this machine (devices, the output folder) and runs when a command starts, so a
config written on a GPU box still parses on a laptop.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import yaml

from kdistill.errors import ConfigError, DataError

# ---------------------------------------------------------------- the YAML file


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no tags that build objects) that refuses a key given twice in a mapping:
    plain PyYAML keeps the last one silently, so ``lr: 0.1`` ... ``lr: 10`` trains with 10."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` merges may be overridden by explicit keys
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                    seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:
                    continue  # an unhashable key: construct_mapping reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {first}): keep one of them", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """The parsed YAML of a config file; a folder, unreadable bytes, non-UTF-8 text, a duplicate
    key or a Python tag is one ConfigError naming the file (and the line where YAML knows it)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder, not a file: give the path of a .yaml file")
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config {path} cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {exc.start}: {data[exc.start]:#04x}): "
                          "save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = " ".join(f"{exc.context or ''} {exc.problem or ''}".split())
        raise ConfigError(f"{path} is not valid YAML{where}: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None


# ---------------------------------------------------------------- numbers and schedules


def non_finite_fields(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every NaN or infinite number in a (dumped) config."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in non_finite_fields(v, f"{prefix}{k}.")]
    if isinstance(node, (list, tuple)):
        return [p for i, v in enumerate(node) for p in non_finite_fields(v, f"{prefix}{i}.")]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{prefix.rstrip('.')}={node}"]
    return []


def check_finite(dump: dict) -> None:
    bad = non_finite_fields(dump)
    if bad:
        raise ValueError(f"{', '.join(bad)}: every number must be finite (no .nan / .inf)")


def schedule_knots(spec) -> list[tuple[str, float]]:
    """(where, value) at every point where a schedule can reach its extremes: the warmup start,
    the start and end of the main phase and each step value. Linear, cosine and exponential
    schedules are monotone between their ends, so these bound every value they take."""
    from kdistill.schedules import Step, as_schedule

    sched = as_schedule(spec)
    knots = [("warmup_start", sched.warmup_start)] if sched.warmup_steps else []
    if isinstance(sched, Step):
        return knots + [(f"values[{i}]", v) for i, v in enumerate(sched.values)]
    if sched.kind == "constant":
        return knots + [("value", sched.initial)]
    return knots + [("start", sched.at(0.0)), ("end", sched.at(1.0))]


def check_learning_rate(spec, field: str = "optim.lr") -> None:
    """The learning rate is > 0 over the whole schedule; warmup may start at 0 and a linear or
    cosine decay may end at 0, but no value may be negative (that is gradient ascent)."""
    for where, value in schedule_knots(spec):
        at = field if where == "value" else f"{field}.{where}"
        if value < 0:
            raise ValueError(f"{at} is {value}: a negative learning rate climbs the loss (gradient "
                             "ascent); keep every value of the schedule > 0")
        if value == 0 and where not in ("warmup_start", "end"):
            raise ValueError(f"{at} is 0: nothing would train; set a learning rate > 0")


def check_loss_weights(weights: dict[str, Any], *, need_active: bool, section: str = "loss") -> None:
    """Each weight >= 0 over its schedule; with ``need_active`` at least one term is on at the
    start and at the end (all weights 0 leaves nothing to minimise)."""
    for name, spec in weights.items():
        for where, value in schedule_knots(spec):
            if value < 0:
                at = f"{section}.{name}" + ("" if where == "value" else f".{where}")
                raise ValueError(f"{at} is {value}: loss weights must be >= 0 (a negative weight "
                                 "maximises that term)")
    if not need_active:
        return
    from kdistill.schedules import as_schedule

    for progress, moment in ((0.0, "start"), (1.0, "end")):
        if all(as_schedule(spec).at(progress) == 0 for spec in weights.values()):
            names = " / ".join(f"{section}.{n}" for n in weights)
            raise ValueError(f"{names} are all 0 at the {moment} of training: nothing to minimise; "
                             "give at least one of them a weight > 0")


# ---------------------------------------------------------------- model configs

CODE_KEYS = ("auto_map", "trust_remote_code", "custom_pipelines")


def code_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of keys in a model config that would make transformers import code."""
    if isinstance(node, dict):
        found = [f"{prefix}{k}" for k in node if k in CODE_KEYS]
        return found + [p for k, v in node.items() if k not in CODE_KEYS
                        for p in code_keys(v, f"{prefix}{k}.")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in code_keys(v, f"{prefix}{i}.")]
    return []


def check_model_config(config: dict | None) -> dict | None:
    """A model ``config:`` dict describes an architecture; it may not point at code to run."""
    if config is not None:
        found = code_keys(config)
        if found:
            raise ValueError(f"{found[0]} names code to import: a model config may only "
                             "describe a built-in architecture (remove the key)")
    return config


# ---------------------------------------------------------------- data


def check_split_shapes(input_shape: tuple[int, ...], splits: Iterable, source: str = "data") -> None:
    """Every split's samples have the shape the models are built for (the training split's):
    a test split of another shape would otherwise fail only after training."""
    for split in splits:
        if split is None or not hasattr(split.inputs, "shape") or len(split) == 0:
            continue
        shape = tuple(split.inputs.shape[1:])
        if shape != tuple(input_shape):
            raise DataError(f"{source}: the {split.name} split's inputs have shape {shape}, the "
                            f"models take {tuple(input_shape)} (the training split's): give every "
                            "split the same sample shape")


# ---------------------------------------------------------------- this machine


def check_device(device: str | None, field: str) -> None:
    """A device string names a device that exists here (``cuda:1`` needs two GPUs)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{field}: {device!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{field}: {device!r} but this machine has no usable CUDA GPU: "
                              "set it to cpu (or run where a GPU is)")
        if (dev.index or 0) >= count:
            raise ConfigError(f"{field}: {device!r} but this machine has {count} GPU(s) "
                              f"(cuda:0..cuda:{count - 1}): pick one of them")
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{field}: 'mps' is not available on this machine: set it to cpu")
        return
    raise ConfigError(f"{field}: device type {dev.type!r} is not supported: use cpu, cuda, cuda:N or mps")


def check_output_dir(path: str | Path, field: str = "train.output_dir") -> None:
    """The output folder is a folder (or can become one) and can be written: find the nearest
    existing ancestor and create a file there."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "" if probe == path else f" ({probe} is a file)"
        raise ConfigError(f"{field} {path} cannot be a folder{what}: move the file away or choose "
                          "another --output-dir")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".kdistill-write-test-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ConfigError(f"{field} {path} is not writable ({probe}: {exc.strerror}): choose "
                          "another --output-dir or make it writable") from None


def check_environment(cfg) -> None:
    """The checks that depend on this machine: every device field and the output folder."""
    check_device(cfg.train.device, "train.device")
    check_device(getattr(cfg.teacher, "device", None), "teacher.device")
    check_output_dir(cfg.train.output_dir)


def require_teacher(cfg, command: str = "distill") -> None:
    if cfg.teacher is None:
        raise ConfigError(f"`kdistill {command}` needs a teacher: add a `teacher:` section to the "
                          "config (or use `kdistill train` for a student on labels alone)")
