"""The ``tensorboard`` section: on by default inside each run's folder, movable with the same
``{run_dir}``/``{run}`` templates as ``stop.file``, and never two runs in one folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config.schema import load_config
from monitor.errors import ConfigError

RUNS = "runs: [{name: a, path: ckpt/a}, {name: b, path: /abs/b}]\n"


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("probe: {path: p.pt}\n" + RUNS + text)
    return path


def test_on_by_default_in_a_folder_inside_each_run_folder(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, ""))
    assert config.tensorboard.enabled
    folders = [config.tensorboard_dir(run) for run in config.runs]
    assert folders == [tmp_path / "ckpt/a/stiffness-monitor", Path("/abs/b/stiffness-monitor")]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("boards/{run}", ["boards/a", "boards/b"]),  # relative to the config file's folder
        ("/tb/{run}-stiffness", ["/tb/a-stiffness", "/tb/b-stiffness"]),
        ("{run_dir}/../tb/{run}", ["ckpt/a/../tb/a", "/abs/b/../tb/b"]),  # not resolved
    ],
)
def test_dir_is_a_template_like_the_stop_file(
    tmp_path: Path, template: str, expected: list[str]
) -> None:
    config = load_config(config_file(tmp_path, f"tensorboard: {{dir: '{template}'}}\n"))
    assert [config.tensorboard_dir(run) for run in config.runs] == [
        tmp_path / path for path in expected
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("tensorboard: {dir: '{name}/tb'}\n", "tensorboard.dir: expected a path template"),
        ("tensorboard: {dir: shared}\n", "tensorboard: expected one folder per run"),
        ("tensorboard: {enabled: maybe}\n", "tensorboard.enabled"),
        ("tensorboard: {path: x}\n", "tensorboard.path: unknown key"),
    ],
    ids=["field", "shared", "enabled", "unknown"],
)
def test_mistakes_name_the_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = config_file(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_a_shared_folder_is_fine_while_tensorboard_is_off(tmp_path: Path) -> None:
    config = load_config(config_file(tmp_path, "tensorboard: {enabled: false, dir: shared}\n"))
    assert not config.tensorboard.enabled
