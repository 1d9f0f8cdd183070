""" "Did you mean": the keys a section accepts, for a key it does not.

Unknown keys are errors (a misspelt setting silently ignored is one the operator believes in
but does not have); the error is quicker to fix when it names the key that was meant. The
keys come from the pydantic model itself, walked along the error's location, so they can
never drift from the schema; ``difflib`` picks the close ones.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

_LISTED = 12  # keys listed when none is close


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Every pydantic model an annotation can hold: ``list[RunConfig]``, ``A | B | None``."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _tagged(model: type[BaseModel], tag: str) -> bool:
    """Whether one of the model's ``Literal`` fields accepts ``tag`` (a union's discriminator)."""
    for field in model.model_fields.values():
        if get_origin(field.annotation) is Literal and tag in get_args(field.annotation):
            return True
    return False


def known_keys(root: type[BaseModel], loc: Sequence[int | str]) -> list[str] | None:
    """The keys the section at ``loc`` (the unknown key's parents) accepts, or None when the
    location cannot be followed. Indices and discriminator tags (a rule's ``kind``) in the
    location narrow the candidates; fields excluded from the file (``source``) are left out."""
    candidates: list[type[BaseModel]] = [root]
    for item in loc:
        if isinstance(item, int):
            continue
        tagged = [m for m in candidates if _tagged(m, item)]
        if len(candidates) > 1 and tagged:  # a union: the tag picks the branch
            candidates = tagged
        else:  # a key (a tag may also be a field's name: ``threshold``)
            fields = [m.model_fields[item] for m in candidates if item in m.model_fields]
            candidates = [m for f in fields for m in _models_in(f.annotation)]
        if not candidates:
            return None
    keys = {name: None for m in candidates for name, f in m.model_fields.items() if not f.exclude}
    return list(keys)


def suggestion(root: type[BaseModel] | None, loc: Sequence[int | str]) -> str:
    """`` (did you mean 'x'?)`` or `` (expected one of: ...)`` for the unknown key at the end
    of ``loc``; empty when the section's keys cannot be found."""
    if root is None or not loc or not isinstance(loc[-1], str):
        return ""
    keys = known_keys(root, loc[:-1])
    if not keys:
        return ""
    close = difflib.get_close_matches(loc[-1], keys, n=2, cutoff=0.6)
    if close:
        return f" (did you mean {' or '.join(repr(key) for key in close)}?)"
    shown = ", ".join(keys[:_LISTED]) + (", ..." if len(keys) > _LISTED else "")
    return f" (expected one of: {shown})"
