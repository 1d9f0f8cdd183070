"""The training split's gradient statistics end to end: real checkpoint files of a CNN with
BatchNorm, evaluated with ``stiffness.statistics`` into a real store, a rule over
``opposing_share`` replayed by ``backtest`` in a fresh interpreter, the report's "Suspect
labels" table, and ``check``'s warning when a rule reads them with the switch off."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from monitor.config.schema import load_config
from monitor.daemon.checks import run_checks
from monitor.evaluation.evaluator import Evaluator
from monitor.report.writer import write_report
from monitor.store.store import Store
from tests.conftest import run_cli

JOB = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build_model():
        return nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(3 * 4 * 4, 4),
        )

    def probe(split=True):
        generator = torch.Generator().manual_seed(7)
        inputs = torch.randn(80, 1, 8, 8, generator=generator)
        targets = torch.arange(80) % 4
        names = ["train" if (i // 4) % 2 == 0 else "val" for i in range(80)]
        found = {"inputs": inputs, "targets": targets, "split": names}
        return found if split else {"inputs": inputs, "targets": targets}
    """
)
STEPS = (10, 20, 30, 40, 50, 60)


def _job(folder: Path, statistics: bool, rules: list[dict[str, Any]] | None = None) -> Path:
    """A job folder: the model and probe factories, checkpoints, and its config."""
    (folder / "job.py").write_text(JOB)
    run = folder / "run"
    run.mkdir(exist_ok=True)
    import importlib.util

    spec = importlib.util.spec_from_file_location("statistics_job", folder / "job.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for step in STEPS:  # checkpoints the way trainers write them: a state dict per step
        torch.manual_seed(step)
        torch.save({"model_state_dict": module.build_model().state_dict(), "global_step": step},
                   run / f"step_{step}.pt")  # fmt: skip
    config: dict[str, Any] = {
        "model": {"factory": "job:build_model"},
        "probe": {"factory": "job:probe", "per_class": 10},
        # The first conv alone: its classmates oppose one another at some checkpoints.
        "stiffness": {"device": "cpu", "statistics": statistics, "include": ["0.*"]},
        "runs": [{"name": "cnn", "path": "run"}],
        "metrics": {"port": 0},
        "store": {"path": "state/state.db"},
    }
    if rules is not None:
        config["rules"] = rules
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """The job's checkpoints evaluated into its store; the config and the stored results."""
    config_path = _job(tmp_path_factory.mktemp("statistics"), statistics=True)
    config = load_config(config_path)
    evaluator = Evaluator(config)
    results = []
    with Store(config.store.path) as store:
        for step in STEPS:
            path = str(config_path.parent / "run" / f"step_{step}.pt")
            evaluation = evaluator.evaluate(path, run="cnn").to_dict()
            store.record_evaluation(
                "cnn", path=path, fingerprint=f"f{step}", size=1, mtime_ns=step,
                evaluation=evaluation, duration_seconds=0.1,
            )  # fmt: skip
            results.append(evaluation)
    return config_path, results


@pytest.mark.slow
def test_a_rule_over_opposing_share_replays_from_the_store(
    stored: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    config, results = stored
    shares = [r["statistics"]["opposing_share"] for r in results]
    assert all(r["statistics"]["halves"] == [20, 20] for r in results)
    assert len(set(shares)) > 1, shares  # the history must give the rule something to see
    threshold = sorted(shares)[len(shares) // 2] - 1e-9  # the upper half lies above it
    expected = next(step for step, share in zip(STEPS, shares, strict=True) if share > threshold)
    rules = tmp_path / "opposing.yaml"
    rules.write_text(yaml.safe_dump({"description": "memorising", "rules": [
        {"name": "opposing", "kind": "threshold", "metric": "opposing_share", "mode": "min",
         "divergence_threshold": threshold},
    ]}))  # fmt: skip
    done = run_cli("backtest", "-c", config, "--rules", rules, "--json")
    assert done.returncode == 0, done.stderr
    [replayed] = json.loads(done.stdout)
    assert replayed["stop_step"] == expected and replayed["evaluations"] == len(STEPS)
    assert "opposing" in replayed["reason"]


def test_the_report_lists_the_latest_suspect_labels(
    stored: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    config, results = stored
    ruled = config.parent / "config-ruled.yaml"  # the same store, a rule over each statistic
    data = yaml.safe_load(config.read_text())
    data["rules"] = [
        {"name": f"on-{metric}", "kind": "threshold", "metric": metric, "mode": "min",
         "divergence_threshold": 1.0e9}
        for metric in ("opposing_share", "gradient_disparity", "gsnr")
    ]  # fmt: skip
    ruled.write_text(yaml.safe_dump(data))
    html = write_report(ruled, tmp_path / "report").read_text(encoding="utf-8")
    for title in ("opposing share", "gradient disparity", "GSNR"):
        assert f"{title} (training split)" in html, title
    latest = results[-1]["statistics"]["suspect_labels"]
    section = html.split("<h3>Suspect labels</h3>", 1)[1]
    if not latest:
        assert "No suspect labels." in section
        return
    rows = section.split("</table>", 1)[0].split("<tr>")[2:]  # after the header row
    assert len(rows) == len(latest)
    for row, suspect in zip(rows, latest, strict=True):
        assert row.startswith(f"<td>{suspect['index']}</td><td>{suspect['label']}</td>")


def test_without_statistics_the_report_has_no_section_and_check_warns(tmp_path: Path) -> None:
    rule = {"kind": "threshold", "metric": "opposing_share", "mode": "min",
            "divergence_threshold": 0.5}  # fmt: skip
    config = _job(tmp_path, statistics=False, rules=[rule])
    warnings = run_checks(config).warnings
    assert any("stiffness.statistics" in w and "opposing_share" in w for w in warnings), warnings
    evaluation = Evaluator(load_config(config)).evaluate(str(tmp_path / "run" / "step_10.pt"))
    assert evaluation.to_dict()["statistics"] is None


@pytest.mark.slow
def test_evaluate_prints_them(stored: tuple[Path, list[dict[str, Any]]]) -> None:
    config, results = stored
    done = run_cli("evaluate", "-c", config, config.parent / "run" / f"step_{STEPS[-1]}.pt")
    assert done.returncode == 0, done.stderr
    stats = results[-1]["statistics"]
    line = next(x for x in done.stdout.splitlines() if x.startswith("training split:"))
    assert f"gradient disparity {stats['gradient_disparity']:.4f}" in line
    assert f"({len(stats['suspect_labels'])} suspect labels)" in line


def test_check_warns_when_the_probe_has_no_training_split(tmp_path: Path) -> None:
    config = _job(tmp_path, statistics=True)
    data = yaml.safe_load(config.read_text())
    data["probe"]["kwargs"] = {"split": False}
    config.write_text(yaml.safe_dump(data))
    warnings = run_checks(config).warnings
    assert any("stiffness.statistics: the probe has no training split" in w for w in warnings)


def test_check_warns_when_projection_hides_a_per_parameter_statistic(tmp_path: Path) -> None:
    """GSNR is per parameter: a rule on it, with projection on, gets a warning naming it;
    the same rule on disparity, which projection estimates, gets none."""
    config = _job(tmp_path, statistics=True)
    data = yaml.safe_load(config.read_text())
    data["stiffness"]["projection"] = {"dim": 64}
    for metric, warned in (("gsnr_median", True), ("gradient_disparity", False)):
        data["rules"] = [{"kind": "threshold", "metric": metric, "mode": "min",
                          "divergence_threshold": 1.0e9}]  # fmt: skip
        config.write_text(yaml.safe_dump(data))
        warnings = run_checks(config).warnings
        found = [w for w in warnings if "stiffness.projection" in w]
        assert bool(found) == warned, (metric, warnings)
        if warned:
            assert metric in found[0] and "not measured from projected gradients" in found[0]
    evaluation = Evaluator(load_config(config)).evaluate(str(tmp_path / "run" / "step_10.pt"))
    statistics = evaluation.to_dict()["statistics"]
    assert statistics["gsnr"] is None and statistics["gradient_disparity"] > 0
