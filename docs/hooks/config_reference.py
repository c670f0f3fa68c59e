"""mkdocs hook: the config reference page, generated from the pydantic models at every build.

``docs/reference/config.md`` holds the marker ``<!-- config-reference -->``; this hook replaces
it with one table per config section of every task (field, type, default, description), walking
``kdistill.config.TASKS``, so the reference cannot drift from the code.
"""

from __future__ import annotations

import json
import types
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

MARKER = "<!-- config-reference -->"
PAGE = "reference/config.md"


def _anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def _schedule_types() -> tuple[type, ...]:
    from kdistill.schedules import _Schedule

    return (_Schedule,)


def _strip(tp):
    """Annotated[X, ...] -> X."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _union_args(tp) -> tuple | None:
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return get_args(tp)
    return None


def _models_in(tp) -> list[type[BaseModel]]:
    """The config models a field's annotation refers to (a section, or a union of variants)."""
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [] if issubclass(tp, _schedule_types()) else [tp]
    out = []
    for arg in _union_args(tp) or (get_args(tp) if get_origin(tp) in (list, tuple, dict) else ()):
        out += [m for m in _models_in(arg) if m not in out]
    return out


def _type(tp) -> str:
    tp = _strip(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(f"`{v}`" for v in get_args(tp))
    args = _union_args(tp)
    if args is not None:
        if any(isinstance(_strip(a), type) and issubclass(_strip(a), _schedule_types()) for a in args) or \
                any(_union_args(_strip(a)) and all(issubclass(_strip(b), _schedule_types())
                                                   for b in _union_args(_strip(a))) for a in args):
            return "number or [schedule](#schedules)"
        parts = [_type(a) for a in args if a is not type(None)]
        if all(isinstance(_strip(a), type) and issubclass(_strip(a), BaseModel) for a in args if a is not type(None)):
            parts = [f"[{_strip(a).__name__}](#{_anchor(_strip(a))})" for a in args if a is not type(None)]
        text = " or ".join(parts)
        return text + " or null" if type(None) in args else text
    if origin in (list, tuple):
        inner = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {' / '.join(_type(a) for a in inner)}" if inner else "list"
    if origin is dict or tp is dict:
        return "mapping"
    if isinstance(tp, type):
        if issubclass(tp, BaseModel):
            return f"[{tp.__name__}](#{_anchor(tp)})"
        if issubclass(tp, Path):
            return "path"
        if issubclass(tp, Enum):
            return " | ".join(f"`{m.value}`" for m in tp)
        return {"int": "integer", "float": "number", "str": "string", "bool": "boolean"}.get(tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "**required**"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        dumped = value.model_dump(mode="json", exclude_defaults=True)
        return f"`{json.dumps(dumped)}`" if dumped else "(defaults)"
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, Enum):
        value = value.value
    return f"`{json.dumps(value)}`"


_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >="}


def _bounds(field) -> str:
    """Constraints such as ``gt=0`` as text (", > 0")."""
    out = [f"{sign} {getattr(m, name)}" for m in field.metadata for name, sign in _BOUNDS.items()
           if getattr(m, name, None) is not None]
    return ", " + ", ".join(out) if out else ""


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def model_table(model: type[BaseModel]) -> str:
    """One section's table: field, type, default, description."""
    rows = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        rows.append(f"| `{name}` | {_cell(_type(field.annotation) + _bounds(field))} | {_cell(_default(field))} | "
                    f"{_cell(field.description)} |")
    doc = (model.__doc__ or "").strip()
    intro = " ".join(doc.split("\n\n")[0].split()).replace("``", "`") + "\n\n" if doc else ""
    return intro + "\n".join(rows)


def section_models() -> list[type[BaseModel]]:
    """Every config model reachable from a task's config, each once, in first-seen order."""
    from kdistill.config import TASKS

    seen: list[type[BaseModel]] = []
    queue = list(TASKS.values())
    while queue:
        model = queue.pop(0)
        for field in model.model_fields.values():
            for sub in _models_in(field.annotation):
                if sub not in seen and sub not in TASKS.values():
                    seen.append(sub)
                    queue.append(sub)
    return seen


def _schedules() -> str:
    from kdistill.schedules import Schedule

    rows = []
    for model in _union_args(_strip(Schedule)):
        rows.append(f"### `kind: {model.model_fields['kind'].default}` {{#{_anchor(model)}}}\n\n{model_table(model)}")
    return "\n\n".join(rows)


def config_reference() -> str:
    """The generated part of the config reference page (markdown)."""
    from kdistill.config import TASKS

    parts = ["## Tasks", "", "A config's `task` picks its class; each class lists its sections and their defaults "
             "(a section given in the file replaces only the fields it names).", ""]
    for task, cls in TASKS.items():
        parts += [f"### `task: {task}` {{#{_anchor(cls)}}}", "", model_table(cls), ""]
    parts += ["## Sections", "", "Every section a task's config can hold, and the variants of the discriminated "
              "ones (`arch` of a model, `kind` of a teacher).", ""]
    for model in section_models():
        parts += [f"### {model.__name__} {{#{_anchor(model)}}}", "", model_table(model), ""]
    parts += ["## Schedules", "", "Temperature, loss weights and the learning rate take a number (a constant) or "
              "one of these, by `kind`; every kind also takes `warmup_steps` and `warmup_start`.", "",
              _schedules(), ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # mkdocs hook
    if page.file.src_uri == PAGE:
        if MARKER not in markdown:
            raise ValueError(f"docs/{PAGE} lost its {MARKER} marker")
        return markdown.replace(MARKER, config_reference())
    return markdown

