"""Turn YAML and validation failures into lines an operator can act on.

Each line names the file (and line, where the YAML says), the key path, what was expected and
what was found: ``config.yaml:12: stiffness.mode: expected 'class' or 'pair', got 'fast'``.
Kept apart from the schema so rule files reuse it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from monitor.config.quoting import cut, short
from monitor.config.reader import compose_yaml
from monitor.config.suggestions import suggestion

_EXPECTATIONS = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "path_type": "a path",
    "missing": "this key to be set",
    "extra_forbidden": "no such key",
}


def _location(loc: Sequence[int | str]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:  # a key the file made up can be long, or hold line breaks
            key = str(item) if str(item).isprintable() and len(str(item)) <= 60 else short(item, 60)
            parts.append(("." if parts else "") + key)
    return "".join(parts) or "(top level)"


def _clean_loc(loc: Sequence[int | str]) -> list[int | str]:
    """Drop pydantic's union-branch labels (``list[dict[str,any]]``, ``function-after``)."""
    return [item for item in loc if isinstance(item, int) or ("[" not in item and "-" not in item)]


def _line_of(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """The 1-based line of the deepest YAML node on the key path that exists."""
    node, line = root, None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if getattr(k, "value", None) == key]
            if not match:
                break
            key_node, node = match[0]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
           "less_than": "<", "too_short": "at least", "too_long": "at most"}  # fmt: skip


def _message(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"kind: expected one of {ctx.get('expected_tags')}, got {short(ctx.get('tag'))}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length", ctx.get("max_length"))
        return f"expected {_BOUNDS[kind]} {bound} item(s), got {ctx.get('actual_length')}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        return f"expected a value {_BOUNDS[kind]} {bound}, got {short(error.get('input'))}"
    expected = _EXPECTATIONS.get(kind)
    if expected is None:
        expected = str(error["msg"]).removeprefix("Value error, ")
        expected = expected.removeprefix("Input should be ").removeprefix("expected ")
        expected = cut(expected, 600)  # our validators quote values short; pydantic's may not
    if "got " in expected:
        return f"expected {expected}"
    return f"expected {expected}, got {short(error.get('input'))}"


def describe_validation_error(
    exc: ValidationError,
    source: Path,
    text: str | None,
    tags: Sequence[str] = (),
    model: type[BaseModel] | None = None,
) -> list[str]:
    """One line per problem, in file order where line numbers are known.

    ``tags`` are discriminator values (rule kinds) that pydantic puts into locations; they
    are not keys of the file, so they are dropped from the key path. ``model``, the file's
    pydantic model, lets an unknown key name the key that was meant ("did you mean").
    """
    root = compose_yaml(text) if text is not None else None
    lines: list[tuple[int, str]] = []
    for error in exc.errors():
        tagged = _clean_loc(error["loc"])
        loc = [item for item in tagged if item not in tags]
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line else str(source)
        hint = suggestion(model, tagged) if error["type"] == "extra_forbidden" else ""
        lines.append((line or 0, f"{where}: {_location(loc)}: {_message(error)}{hint}"))
    lines.sort(key=lambda item: item[0])
    return [message for _, message in lines]
