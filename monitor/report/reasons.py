"""A stop reason as a short list: one item per rule, the sub-rules of ``all``/``any`` nested.

The rule engine writes a combinator's reason as one line: ``"2 of 2 sub-rules say stop (all
must). [decline-0: stop] ... [slope-1: stop] ..."``, where each bracketed sub-reason may itself
be a combinator's. The head says how many sub-rules follow, so the line splits back into the
tree it was made from without the rule file (the stored reason outlives edits to the rules).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: ``[name: stop] `` or ``[name: go on] ``, as ``engine.Combinator`` writes them.
MARKER = re.compile(r"\s*\[([^\[\]]+?): (stop|go on)\]\s+")
HEAD = re.compile(r"^\d+ of (\d+) sub-rules say stop\b")


@dataclass(frozen=True)
class ReasonItem:
    """One rule's part of a reason: its name, whether it said stop, its own sentence, and its
    sub-rules' items (a combinator's)."""

    rule: str
    stop: bool
    text: str
    children: tuple[ReasonItem, ...] = ()


def _segments(reason: str) -> tuple[str, list[tuple[str, bool, str]]]:
    """The text before the first marker, and (name, said stop, text) after each marker."""
    marks = list(MARKER.finditer(reason))
    if not marks:
        return reason.strip(), []
    head = reason[: marks[0].start()].strip()
    found = []
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        end = len(reason) if following is None else following.start()
        found.append((mark.group(1), mark.group(2) == "stop", reason[mark.end() : end].strip()))
    return head, found


def _build(
    rule: str, stop: bool, text: str, rest: list[tuple[str, bool, str]]
) -> tuple[ReasonItem, list[tuple[str, bool, str]]]:
    head = HEAD.match(text)
    if head is None:
        return ReasonItem(rule, stop, text), rest
    children = []
    for _ in range(int(head.group(1))):
        if not rest:
            break
        (name, said, sub), rest = rest[0], rest[1:]
        child, rest = _build(name, said, sub, rest)
        children.append(child)
    return ReasonItem(rule, stop, text, tuple(children)), rest


def split_reason(rule: str, reason: str) -> ReasonItem:
    """The stop reason of ``rule`` as a tree of items; text that fits no structure is kept
    whole, so nothing the engine said is lost."""
    head, segments = _segments(reason)
    item, rest = _build(rule, True, head, segments)
    if rest:  # more markers than the heads announced: keep them as plain items
        extra = tuple(ReasonItem(name, said, text) for name, said, text in rest)
        item = ReasonItem(item.rule, item.stop, item.text, (*item.children, *extra))
    return item
