"""Rule files: every shipped set loads, and mistakes are named with file, line and key."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from monitor.errors import ConfigError
from monitor.rules.spec import RuleSet, load_rules, parse_rules, shipped_rules_path

REPO_RULES = sorted((Path(__file__).resolve().parents[2] / "rules").glob("*.yaml"))


@pytest.mark.parametrize("path", REPO_RULES, ids=[p.stem for p in REPO_RULES])
def test_every_shipped_rule_set_loads(path: Path) -> None:
    rules = load_rules(path, Path("config.yaml"))
    assert isinstance(rules, RuleSet)
    assert rules.rules
    assert rules.description


def test_default_is_found_through_the_installed_package() -> None:
    assert (
        shipped_rules_path().read_text()
        == (Path(__file__).resolve().parents[2] / "rules/default.yaml").read_text()
    )
    assert load_rules(None, Path("config.yaml")).source.endswith("default.yaml")


def test_inline_rules_report_the_config_file_and_line(tmp_path: Path) -> None:
    text = (
        "probe: {path: p}\nrules:\n  - kind: decline\n    metric: within_class\n    patience: 0\n"
    )
    source = tmp_path / "config.yaml"
    with pytest.raises(ConfigError) as info:
        load_rules([{"kind": "decline", "metric": "within_class", "patience": 0}], source, text)
    assert info.value.problems == [f"{source}:5: rules[0].patience: expected a value >= 1, got 0"]


@pytest.mark.parametrize(
    ("rules", "fragment"),
    [
        pytest.param([{"kind": "magic"}], "kind: expected one of 'decline'", id="unknown-kind"),
        pytest.param(
            [{"kind": "decline", "metric": "accuracy"}], "class_within:<label>", id="metric"
        ),
        pytest.param(
            [{"kind": "decline", "module": "os:system"}], "module: unknown key", id="code"
        ),
        pytest.param([{"kind": "threshold"}], "stopping_threshold or divergence", id="threshold"),
        pytest.param([{"kind": "any", "rules": []}], "at least 1", id="empty-any"),
        pytest.param(
            [{"kind": "all", "rules": [{"kind": "slope", "window": 1}]}],
            "rules[0].rules[0].window",
            id="nested",
        ),
        pytest.param(
            [{"kind": "decline", "smoothing": {"kind": "ema", "alpha": 2}}],
            "smoothing.alpha",
            id="alpha",
        ),
        pytest.param([], "at least 1", id="no-rules"),
    ],
)
def test_rule_mistakes(rules: list[dict[str, object]], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(rules, "rules.yaml")
    assert fragment in str(info.value)
    assert "rules.yaml" in str(info.value)


def test_class_metric_is_accepted() -> None:
    rules = parse_rules([{"kind": "decline", "metric": "class_within:3"}], "inline")
    assert rules.rules[0].metric == "class_within:3"  # type: ignore[union-attr]


def test_rule_file_errors(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("rules: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_rules(bad_yaml, tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match="rules: file not found"):
        load_rules(tmp_path / "missing.yaml", tmp_path / "config.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(ConfigError, match="expected a mapping with a 'rules' list"):
        load_rules(scalar, tmp_path / "config.yaml")


def test_duplicate_rule_names_are_named_with_the_file() -> None:
    with pytest.raises(ConfigError, match="duplicates \\['same'\\]"):
        parse_rules(
            [{"kind": "decline", "name": "same"}, {"kind": "slope", "name": "same"}], "r.yaml"
        )


def billion_laughs(indent: str) -> str:
    lines = [f"{indent}a0: &a0 [{', '.join(['lol'] * 9)}]"]
    lines += [f"{indent}a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


def test_a_rules_file_alias_bomb_is_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    """A string where a mapping is expected used to be quoted whole: minutes and gigabytes."""
    bomb = tmp_path / "rules.yaml"
    bomb.write_text("rules: [{kind: decline}]\ndescription:\n" + billion_laughs("  "))
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_rules(bomb, tmp_path / "config.yaml")
    assert time.monotonic() - start < 5
    assert info.value.problems == [
        f"{bomb}:7:12: alias *a3 takes the values repeated by aliases past 10,000 "
        "(a YAML alias bomb?); write the values out instead"
    ]


def test_an_oversized_rules_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "rules.yaml"
    big.write_text("rules: [{kind: decline}]\n" + "#" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"rules\.yaml: the rules file is larger than the limit"):
        load_rules(big, tmp_path / "config.yaml")


def test_a_long_metric_name_is_quoted_short() -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules([{"kind": "decline", "metric": "m" * 100_000}], "rules.yaml")
    [line] = info.value.problems
    assert "got 'mmmm" in line and len(line) < 800, line
