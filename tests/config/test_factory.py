"""``monitor.config.factory`` against real modules written to a temporary folder.

Every way a ``"module:function"`` spec can fail must be a ``ModelFactoryError`` (or the error
type the caller names) whose message says which part failed, because ``check`` shows it to
the operator as is.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from monitor.config.factory import (
    add_import_path,
    build_model,
    import_callable,
    standard_library_factory,
)
from monitor.errors import ModelFactoryError, ProbeError

FACTORIES = """
import torch

NOT_CALLABLE = 3


def build(width=2):
    return torch.nn.Linear(width, 4)


def failing(**kwargs):
    raise ValueError("no GPU for this model")


def number():
    return 7


class Namespace:
    @staticmethod
    def build():
        return torch.nn.Identity()
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on a private copy of ``sys.path``; modules imported from it are forgotten."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write_module(folder: Path, source: str) -> str:
    """Write ``source`` as a uniquely named module in ``folder``; return its name."""
    name = f"factories_{uuid.uuid4().hex[:12]}"
    (folder / f"{name}.py").write_text(source)
    add_import_path(folder)
    return name


@pytest.fixture
def factories(folder: Path) -> str:
    return write_module(folder, FACTORIES)


def test_a_good_factory_builds_the_model(factories: str) -> None:
    model = build_model(f"{factories}:build", {"width": 3})
    assert isinstance(model, nn.Linear) and model(torch.zeros(5, 3)).shape == (5, 4)
    assert isinstance(build_model(f"{factories}:Namespace.build", {}), nn.Identity)
    assert import_callable(f"{factories}:number")() == 7


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", r"'no_colon_here': expected 'package\.module:function'"),
        (":build", r"expected 'package\.module:function'"),
        ("{mod}:", r"expected 'package\.module:function'"),
        ("no_such_module_7f3a:build", r"cannot import module 'no_such_module_7f3a'"),
        ("{mod}:missing", r"module '{mod}' has no attribute 'missing'"),
        ("{mod}:Namespace.missing", r"has no attribute 'missing'"),
        ("{mod}:NOT_CALLABLE", r"'NOT_CALLABLE' is not callable \(got int\)"),
    ],
    ids=[
        "no-colon",
        "no-module",
        "no-function",
        "module-missing",
        "attribute-missing",
        "nested-attribute-missing",
        "not-callable",
    ],
)
def test_resolving_fails_clearly(factories: str, spec: str, message: str) -> None:
    spec = spec.format(mod=factories)
    with pytest.raises(ModelFactoryError, match=message.format(mod=factories)) as caught:
        build_model(spec, {})
    assert str(caught.value).startswith(repr(spec))


def test_a_module_whose_import_raises(folder: Path) -> None:
    name = write_module(folder, "raise RuntimeError('CUDA_HOME is not set')\n")
    with pytest.raises(
        ModelFactoryError,
        match=rf"importing '{name}' raised RuntimeError: CUDA_HOME is not set",
    ):
        build_model(f"{name}:build", {})


def test_a_module_whose_own_import_is_missing(folder: Path) -> None:
    name = write_module(folder, "import no_such_dependency_7f3a\n")
    with pytest.raises(
        ModelFactoryError, match=rf"cannot import module '{name}'.*no_such_dependency_7f3a"
    ):
        build_model(f"{name}:build", {})


def test_a_factory_that_raises(factories: str) -> None:
    with pytest.raises(
        ModelFactoryError,
        match=r"calling it with \{'depth': 2\} raised ValueError: no GPU for this model",
    ):
        build_model(f"{factories}:failing", {"depth": 2})


def test_factory_kwargs_it_does_not_take(factories: str) -> None:
    with pytest.raises(ModelFactoryError, match=r"raised TypeError: .*'depth'"):
        build_model(f"{factories}:build", {"depth": 2})


def test_a_factory_that_returns_no_module(factories: str) -> None:
    with pytest.raises(
        ModelFactoryError, match=r"expected it to return a torch\.nn\.Module, got int"
    ):
        build_model(f"{factories}:number", {})


def test_the_caller_chooses_the_error_type_and_label(factories: str) -> None:
    with pytest.raises(ProbeError, match=rf"^probe factory '{factories}:missing': module") as got:
        import_callable(f"{factories}:missing", error=ProbeError, what="probe factory")
    assert not isinstance(got.value, ModelFactoryError)
    with pytest.raises(ProbeError, match=r"^probe factory 'nocolon': expected"):
        import_callable("nocolon", error=ProbeError, what="probe factory")


def test_import_path_is_added_once(folder: Path) -> None:
    add_import_path(folder)
    add_import_path(folder)
    assert sys.path.count(str(folder)) == 1 and sys.path[0] == str(folder)


def test_a_huge_kwargs_value_is_quoted_short(factories: str) -> None:
    """The factory's kwargs used to be quoted whole: an alias bomb took 91 s and 6 GB."""
    value: object = ["lol"] * 9
    for _ in range(8):
        value = [value] * 9  # 9**9 strings, shared as yaml.safe_load builds them
    start = time.monotonic()
    with pytest.raises(ModelFactoryError) as caught:
        build_model(f"{factories}:failing", {"depth": value})
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert "calling it with {'depth': [[[...]" in message and len(message) < 300, message


@pytest.mark.parametrize(
    ("spec", "module"),
    [
        ("os:system", "os"),
        ("subprocess:run", "subprocess"),
        ("builtins:exec", "builtins"),
        ("collections:UserList", "collections"),
        ("{reexport}:build", "posix"),  # a module beside the config that re-exports os.system
    ],
)
def test_standard_library_factories_are_named(folder: Path, spec: str, module: str) -> None:
    reexport = write_module(folder, "from os import system as build\n")
    assert standard_library_factory(spec.format(reexport=reexport)) == module


@pytest.mark.parametrize(
    "spec",
    [
        "{factories}:build",  # beside the config
        "{factories}:Namespace.build",
        "torch.nn:Linear",  # an installed package
        "yaml:safe_load",
        "monitor.demo_trainer:build_mlp",  # this package, wherever it is installed
        "no_such_module_7f3a:build",  # unresolvable: building reports it
        "{factories}:missing",
    ],
)
def test_the_operators_own_and_installed_factories_are_not_named(factories: str, spec: str) -> None:
    assert standard_library_factory(spec.format(factories=factories)) is None
