"""Where a model's output keeps its logits: ``OutputSpec``.

Models return their logits in many shapes: a bare tensor; a plain dict such as
``{"loss": ..., "logits": ...}`` (what Hugging Face ``Trainer`` accepts from a custom
``PreTrainedModel``); a ``transformers`` ``ModelOutput`` (an ``OrderedDict`` with attributes);
a tuple ``(logits, hidden)``. ``OutputSpec`` says where the logits are: found automatically by
default, or named by the config (``model.output``: a key, attribute or index;
``model.output_fn``: a function of the output). The engine receives it as plain data and a
callable; it imports nothing of the config. The same reading serves (B, C) class logits and
(B, T, V) token logits: the caller says how many dimensions it expects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from monitor.errors import EngineError

_SHOWN = 8  # keys an error message lists


def _keys_of(output: Any) -> str:
    """The keys (or public attributes, or length) ``output`` does have, for an error."""
    if isinstance(output, Mapping):
        keys = [repr(key)[:60] for key in output]  # a key can be any long string
        what = "keys"
    elif isinstance(output, tuple | list):
        return f"{len(output)} elements"
    else:
        keys = (
            [name for name in vars(output) if not name.startswith("_")]
            if hasattr(output, "__dict__")
            else []
        )
        what = "attributes"
    if not keys:
        return f"no {what}"
    shown = ", ".join(keys[:_SHOWN]) + (", ..." if len(keys) > _SHOWN else "")
    return f"{what} {shown}"


def _named(output: Any, field: str | int) -> Any:
    """``output[field]`` for a mapping or a sequence, else ``output.<field>``."""
    if isinstance(field, int):
        if isinstance(output, Mapping):  # ModelOutput indexes like its tuple; a dict does not
            values = list(output.values())
            if -len(values) <= field < len(values):
                return values[field]
        elif isinstance(output, tuple | list) and -len(output) <= field < len(output):
            return output[field]
    elif isinstance(output, Mapping):
        if field in output:
            return output[field]
    elif isinstance(field, str) and hasattr(output, field):
        return getattr(output, field)
    name = f"index {field}" if isinstance(field, int) else repr(field)
    raise EngineError(
        f"model output of type {type(output).__name__} has no {name} "
        f"(it has {_keys_of(output)}); set model.output to the key, attribute or index "
        "that holds the logits"
    )


def _found(output: Any) -> Any:
    """The logits by the default rule: the tensor itself, ``["logits"]`` of a mapping,
    ``.logits``, or element 0 of a tuple or list."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if "logits" in output:
            return output["logits"]
    elif hasattr(output, "logits"):
        return output.logits
    elif isinstance(output, tuple | list) and output:
        return output[0]
    raise EngineError(
        f"model output of type {type(output).__name__} holds no logits tensor (it has "
        f"{_keys_of(output)}); set model.output to the key, attribute or index that holds "
        "the logits, or model.output_fn to a function that picks them"
    )


@dataclass(frozen=True)
class OutputSpec:
    """Where a model's output keeps its logits ((B, C) class or (B, T, V) token logits).

    ``field``: a key (a mapping's, ``ModelOutput``'s), an attribute, or an index (a tuple's,
    a list's; a mapping's values in order). ``function``: called with the whole output, returns
    the logits (a ``torch.func`` transform runs it too, so it must be a pure tensor
    function). Neither: ``_found``'s rule. Both: refused.
    """

    field: str | int | None = None
    function: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if self.field is not None and self.function is not None:
            raise ValueError("give the output's field or a function, not both")

    @property
    def function_name(self) -> str:
        return str(getattr(self.function, "__qualname__", repr(self.function)))

    def describe(self) -> str:
        """How the logits were found, for an error message."""
        if self.function is not None:
            return f" (model.output_fn {self.function_name})"
        return "" if self.field is None else f" (model.output {self.field!r})"

    def logits(self, output: Any, dims: int = 2) -> torch.Tensor:
        """The logits in ``output``: (B, C) with ``dims`` 2, (B, T, V) with ``dims`` 3 (a
        sequence loss); EngineError naming what it found otherwise."""
        if self.function is not None:
            try:
                logits = self.function(output)
            except (LookupError, AttributeError, TypeError, ValueError) as error:
                raise EngineError(
                    f"model.output_fn {self.function_name} failed on the model's output of "
                    f"type {type(output).__name__} ({type(error).__name__}: {error})"
                ) from error
        elif self.field is not None:
            logits = _named(output, self.field)
        else:
            logits = _found(output)
        if not isinstance(logits, torch.Tensor) or logits.dim() != dims:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            want = "(batch, classes)" if dims == 2 else "(batch, positions, vocabulary)"
            raise EngineError(
                f"model output must be {want} logits{self.describe()}, got shape {shape}"
            )
        return logits


DEFAULT_OUTPUT = OutputSpec()
