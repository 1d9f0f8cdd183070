"""Values and free text quoted in error messages: short, and on one line.

A value from a config file can be enormous (a string of a megabyte, or a YAML alias bomb that
expands to millions of items when walked), and a message that quotes it whole costs minutes
and gigabytes before anyone reads it. Only a bounded part of a value is ever looked at here.
"""

from __future__ import annotations

import reprlib
from typing import Any


def _bounded_repr() -> reprlib.Repr:
    """A repr that stops early: a few items per collection, a few levels, short strings."""
    bounded = reprlib.Repr()
    bounded.maxlevel = 3
    bounded.maxlist = bounded.maxtuple = bounded.maxset = bounded.maxfrozenset = 4
    bounded.maxdict = 4
    bounded.maxstring = bounded.maxother = bounded.maxlong = 60
    return bounded


_REPR = _bounded_repr()


def short(value: Any, limit: int = 80) -> str:
    """``value`` as a short, single-line repr for an error message."""
    try:
        text = repr(value[:limit]) if isinstance(value, str) else _REPR.repr(value)
    except Exception:  # a value's own __repr__ failing must not hide the real problem
        text = f"<{type(value).__name__}>"
    return cut(text, limit)


def cut(text: str, limit: int = 300) -> str:
    """Free text (an exception's message) on one line and at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
