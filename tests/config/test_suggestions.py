"""A misspelt key names the key that was meant, at every depth of the config and rule files,
and a key nothing resembles lists what the section accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from monitor.config.schema import MonitorConfig, parse_config
from monitor.config.suggestions import known_keys
from monitor.errors import ConfigError
from monitor.rules.spec import RuleSet, parse_rules

CONFIG = """\
probe: {path: probe.pt}
stiffnes: {mode: class}
stiffness: {mdoe: pair, batchsize: 3}
runs:
  - {name: a, path: run, patern: ['*.pt']}
metrics: {prot: 9108}
model: {outptu: logits, zzzzz: 1}
"""

RULES = """\
rules:
  - kind: decline
    metirc: within_class
    smoothing: {knd: ema}
  - kind: all
    rules:
      - {kind: slope, treshold: 0.1}
"""


def problems(text: str, parse: str, tmp_path: Path) -> list[str]:
    source = tmp_path / "file.yaml"
    with pytest.raises(ConfigError) as caught:
        if parse == "config":
            parse_config(yaml.safe_load(text), source, text)
        else:
            parse_rules(yaml.safe_load(text), source, text)
    prefix = f"{source}:"
    assert all(line.startswith(prefix) for line in caught.value.problems)
    return [line.removeprefix(prefix) for line in caught.value.problems]


def test_config_keys_at_every_depth(tmp_path: Path) -> None:
    assert problems(CONFIG, "config", tmp_path) == [
        "2: stiffnes: unknown key (did you mean 'stiffness'?)",
        "3: stiffness.mdoe: unknown key (did you mean 'mode'?)",
        "3: stiffness.batchsize: unknown key (did you mean 'batch_size'?)",
        "5: runs[0].patern: unknown key (did you mean 'patterns' or 'path'?)",
        "6: metrics.prot: unknown key (did you mean 'port'?)",
        "7: model.outptu: unknown key (did you mean 'output' or 'output_fn'?)",
        "7: model.zzzzz: unknown key (expected one of: factory, kwargs, output, output_fn)",
    ]


def test_rule_keys_follow_the_rule_kind(tmp_path: Path) -> None:
    assert problems(RULES, "rules", tmp_path) == [
        "3: rules[0].metirc: unknown key (did you mean 'metric'?)",
        "4: rules[0].smoothing.knd: unknown key (did you mean 'kind'?)",
        "7: rules[1].rules[0].treshold: unknown key (did you mean 'threshold'?)",
    ]


def test_known_keys_leave_out_what_the_file_cannot_set() -> None:
    top = known_keys(MonitorConfig, [])
    assert top is not None and "source" not in top and "stiffness" in top
    assert known_keys(RuleSet, ["rules", 0, "no-such-kind"]) is None
