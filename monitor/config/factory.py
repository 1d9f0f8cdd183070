"""Build the operator's model (and probe) from ``"package.module:function"`` strings.

Only the operator's config may name code to import; rule files never do. The config file's
folder is put on ``sys.path`` first, so a config can sit beside the ``models.py`` it names.
``import_callable`` is the one resolver for every such string: the model factory's failures
are ``ModelFactoryError``s, the probe factory's ``ProbeError``s, with the same wording.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from monitor.errors import ModelFactoryError, MonitorError


def add_import_path(base_dir: Path) -> None:
    """Let factories name modules that sit beside the config file."""
    if str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))


def import_callable(
    spec: str, error: type[MonitorError] = ModelFactoryError, what: str = ""
) -> Callable[..., Any]:
    """Resolve ``"package.module:function"`` to the callable.

    Failures raise ``error`` with a message that says which part failed: the spec's shape,
    importing the module, the attribute, or that it is not callable. ``what`` (e.g.
    ``"probe factory"``) starts the message so the operator knows which config key to fix.
    """
    name = f"{what} {spec!r}" if what else repr(spec)
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise error(f"{name}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"{name}: cannot import module {module_name!r} ({exc})") from exc
    except Exception as exc:  # importing runs the operator's code; any failure is theirs to see
        raise error(
            f"{name}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise error(f"{name}: module {module_name!r} has no attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise error(f"{name}: {attribute!r} is not callable (got {type(target).__name__})")
    return target  # type: ignore[no-any-return]


def build_model(spec: str, kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """Call the factory with its kwargs; the result must be an ``nn.Module``."""
    factory = import_callable(spec)
    try:
        model = factory(**dict(kwargs))
    except Exception as exc:  # the factory is the operator's code
        raise ModelFactoryError(
            f"{spec!r}: calling it with {dict(kwargs)!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelFactoryError(
            f"{spec!r}: expected it to return a torch.nn.Module, got {type(model).__name__}"
        )
    return model
