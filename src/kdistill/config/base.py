"""What every config section shares: strict models, and errors that name the field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    """Unknown keys are errors; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _user_path(loc: tuple, raw) -> str:
    """The dotted path as the user wrote it: pydantic puts union tags (``image``, ``mlp``...)
    into error locations; walking the raw input drops every part that is not one of its keys."""
    parts, node = [], raw
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part not in node and parts and i < len(loc) - 1:
            continue  # a union tag, not a key of the user's mapping (the last part is the field)
        parts.append(str(part))
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return ".".join(parts)


def format_validation_error(exc: ValidationError, source: str, raw=None) -> str:
    """One line per problem: the dotted field, what is wrong, and what was given."""
    lines = []
    for err in exc.errors():
        loc = _user_path(tuple(p for p in err["loc"] if not str(p).startswith("function-")), raw)
        msg = err["msg"]
        if err["type"] == "union_tag_invalid":  # e.g. an image arch in a text task's student
            ctx = err["ctx"]
            loc = f"{loc}.{ctx['discriminator'].strip(chr(39))}"
            task = raw.get("task", "classification") if isinstance(raw, dict) else "this"
            lines.append(f"{source}: {loc}: {ctx['tag']} does not fit task {task} "
                         f"(it takes {ctx['expected_tags'].replace(chr(39), '')})")
            continue
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the config reference in README.md)"
        given = err.get("input")
        shown = "" if isinstance(given, dict) or err["type"] == "missing" else f" (got {given!r})"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"{source}: {loc + ': ' if loc else ''}{msg}{shown}")
    return "; ".join(lines)
