"""The config schema: the documented keys parse, and every mistake is named precisely."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from monitor.config.schema import MonitorConfig, load_config, parse_bytes, parse_config
from monitor.errors import ConfigError

# The example from DESIGN §4, verbatim: these key names are the contract.
# ruff: noqa: E501
DESIGN_EXAMPLE = """\
model:
  factory: mypkg.models:build_resnet18   # "module:function"; omit for TorchScript/export files
  kwargs: {num_classes: 10}
checkpoint:
  format: auto              # auto | state_dict | lightning | safetensors | hf | dcp | torchscript | export
  state_dict_key: null      # key of the state dict inside a wrapping dict; detected when null
  strict: true
  allow_pickle: false
  step_regex: 'step[_=-]?(\\d+)'
probe:
  path: data/probe.pt       # .pt or .npz with inputs, targets[, split]; or factory: pkg.mod:fn
  per_class: 50
  seed: 0
stiffness:
  mode: class               # class | pair
  device: auto              # auto | cpu | cuda | cuda:N
  batch_size: 64
  precision: fp32           # fp32 | tf32 | bf16
  memory_limit: null        # e.g. 8GiB
runs:
  - name: run-a
    path: /checkpoints/run-a
    patterns: ["*.pt", "*.ckpt", "*.safetensors"]
watch:
  observer: auto            # auto | native | polling
  poll_interval: 5          # seconds
  settle_seconds: 2
  backlog: all              # all | latest
rules: rules/default.yaml   # a rules file, or an inline list of rules
stop:
  file: "{run_dir}/STOP"
metrics:
  host: 127.0.0.1
  port: 9108
store:
  path: .stiffness-monitor/state.db
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_design_example_parses_with_paths_resolved_against_the_config_folder(
    tmp_path: Path,
) -> None:
    config = load_config(write(tmp_path, DESIGN_EXAMPLE))
    assert config.model.factory == "mypkg.models:build_resnet18"
    assert config.model.kwargs == {"num_classes": 10}
    assert config.probe.path == tmp_path / "data/probe.pt"
    assert config.runs[0].path == Path("/checkpoints/run-a")
    assert config.rules == tmp_path / "rules/default.yaml"
    assert config.store.path == tmp_path / ".stiffness-monitor/state.db"
    assert config.checkpoint.step_regex == r"step[_=-]?(\d+)"
    assert config.source == tmp_path / "config.yaml"


def test_minimal_config_fills_defaults_and_resolves_default_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "probe: {path: probe.pt}\n"))
    assert config.stiffness.mode == "class"
    assert config.probe.per_class == 50
    assert config.metrics.host == "127.0.0.1"
    assert config.store.path == tmp_path / ".stiffness-monitor/state.db"
    assert config.rules is None
    assert config.stiffness.engine_options().batch_size == 64
    assert config.stiffness.engine_options().backend == "auto"


def test_backend_reaches_the_engine_options(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "probe: {path: p.pt}\nstiffness: {backend: vmap}\n"))
    assert config.stiffness.engine_options().backend == "vmap"


def test_problems_name_file_line_key_expected_and_found(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "probe:\n  path: p.pt\n  per_class: 1\n"
        "stiffness:\n  mode: fast\n  batch_size: lots\n  colour: red\n",
    )
    found = problems(path)
    assert found == [
        f"{path}:3: probe.per_class: expected a value >= 2, got 1",
        f"{path}:5: stiffness.mode: expected 'class' or 'pair', got 'fast'",
        f"{path}:6: stiffness.batch_size: expected an integer, got 'lots'",
        f"{path}:7: stiffness.colour: unknown key (expected one of: mode, device, batch_size, "
        "precision, memory_limit, include, exclude, min_grad_norm, distance_bins, loss, "
        "uncertainty, backend, ...)",  # the first twelve of the section's keys
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("stiffness: {}\n", "probe: required key is missing", id="missing-probe"),
        pytest.param(
            "probe: {per_class: 5}\n", "exactly one of 'path' or 'factory'", id="no-source"
        ),
        pytest.param("probe: {path: a.pt, factory: 'm:f'}\n", "exactly one of", id="two-sources"),
        pytest.param("probe: {factory: notafactory}\n", "probe.factory", id="factory-format"),
        pytest.param("probe: {path: a}\nstiffness: {memory_limit: lots}\n", "8GiB", id="memory"),
        pytest.param("probe: {path: a}\ncheckpoint: {step_regex: 'step'}\n", "group", id="regex"),
        pytest.param(
            "probe: {path: a}\ncheckpoint: {step_regex: '('}\n", "regular", id="regex-bad"
        ),
        pytest.param(
            "probe: {path: a}\nstiffness: {device: gpu}\n", "stiffness.device", id="device"
        ),
        pytest.param(
            "probe: {path: a}\nstiffness: {backend: fast}\n", "stiffness.backend", id="backend"
        ),
        pytest.param(
            "probe: {path: a}\nruns: [{name: 'a b', path: x}]\n", "runs[0].name", id="name"
        ),
        pytest.param("probe: {path: a}\nruns: [{name: a}]\n", "runs[0].path: required", id="path"),
        pytest.param("probe: {path: a}\nmetrics: {port: 70000}\n", "metrics.port", id="port"),
        pytest.param("probe: {path: a}\nstop: {file: '{x}/STOP'}\n", "{run_dir}", id="stop"),
        pytest.param("probe: {path: a}\nsource: x\n", "source: unknown key", id="reserved"),
        pytest.param("- a\n- b\n", "expected a mapping of sections", id="list-top"),
        pytest.param("", "an empty file", id="empty"),
        pytest.param("probe: [a\n", "invalid YAML", id="yaml"),
    ],
)
def test_each_mistake_gets_a_specific_message(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    found = "\n".join(problems(path))
    assert fragment in found
    assert str(path) in found


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: config file not found"]
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert "cannot read" in problems(binary)[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8GiB", 8 * 2**30), ("512MB", 512 * 10**6), ("1.5KiB", 1536), ("1024", 1024), (4096, 4096)],
)
def test_sizes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


def test_configs_are_immutable(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "probe: {path: p.pt}\n"))
    assert isinstance(config, MonitorConfig)
    with pytest.raises(ValueError):
        config.stiffness.mode = "pair"  # type: ignore[misc]


def alias_bomb_value() -> object:
    """What ``yaml.safe_load`` builds from a billion-laughs file: 9**9 strings, all shared."""
    value: object = ["lol"] * 9
    for _ in range(8):
        value = [value] * 9
    return value


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("stiffness", "batch_size"),
        ("stiffness", "memory_limit"),
        ("stiffness", "include"),
        ("checkpoint", "step_regex"),
        ("stop", "file"),
        ("metrics", "basic_auth_user"),
    ],
)
def test_a_huge_value_is_quoted_short_and_fast(tmp_path: Path, section: str, key: str) -> None:
    """Data that never came through the bounded reader (``parse_config`` is public) is still
    quoted in a few characters: every message used to ``repr`` the whole value."""
    source = tmp_path / "config.yaml"
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        parse_config({"probe": {"path": "p.pt"}, section: {key: alias_bomb_value()}}, source)
    assert time.monotonic() - start < 5
    for line in info.value.problems:  # a list gets one line per item
        assert line.startswith(f"{source}: {section}.{key}") and len(line) < 400, line


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param(
            "stiffness: {memory_limit: 1e999}\n", "8GiB or 512MB, got '1e999'", id="infinite-size"
        ),
        pytest.param(
            "stop: {file: '{run_dir:>2000000000}/STOP'}\n", "only {run_dir} and {run}", id="width"
        ),
        pytest.param("stop: {file: '{run_dir.__class__}'}\n", "only {run_dir}", id="attribute"),
        pytest.param("stop: {file: '{run!r}/STOP'}\n", "only {run_dir}", id="conversion"),
        pytest.param("stop: {file: '{run_dir'}\n", "only {run_dir}", id="unclosed"),
        pytest.param(
            "checkpoint: {step_regex: '" + "(" * 2000 + ")" * 2000 + "'}\n",
            "expected a regular expression",
            id="deep-regex",
        ),
        pytest.param(f"stiffness: {{{'k' * 1000}: 1}}\n", "stiffness.'kkkk", id="long-key"),
        pytest.param(
            'stiffness: {"a\\nb": 1}\n', "stiffness.'a\\nb': unknown key", id="newline-key"
        ),
    ],
)
def test_values_that_would_cost_memory_or_lines_are_refused_short(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = write(tmp_path, "probe: {path: p.pt}\n" + text)
    [line] = problems(path)
    assert fragment in line and len(line) < 400 and "\n" not in line, line


def test_stop_file_templates_that_only_name_the_fields_still_load(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "probe: {path: p}\nstop: {file: '{run_dir}/{run}.STOP'}\n")
    )
    assert config.stop.file == "{run_dir}/{run}.STOP"


def test_secret_files_must_be_regular_and_small(tmp_path: Path) -> None:
    user = "probe: {path: p}\nmetrics: {basic_auth_user: u, basic_auth_password_file: %s}\n"
    [line] = problems(write(tmp_path, user % "/dev/zero"))
    assert "metrics.basic_auth_password_file: expected a regular file, got '/dev/zero'" in line
    huge = tmp_path / "password"
    huge.write_bytes(b"p" * 10_000)
    [line] = problems(write(tmp_path, user % huge))
    assert "expected a password of at most 4096 bytes" in line
