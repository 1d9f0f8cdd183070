"""The page a person reads first, from a store a real daemon filled in pair mode: the summary
leads, the stop reason is a list, the rules' panels come next, and panels with nothing to show
are not on the page at all."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image
import pytest

from monitor.config.schema import load_config
from monitor.evaluation.evaluator import Evaluator
from monitor.report import figures
from monitor.report.panels import choose_panels
from monitor.report.writer import write_report
from monitor.rules.spec import load_rules
from monitor.store.store import Store
from tests.conftest import run_cli
from tests.daemon_harness import stored_evaluations
from tests.report.conftest import (
    EPOCHS,
    PNG_MAGIC,
    body_outline,
    element,
    referenced,
    report_config,
    strip_tags,
)


def _assert_pngs(out: Path, page: Path) -> list[str]:
    """Every linked file is a real PNG of a sensible size, and nothing drawn goes unlinked."""
    linked = referenced(page)
    assert sorted(linked) == sorted(path.name for path in out.glob("*.png"))
    for name in linked:
        path = out / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        height, width, _ = matplotlib.image.imread(path).shape
        assert width > 400 and height > 200
    return linked


@pytest.mark.slow
def test_the_summary_leads_then_the_rules_panels(pair_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = run_cli("report", "-c", pair_run, "--out", out)
    assert done.returncode == 0, done.stderr
    page = out / "index.html"
    assert done.stdout.strip() == f"report: {page}"
    html = page.read_text(encoding="utf-8")

    # Structure: the run's section opens with its summary: stop, best, saved, then the reason.
    shape = body_outline(html, "section", "h2", "div", "ul", "li", "h3", "figure", "table")
    assert shape[:8] == [
        "section.run#run-digits-1",
        "h2",
        "div.summary",
        "ul.facts",
        "li.stop",
        "li.best",
        "li.saved",
        "h3",
    ]
    assert shape.index("div.reason") < shape.index("div.figures.rules")
    assert shape.index("div.figures.rules") < shape.index("div.figures.others")
    assert shape.index("div.figures.others") < shape.index("table.evaluations")

    stop_file = json.loads((pair_run.parent / "checkpoints" / "STOP").read_text())
    assert element(html, "stop").startswith(
        f"Stop: step {stop_file['step']}, rule good-enough (evaluation 1 of {EPOCHS}, "
        f"{stop_file['checkpoint']})"
    )
    best = stop_file["best_checkpoint"]  # what the daemon kept by the stop
    assert element(html, "best").startswith(
        f"Best checkpoint: step {best['step']}, probe_accuracy {best['value']:.4g} (highest, "
        "at the stop)"
    )
    assert best["path"] in element(html, "best")
    replayed = run_cli("backtest", "-c", pair_run, "--json")
    saved = json.loads(replayed.stdout)[0]["evaluations_saved"]
    assert saved == EPOCHS - 1
    assert element(html, "saved").startswith(f"Saved: {saved} evaluations (")

    # The reason: the combinator's head, then one item per sub-rule, not one paragraph.
    reason = re.search(r"<div class='reason'>(.*?)</div>", html)
    assert reason is not None
    items = [strip_tags(text) for text in re.findall(r"<li[^>]*>(.*?)(?=<li|</ul>)", reason[1])]
    assert items[0] == "good-enough (stop): 2 of 2 sub-rules say stop (all must)."
    assert items[1].startswith("threshold-0 (stop): probe_accuracy (raw) ")
    assert items[1].endswith("reached the stopping threshold 0.3.")
    assert items[2].startswith("threshold-1 (stop): within_class (raw) ")
    assert len(items) == 3
    # length-gone reads a metric this run never has: said once, and no panel for it.
    unread = re.search(r"<ul class='unread'>(.*?)</ul>", html)
    assert unread is not None
    assert strip_tags(unread[1]).startswith("critical_length: no value at any evaluation")

    rules_part = html[html.index("<div class='figures rules'>") :]
    rules_part = rules_part[: rules_part.index("</div>")]
    assert referenced_in(rules_part) == ["digits-probe-accuracy.png", "digits-stiffness.png"]
    assert "Read by rule <code>good-enough</code>; picks the best checkpoint." in rules_part
    linked = _assert_pngs(out, page)
    critical = [e.result["distance"]["critical_length"] for e in stored_evaluations(pair_run)]
    assert all(length is None for length in critical)  # the demo's case: never crosses zero
    assert "digits-critical-length.png" not in linked
    assert {"digits-probe-loss.png", "digits-classes.png", "digits-distance.png"} <= set(linked)
    assert "there is no critical length to show" in html
    assert "Not drawn" not in html and "No data" not in html
    assert html.count("<tr class='stop'>") == 1
    assert html.count("<tr") == EPOCHS + 1  # header and one row per evaluation


def referenced_in(html: str) -> list[str]:
    return re.findall(r"<img src='([^']+)'", html)


@pytest.mark.slow
def test_heatmap_steps_snap_to_evaluated_checkpoints(pair_run: Path, tmp_path: Path) -> None:
    steps = [e.step for e in stored_evaluations(pair_run)]
    page = write_report(pair_run, tmp_path, steps=[0, steps[2] + 1, 10**9])
    shown = ", ".join(str(step) for step in (steps[0], steps[2], steps[-1]))
    assert f"alt='class stiffness at steps {shown}'" in page.read_text(encoding="utf-8")


@pytest.mark.slow
def test_class_mode_leaves_out_what_it_cannot_measure(pair_run: Path, tmp_path: Path) -> None:
    config = load_config(report_config(pair_run.parent, "class", str(tmp_path / "class.db")))
    evaluator = Evaluator(config)
    with Store(config.store.path) as store:
        for number, stored in enumerate(stored_evaluations(pair_run)[:3]):
            evaluation = evaluator.evaluate(stored.path, run="digits")
            store.record_evaluation(
                "digits",
                path=stored.path,
                fingerprint=f"f{number}",
                size=1,
                mtime_ns=1,
                evaluation=evaluation.to_dict(),
                duration_seconds=0.1,
            )
    out = tmp_path / "out"
    page = write_report(config.source, out)
    html = page.read_text(encoding="utf-8")
    assert element(html, "stop") == "Stop: none. The rules have not stopped this run (3 " + (
        f"evaluations, steps {stored_evaluations(pair_run)[0].step} to "
        f"{stored_evaluations(pair_run)[2].step})."
    )
    assert element(html, "saved") == "Saved: nothing yet; there is no stop."
    assert "<div class='reason'>" not in html
    linked = _assert_pngs(out, page)
    # Class mode has no sign stiffness and no distance profile: no panel for
    # any of them, no placeholder, and no empty table column.
    for absent in ("sign", "classes-sign", "distance", "critical-length", "train-val-sign"):
        assert f"digits-{absent}.png" not in linked
    assert {"digits-stiffness.png", "digits-probe-accuracy.png", "digits-classes.png"} <= set(
        linked
    )
    assert "Not drawn" not in html and "pair mode (stiffness.mode" not in html
    assert "<th>sign within</th>" not in html and "<th>critical length</th>" not in html
    assert "<th>within-class</th>" in html


@pytest.mark.slow
def test_a_matrix_of_one_value_and_flat_curves_are_left_out(pair_run: Path, tmp_path: Path) -> None:
    """The demo's case: sign stiffness 1.0 everywhere has nothing to show as a heatmap or a
    curve. The same stored results, with their sign matrices set to 1.0 everywhere."""
    results = [e.result for e in stored_evaluations(pair_run)]
    chosen = [(e.step, r) for e, r in zip(stored_evaluations(pair_run), results, strict=True)]
    drawn = figures.heatmaps_figure(chosen, tmp_path / "real.png", "sign")
    assert drawn == tmp_path / "real.png" and drawn.is_file()
    flat = []
    for result in results:
        size = len(result["classes"])
        sign = {**result["sign"], "matrix": [[1.0] * size for _ in range(size)]}
        flat.append({**result, "sign": {**sign, "within": 1.0, "between": 1.0}})
    flat_chosen = [(step, r) for (step, _), r in zip(chosen, flat, strict=True)]
    assert figures.heatmaps_figure(flat_chosen, tmp_path / "flat.png", "sign") is None
    assert not (tmp_path / "flat.png").exists()
    rules = load_rules(load_config(pair_run).rules, pair_run)
    _, others = choose_panels(rules, results)
    _, flat_others = choose_panels(rules, flat)
    assert "sign" in [p.key for p in others]
    assert "sign" not in [p.key for p in flat_others]
