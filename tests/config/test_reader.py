"""``monitor.config.reader``: YAML files are read within bounds (size, alias expansion,
depth), and everything that cannot be loaded is a ``ConfigError`` naming the file and line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from monitor.config.quoting import cut, short
from monitor.config.reader import (
    ALIAS_BUDGET,
    MAX_DEPTH,
    MAX_YAML_BYTES,
    compose_yaml,
    parse_yaml,
    read_yaml,
)
from monitor.errors import ConfigError

SOURCE = Path("/etc/monitor/config.yaml")


def alias_bomb(levels: int = 9, width: int = 9, indent: str = "") -> str:
    """Billion laughs: each anchor is ``width`` aliases of the one before (9**9 strings)."""
    lines = [f"{indent}a0: &a0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"{indent}a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def problem(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, SOURCE)
    [line] = info.value.problems
    return line


def test_anchors_reused_as_intended_load() -> None:
    runs = "\n".join(f"  - {{<<: *defaults, name: run-{i}, path: /ckpt/{i}}}" for i in range(200))
    text = (
        "defaults: &defaults {patterns: &patterns ['*.pt', '*.ckpt', '*.safetensors']}\n"
        f"runs:\n{runs}\nwatch: {{ready_markers: *patterns}}\n"
    )
    data = parse_yaml(text, SOURCE)
    assert len(data["runs"]) == 200
    assert data["runs"][199] == {
        "name": "run-199",
        "path": "/ckpt/199",
        "patterns": ["*.pt", "*.ckpt", "*.safetensors"],
    }
    assert data["watch"]["ready_markers"] == ["*.pt", "*.ckpt", "*.safetensors"]


def test_an_alias_bomb_is_refused_at_the_alias_that_crosses_the_budget() -> None:
    start = time.monotonic()
    line = problem("model:\n  kwargs:\n" + alias_bomb(indent="    "))
    assert time.monotonic() - start < 5
    # expanded sizes: a0 10 values, a1 91, a2 820, a3 7381; aliases up to a3's line repeat
    # 9*10 + 9*91 + 9*820 = 8289 values, and a4's first *a3 takes them past 10,000
    assert line == (
        f"{SOURCE}:7:14: alias *a3 takes the values repeated by aliases past {ALIAS_BUDGET:,} "
        "(a YAML alias bomb?); write the values out instead"
    )


def test_one_long_string_repeated_counts_by_its_length() -> None:
    text = f"a: &a '{'x' * 100_000}'\nb: [{', '.join(['*a'] * 20)}]\n"
    assert "alias *a takes the values" in problem(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a: &a [1, *a]\n", id="sequence"),
        pytest.param("a: &a {b: *a}\n", id="mapping"),
        pytest.param("a: &a [[[*a]]]\n", id="nested"),
    ],
)
def test_an_alias_inside_its_own_anchor_is_refused(text: str) -> None:
    assert (
        problem(text)
        == f"{SOURCE}:1:{text.index('*') + 1}: alias *a refers to the collection it is in"
    )


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_deep_nesting_is_refused_not_a_recursion_error(depth: int) -> None:
    line = problem("[" * depth + "]" * depth)
    assert line.startswith(f"{SOURCE}:1:") and f"nested deeper than {MAX_DEPTH} levels" in line


def test_nesting_up_to_the_limit_loads() -> None:
    data = parse_yaml("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1), SOURCE)
    for _ in range(MAX_DEPTH - 2):
        data = data[0]
    assert data == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param(
            "when: 2024-13-45\n",
            ":1:7: cannot read '2024-13-45' as timestamp (month must be in",
            id="timestamp",
        ),
        pytest.param("n: !!int 0x\n", ":1:4: cannot read '0x' as int (invalid literal", id="int"),
        pytest.param("!!int", ":1:1: cannot read '' as int", id="empty-int"),
        pytest.param("a: [!!float ]", ":1:5: cannot read '' as float", id="empty-float"),
        pytest.param(
            "!!timestamp yesterday", "cannot read 'yesterday' as timestamp", id="timestamp-text"
        ),
        pytest.param(f"n: {'1' * 5000}\n", "digits", id="huge-int"),
        pytest.param("b: !!binary 'a'\n", "failed to decode base64", id="binary"),
        pytest.param("p: !!python/object/apply:os.system ['true']\n", "python/object", id="code"),
        pytest.param("? [1]\n: x\n", "unhashable", id="unhashable-key"),
        pytest.param("a: 1\n---\nb: 2\n", "another document", id="two-documents"),
        pytest.param("a: *nowhere\n", "undefined alias", id="undefined-alias"),
        pytest.param("a: \x00\n", "special characters", id="nul"),
    ],
)
def test_what_python_cannot_build_is_a_config_error(text: str, fragment: str) -> None:
    line = problem(text)
    assert line.startswith(str(SOURCE)) and fragment in line and "\n" not in line


def test_read_yaml_refuses_files_over_the_cap_and_endless_devices(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("probe: {path: p.pt}\n" + "#" * MAX_YAML_BYTES + "\n")
    for path, what in ((big, "config file"), (Path("/dev/zero"), "rules file")):
        with pytest.raises(ConfigError) as info:
            read_yaml(path, "missing", "unreadable {error}", what=what)
        assert info.value.problems == [
            f"{path}: the {what} is larger than the limit of {MAX_YAML_BYTES:,} bytes (1 MiB) "
            "for a YAML file the monitor reads"
        ]
    exact = tmp_path / "exact.yaml"
    exact.write_text("a: 1\n" + "#" * (MAX_YAML_BYTES - 6) + "\n")
    assert read_yaml(exact, "missing", "unreadable")[0] == {"a": 1}


def test_read_yaml_missing_and_undecodable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^it is missing$"):
        read_yaml(tmp_path / "none.yaml", "it is missing", "unreadable {error}")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"^unreadable 'utf-8' codec can't decode"):
        read_yaml(latin, "missing", "unreadable {error}")


def test_compose_for_line_numbers_never_raises() -> None:
    assert compose_yaml("[" * 100_000) is None
    assert compose_yaml(alias_bomb()) is None
    node = compose_yaml("a:\n  b: 1\n")
    assert node is not None and node.value[0][1].value[0][0].start_mark.line == 1


def test_short_quotes_an_alias_bomb_without_expanding_it() -> None:
    value: object = ["lol"] * 9
    for _ in range(8):
        value = [value] * 9  # 9**9 strings, as safe_load builds them: shared references
    start = time.monotonic()
    text = short({"batch_size": value, "other": "x" * 10**6})
    assert time.monotonic() - start < 1
    assert len(text) <= 80 and text.startswith("{'batch_size': [[[...], [...]")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("fast", "'fast'"),
        ("line one\nline two", "'line one\\nline two'"),
        ("x" * 200, "'" + "x" * 76 + "..."),
        (12, "12"),
        (None, "None"),
    ],
)
def test_short_is_a_single_short_line(value: object, expected: str) -> None:
    assert short(value) == expected


def test_cut_keeps_free_text_on_one_line() -> None:
    assert cut("a\n  b\tc") == "a b c"
    assert cut("y" * 1000, 50) == "y" * 47 + "..."
