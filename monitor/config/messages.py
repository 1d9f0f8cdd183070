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
from pydantic import ValidationError

from monitor.errors import ConfigError

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
        else:
            parts.append(("." if parts else "") + str(item))
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


def _found(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
        return f"kind: expected one of {ctx.get('expected_tags')}, got {ctx.get('tag')!r}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length", ctx.get("max_length"))
        return f"expected {_BOUNDS[kind]} {bound} item(s), got {ctx.get('actual_length')}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        return f"expected a value {_BOUNDS[kind]} {bound}, got {_found(error.get('input'))}"
    expected = _EXPECTATIONS.get(kind)
    if expected is None:
        expected = str(error["msg"]).removeprefix("Value error, ")
        expected = expected.removeprefix("Input should be ").removeprefix("expected ")
    if "got " in expected:
        return f"expected {expected}"
    return f"expected {expected}, got {_found(error.get('input'))}"


def describe_validation_error(
    exc: ValidationError, source: Path, text: str | None, tags: Sequence[str] = ()
) -> list[str]:
    """One line per problem, in file order where line numbers are known.

    ``tags`` are discriminator values (rule kinds) that pydantic puts into locations; they
    are not keys of the file, so they are dropped from the key path.
    """
    try:
        root = yaml.compose(text) if text is not None else None
    except yaml.YAMLError:
        root = None
    lines: list[tuple[int, str]] = []
    for error in exc.errors():
        loc = [item for item in _clean_loc(error["loc"]) if item not in tags]
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line else str(source)
        lines.append((line or 0, f"{where}: {_location(loc)}: {_message(error)}"))
    lines.sort(key=lambda item: item[0])
    return [message for _, message in lines]


def read_yaml(path: Path, not_found: str, unreadable: str) -> tuple[Any, str]:
    """Parse a YAML file; returns (data, text) so errors can later point at lines.

    ``not_found`` and ``unreadable`` are the ConfigError messages for a missing file and for
    one that cannot be read (``{error}`` is replaced by the OS error).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(not_found) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(unreadable.format(error=exc)) from None
    try:
        return yaml.safe_load(text), text
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_problem(path, exc)) from None


def yaml_problem(source: Path, exc: yaml.YAMLError) -> str:
    """A YAML syntax error as one line with the position the parser reports."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(source)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{where}: invalid YAML: {problem}"
