"""The package's layout, read from its source with ``ast``: dependencies run one way, from the
CLI down to the engine (docs/architecture.md draws the same arrows), no two modules import
each other, not even through a chain, and no module outgrows its one job.

An import inside ``if TYPE_CHECKING:`` does not count (it never runs); an import inside a
function does (it runs, later). Each check is also run on a small planted package, so a
checker that has stopped seeing anything fails here too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "monitor"

#: unit -> the units it may import. A unit is a subpackage of ``monitor`` or a module directly
#: under it; ``monitor`` itself (its ``__init__``: only ``__version__``) may be read by anyone.
SHARED = {"errors", "logs", "extras", "monitor"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "logs": set(),
    "extras": {"errors"},
    "stiffness": {"errors"},
    "config": {"stiffness"},
    "checkpoints": {"config"},
    "probe": {"config", "stiffness"},
    "store": {"stiffness"},
    "stopping": set(),
    "rules": {"store", "config"},
    "watching": {"checkpoints", "config"},
    "evaluation": {"checkpoints", "probe", "stiffness", "config"},
    "distributed": {"stiffness"},
    "exporter": {"rules", "config"},
    "daemon": {
        "evaluation",
        "watching",
        "exporter",
        "rules",
        "store",
        "stopping",
        "probe",
        "checkpoints",
        "config",
        "distributed",
        "stiffness",
    },
    "report": {"store", "rules", "config"},
    "demo": {"report", "rules", "store", "stopping", "config"},
    "cli": {"daemon", "demo", "report", "evaluation", "distributed", "rules", "store", "config"}
    | {"cli_help"},
    "cli_help": set(),  # the words of --help
    "__main__": {"cli"},
    # first import paths of moved modules, kept as re-exports of their new home only
    "trainer": {"stopping"},
    "integrations": {"stopping"},
    "demo_trainer": {"demo"},
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return hidden


def imports_of(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, with the packages above each of them
    (whose ``__init__`` runs first)."""
    package = root.name
    tree = ast.parse(path.read_text(), filename=str(path))
    hidden = _type_checking_nodes(tree)
    named: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            named.add(node.module)
            named.update(f"{node.module}.{alias.name}" for alias in node.names)
    found: set[str] = set()
    for name in named:
        parts = name.split(".")
        if parts[0] != package:
            continue
        for end in range(1, len(parts) + 1):
            prefix = ".".join(parts[:end])
            if prefix in modules:
                found.add(prefix)
    me = module_name(path, root)
    ancestors = {me.rsplit(".", n)[0] for n in range(1, me.count(".") + 1)}
    return found - {me} - ancestors  # a package's own ``__init__`` runs first anyway


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    modules = set(files)
    return {name: imports_of(path, root, modules) for name, path in files.items()}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def wrong_way(graph: Mapping[str, set[str]], allowed: Mapping[str, set[str]]) -> list[str]:
    """Every import from one unit into another that the arrows do not allow. The shared units
    may be imported by every other unit; among themselves the table rules."""
    found = []
    for module, targets in sorted(graph.items()):
        source = unit_of(module)
        for target in sorted(targets):
            into = unit_of(target)
            if source not in allowed:
                found.append(f"{module}: its unit {source!r} is not in the layer table")
            elif into == source or (into in SHARED and source not in SHARED):
                continue
            elif into not in allowed[source]:
                found.append(f"{module} imports {target}: {source} may not import {into}")
    return found


def _walk_units(graph: Mapping[str, set[str]]) -> Iterator[str]:
    yield from sorted({unit_of(module) for module in graph})


# -- the package --------------------------------------------------------------------------


def test_no_import_cycle_in_the_package() -> None:
    assert find_cycle(import_graph(PACKAGE)) is None


def test_imports_follow_the_layers() -> None:
    assert wrong_way(import_graph(PACKAGE), ALLOWED) == []


def test_every_unit_is_in_the_layer_table() -> None:
    assert sorted(set(_walk_units(import_graph(PACKAGE))) - set(ALLOWED) - {"monitor"}) == []


def test_the_engine_imports_only_errors() -> None:
    graph = import_graph(PACKAGE)
    outside = {
        target
        for module, targets in graph.items()
        if unit_of(module) == "stiffness"
        for target in targets
        if unit_of(target) != "stiffness"
    }
    assert outside == {"monitor.errors"}


def test_at_most_ten_modules_directly_under_monitor() -> None:
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top


def test_no_module_over_300_lines() -> None:
    long = {
        str(path.relative_to(REPO)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 300
    }
    assert long == {}


def test_every_subpackage_says_what_it_owns_and_may_import() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(REPO)} has no docstring"
        if init.parent.name not in {"stiffness", "watching", "integrations"}:
            assert "May import" in doc, f"{init.relative_to(REPO)} does not say what it may import"


# -- the checker itself, on a planted package ---------------------------------------------


def _plant(root: Path, files: Mapping[str, str]) -> Path:
    package = root / "monitor"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in [package, *[p for p in package.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()
    return package


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    package = _plant(
        tmp_path,
        {
            "report/writer.py": "from monitor.report.figures import draw\n",
            "report/figures.py": "def draw():\n    from monitor.report.writer import save\n",
        },
    )
    cycle = find_cycle(import_graph(package))
    assert cycle is not None
    assert set(cycle) == {"monitor.report.writer", "monitor.report.figures"}


def test_a_type_checking_import_is_not_a_cycle(tmp_path: Path) -> None:
    package = _plant(
        tmp_path,
        {
            "store/a.py": "from monitor.store.b import B\n",
            "store/b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from monitor.store.a import A\n"
            ),
        },
    )
    assert find_cycle(import_graph(package)) is None


@pytest.mark.parametrize(
    ("module", "text", "expected"),
    [
        ("stiffness/engine.py", "from monitor.config.schema import X\n", "stiffness may not"),
        ("config/schema.py", "import monitor.exporter.server\n", "config may not import exporter"),
        ("stopping/trainer.py", "from monitor import store\n", "stopping may not import store"),
        ("newthing/a.py", "from monitor.errors import E\n", "not in the layer table"),
    ],
    ids=["engine-to-config", "config-to-exporter", "stopping-to-store", "unknown-unit"],
)
def test_an_import_against_the_arrows_is_found(
    tmp_path: Path, module: str, text: str, expected: str
) -> None:
    package = _plant(
        tmp_path,
        {
            module: text,
            "errors.py": "class E(Exception): ...\n",
            "config/schema.py": "X = 1\n" if module != "config/schema.py" else text,
            "exporter/server.py": "",
            "store/store.py": "",
        },
    )
    found = wrong_way(import_graph(package), ALLOWED)
    assert any(expected in line for line in found), found


def test_allowed_imports_are_not_reported(tmp_path: Path) -> None:
    package = _plant(
        tmp_path,
        {
            "daemon/loop.py": "from monitor.store.store import S\nfrom monitor.errors import E\n",
            "store/store.py": "from monitor.errors import E\nS = 1\n",
            "errors.py": "class E(Exception): ...\n",
        },
    )
    assert wrong_way(import_graph(package), ALLOWED) == []
