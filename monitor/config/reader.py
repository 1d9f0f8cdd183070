"""Read the operator's YAML files (the config and rule files) within fixed bounds.

A YAML file is small, but it can describe something enormous: nine anchors, each a list of
nine aliases of the one before ("billion laughs"), load in milliseconds as shared references
and expand to 387 million values the moment anything walks or prints them. An error message
that quoted such a value once took 91 s and 6 GB. So a file is refused, with its name and the
line at fault, when it is larger than ``MAX_YAML_BYTES``, when its aliases would repeat more
than ``ALIAS_BUDGET`` values in all, when an alias refers to the collection it sits in, or when
it nests deeper than ``MAX_DEPTH``. Anchors used as intended (one run's settings reused by a
few others) stay far inside these bounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from monitor.config.quoting import cut, short
from monitor.errors import ConfigError

#: A config or rule file is a few kilobytes; a megabyte is not a mistake anyone makes by hand.
MAX_YAML_BYTES = 1 << 20
#: How many values (a string counts one per 100 characters) aliases may repeat in one file.
ALIAS_BUDGET = 10_000
#: Collections inside collections; a config needs about six levels.
MAX_DEPTH = 64
#: What PyYAML's constructors raise, besides its own errors, on values they cannot build.
_BUILD_ERRORS = (ArithmeticError, LookupError, ValueError, TypeError, AttributeError)


class _Refused(yaml.YAMLError):
    """A bound was crossed; ``problem_mark`` is where in the file."""

    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts what aliases expand to while it composes.

    The count is exact and cheap: each alias adds the expanded size of the node it names,
    computed once per node, so checking costs no more than composing.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._expanded = 0
        self._sizes: dict[int, int] = {}
        self._open: set[str] = set()  # anchors of the collections being composed
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise _Refused(
                    f"alias *{event.anchor} refers to the collection it is in", event.start_mark
                )
            node = super().compose_node(parent, index)
            self._expanded += self._size(node) if node is not None else 0
            if self._expanded > ALIAS_BUDGET:
                raise _Refused(
                    f"alias *{event.anchor} takes the values repeated by aliases past "
                    f"{ALIAS_BUDGET:,} (a YAML alias bomb?); write the values out instead",
                    event.start_mark,
                )
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open.discard(anchor)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """PyYAML's constructors fail on some explicitly tagged values with plain Python
        errors (``!!timestamp 2024-13-45``, an empty ``!!int``); report those with the line."""
        try:
            return super().construct_object(node, deep)
        except _BUILD_ERRORS as exc:
            value = f" {short(node.value)}" if isinstance(node, yaml.ScalarNode) else ""
            raise _Refused(
                f"cannot read{value} as {node.tag.rpartition(':')[2]} ({cut(str(exc), 100)})",
                node.start_mark,
            ) from None

    def _size(self, node: yaml.Node) -> int:
        """Values in the node once every alias inside it is expanded (memoised per node)."""
        size = self._sizes.get(id(node))
        if size is None:
            if isinstance(node, yaml.ScalarNode):
                size = 1 + len(node.value) // 100
            elif isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._size(child) for child in node.value)
            else:
                size = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
            self._sizes[id(node)] = size
        return size


def parse_yaml(text: str, source: Path) -> Any:
    """Parse one YAML document within the bounds; problems are ConfigErrors naming the line."""
    loader = None
    try:
        loader = _BoundedLoader(text)  # this already refuses unprintable characters
        return loader.get_single_data()
    except _Refused as exc:
        raise ConfigError(f"{_where(source, exc)}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_problem(source, exc)) from None
    except _BUILD_ERRORS as exc:  # from a collection's own constructor: no line to give
        raise ConfigError(f"{source}: invalid YAML: {cut(str(exc), 200)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def compose_yaml(text: str) -> yaml.Node | None:
    """The node tree (for line numbers) of text that may never have been checked; None when
    it is not YAML within the bounds."""
    loader = None
    try:
        loader = _BoundedLoader(text)
        return loader.get_single_node()
    except yaml.YAMLError:
        return None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(
    path: Path, not_found: str, unreadable: str, what: str = "config file"
) -> tuple[Any, str]:
    """Parse a YAML file; returns (data, text) so errors can later point at lines.

    ``not_found`` and ``unreadable`` are the ConfigError messages for a missing file and for
    one that cannot be read (``{error}`` is replaced by the OS error); ``what`` names the file
    in the message for one that is too large. At most ``MAX_YAML_BYTES`` + 1 bytes are read,
    so a device or a growing file (``-c /dev/zero``) is refused too.
    """
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(not_found) from None
    except OSError as exc:
        raise ConfigError(unreadable.format(error=exc)) from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(
            f"{path}: the {what} is larger than the limit of {MAX_YAML_BYTES:,} bytes (1 MiB) "
            "for a YAML file the monitor reads"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(unreadable.format(error=exc)) from None
    return parse_yaml(text, path), text


def yaml_problem(source: Path, exc: yaml.YAMLError) -> str:
    """A YAML syntax error as one line with the position the parser reports."""
    where = _where(source, exc)
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["unknown error"])[0]
    return f"{where}: invalid YAML: {cut(str(problem), 200)}"


def _where(source: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(source)
