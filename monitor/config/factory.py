"""Build the operator's model (and probe) from ``"package.module:function"`` strings.

Only the operator's config may name code to import; rule files never do. The config file's
folder is put on ``sys.path`` first, so a config can sit beside the ``models.py`` it names.
``import_callable`` is the one resolver for every such string: the model factory's failures
are ``ModelFactoryError``s, the probe factory's ``ProbeError``s, with the same wording.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import sysconfig
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from monitor.config.quoting import cut, short
from monitor.errors import ModelFactoryError, MonitorError
from monitor.stiffness.outputs import DEFAULT_OUTPUT, OutputSpec


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
    name = f"{what} {short(spec)}" if what else short(spec)
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise error(f"{name}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"{name}: cannot import module {short(module_name)} ({cut(str(exc))})") from exc
    except Exception as exc:  # importing runs the operator's code; any failure is theirs to see
        raise error(
            f"{name}: importing {short(module_name)} raised {type(exc).__name__}: {cut(str(exc))}"
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise error(f"{name}: module {short(module_name)} has no attribute {short(part)}")
        target = getattr(target, part)
    if not callable(target):
        raise error(f"{name}: {short(attribute)} is not callable (got {type(target).__name__})")
    return target  # type: ignore[no-any-return]


def build_model(spec: str, kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """Call the factory with its kwargs; the result must be an ``nn.Module``."""
    factory = import_callable(spec)
    try:
        model = factory(**dict(kwargs))
    except Exception as exc:  # the factory is the operator's code
        raise ModelFactoryError(
            f"{short(spec)}: calling it with {short(dict(kwargs))} raised "
            f"{type(exc).__name__}: {cut(str(exc))}"
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelFactoryError(
            f"{short(spec)}: expected it to return a torch.nn.Module, got {type(model).__name__}"
        )
    return model


def output_spec(output: str | int | None, output_fn: str | None) -> OutputSpec:
    """Where the model's output keeps its logits, from ``model.output`` and
    ``model.output_fn`` (imported here, so a bad one fails at start-up, not per checkpoint)."""
    if output_fn is not None:
        return OutputSpec(function=import_callable(output_fn, what="model.output_fn"))
    return DEFAULT_OUTPUT if output is None else OutputSpec(field=output)


def _stdlib_dirs() -> tuple[Path, ...]:
    """The interpreter's own library folders (a virtualenv's ``stdlib`` is its base's)."""
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    paths = sysconfig.get_paths(vars=base)
    return tuple({Path(paths[key]).resolve() for key in ("stdlib", "platstdlib")})


def _in_standard_library(name: str) -> bool:
    """Whether module ``name`` is Python's own: built in, frozen, or in the stdlib folders
    (and not an installed package, which a system Python keeps below them)."""
    module = sys.modules.get(name)
    try:
        spec = getattr(module, "__spec__", None) or importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    origin = getattr(spec, "origin", None)
    if origin in ("built-in", "frozen"):
        return True
    if not isinstance(origin, str):
        return False  # a namespace package: no code of its own
    path = Path(origin).resolve()
    if {"site-packages", "dist-packages"} & set(path.parts):
        return False
    return any(path.is_relative_to(folder) for folder in _stdlib_dirs())


def standard_library_factory(spec: str) -> str | None:
    """The module of Python's standard library a factory spec names, else None.

    A config may name any callable, and the daemon calls it: ``os:system`` with
    ``kwargs: {command: ...}`` runs a shell command. That is by design (the config is code),
    but a factory is meant to be the operator's function, beside the config or in an
    installed package; one from the standard library (``os:system``, ``subprocess:run``,
    ``builtins:exec``, or a module beside the config that re-exports one) is most likely not
    a model, and ``check`` says so. Imports the module, as building it would; a spec that
    cannot be resolved gives None (building reports that).
    """
    try:
        target = import_callable(spec)
    except MonitorError:
        return None
    names = [spec.partition(":")[0]]
    defined_in = getattr(target, "__module__", None)
    if (inspect.isroutine(target) or inspect.isclass(target)) and isinstance(defined_in, str):
        names.append(defined_in)  # where it is defined, when a module re-exports it
    return next((name for name in names if _in_standard_library(name)), None)
