"""One report across runs and attempts: ``--compare`` and ``--attempt all``, from a store
written through the Store API as the daemon writes it (evaluations of real checkpoints, a
rerun's new attempt, a stop per attempt)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from monitor.cli import main
from monitor.store.store import Store, StoredEvaluation
from tests.daemon_harness import stored_evaluations
from tests.report.conftest import PNG_MAGIC, RULES, body_outline, element, referenced, strip_tags


def _record(
    store: Store, run: str, items: list[StoredEvaluation], attempt: int, tag: str
) -> list[int]:
    return [
        store.record_evaluation(
            run,
            path=e.path,
            fingerprint=f"{tag}-{e.fingerprint}",
            size=e.size,
            mtime_ns=e.mtime_ns,
            evaluation=e.result,
            duration_seconds=e.duration_seconds,
            attempt=attempt,
        )
        for e in items
    ]


def _stop(
    store: Store, run: str, ids: list[int], at: int, item: StoredEvaluation, attempt: int
) -> None:
    payload = {"version": 1, "run": run, "checkpoint": item.path, "step": item.step}
    assert store.record_stop(run, ids[at], "good-enough", "manual stop for the test.", payload,
                             attempt)  # fmt: skip


@pytest.fixture(scope="module")
def two_runs(pair_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits: attempt 1 (six evaluations, stopped at the second) and a rerun, attempt 2
    (four, no stop); other: one attempt (four, stopped at its last)."""
    folder = tmp_path_factory.mktemp("compare")
    evaluations = stored_evaluations(pair_run)
    with Store(folder / "state.db") as store:
        ids = _record(store, "digits", evaluations, 1, "a1")
        _stop(store, "digits", ids, 1, evaluations[1], 1)
        assert store.start_attempt("digits", "the step went back") == 2
        _record(store, "digits", evaluations[:4], 2, "a2")
        ids = _record(store, "other", evaluations[2:], 1, "o1")
        _stop(store, "other", ids, 3, evaluations[5], 1)  # the trainer ended on it
    config = yaml.safe_load(pair_run.read_text())
    config["store"] = {"path": str(folder / "state.db")}
    config["runs"].append({"name": "other", "path": "checkpoints"})
    config["rules"] = RULES
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _report(config: Path, out: Path, *extra: str) -> str:
    assert main(["report", "-c", str(config), "--out", str(out), *extra]) == 0
    return (out / "index.html").read_text(encoding="utf-8")


def _rows(html: str) -> list[list[str]]:
    table = re.search(r"<table class='compare'>(.*?)</table>", html)
    assert table is not None
    rows = re.findall(r"<tr>(.*?)</tr>", table[1])[1:]
    return [[strip_tags(cell) for cell in re.findall(r"<td>(.*?)</td>", row)] for row in rows]


@pytest.mark.slow
def test_compare_puts_every_run_and_attempt_on_one_page(two_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    html = _report(two_runs, out, "--compare")
    sections = body_outline(html, "section")
    assert sections == [
        "section.comparison#comparison",
        "section.run#run-digits-1",
        "section.run#run-digits-2",
        "section.run#run-other-1",
    ]
    shape = body_outline(html, "section", "h2", "table", "figure", "img")
    assert shape[:5] == [
        "section.comparison#comparison", "h2", "table.compare", "figure.compare", "img"
    ]  # fmt: skip
    with Store(two_runs.parent / "state.db", readonly=True) as store:
        first = store.evaluations("digits", 1)
        second = store.evaluations("digits", 2)
        other = store.evaluations("other", 1)
    best = {  # probe accuracy, highest, up to the stop (ties: the earlier)
        key: max(items, key=lambda e: (e.result["probe_accuracy"], -e.id)).step
        for key, items in (("a1", first[:2]), ("a2", second), ("o", other))
    }
    assert _rows(html) == [
        ["digits", "1", "6", f"step {first[1].step} (good-enough)", str(best["a1"]),
         f"{max(e.result['probe_accuracy'] for e in first[:2]):.4g}", "4"],
        ["digits", "2", "4", "–", str(best["a2"]),
         f"{max(e.result['probe_accuracy'] for e in second):.4g}", "–"],
        ["other", "1", "4", f"step {other[3].step} (good-enough)", str(best["o"]),
         f"{max(e.result['probe_accuracy'] for e in other):.4g}", "0"],
    ]  # fmt: skip
    linked = referenced(out / "index.html")
    assert linked[0] == "compare-probe_accuracy.png"
    assert (out / linked[0]).read_bytes()[:8] == PNG_MAGIC
    # Two attempts of digits on one page: each attempt's files are named apart.
    for name in ("digits-attempt1-probe-accuracy.png", "digits-attempt2-probe-accuracy.png",
                 "other-probe-accuracy.png"):  # fmt: skip
        assert name in linked and (out / name).read_bytes()[:8] == PNG_MAGIC
    assert sorted(linked) == sorted(path.name for path in out.glob("*.png"))
    assert "<h2>run digits, attempt 2 of 2</h2>" in html
    assert "<h2>run other</h2>" in html
    other_part = html[html.index("<h2>run other</h2>") :]
    assert element(other_part, "saved").startswith(
        "Saved: no evaluation came after the stop; the run ended there."
    )
    assert element(other_part, "stop").startswith(f"Stop: step {other[3].step}, rule good-enough")
    assert "<li class='says-stop'><code>good-enough</code> (stop): manual stop" in other_part


@pytest.mark.slow
def test_compare_takes_a_metric_and_attempt_all_lists_without_comparing(
    two_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html = _report(two_runs, tmp_path / "loss", "--compare", "probe_loss", "--run", "digits")
    assert "<h2>Comparison: probe_loss</h2>" in html
    assert [row[:2] for row in _rows(html)] == [["digits", "1"], ["digits", "2"]]
    assert (tmp_path / "loss" / "compare-probe_loss.png").is_file()

    html = _report(two_runs, tmp_path / "one", "--compare", "--attempt", "1")
    assert [row[:2] for row in _rows(html)] == [["digits", "1"], ["other", "1"]]

    html = _report(two_runs, tmp_path / "all", "--attempt", "all")
    assert "class='comparison'" not in html
    assert len(body_outline(html, "section")) == 3

    html = _report(two_runs, tmp_path / "latest")  # the default: each run's latest attempt
    assert body_outline(html, "section") == ["section.run#run-digits-2", "section.run#run-other-1"]

    def fails(*extra: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as raised:
            main(["report", "-c", str(two_runs), "--out", str(tmp_path / "bad"), *extra])
        return int(str(raised.value.code)), capsys.readouterr().err

    code, error = fails("--attempt", "0")
    assert (
        code == 2 and "--attempt: expected an attempt number (1, 2, ...) or 'all', got '0'" in error
    )
    assert main(["report", "-c", str(two_runs), "--out", str(tmp_path / "bad"),
                 "--compare", "lossy"]) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert error.startswith("error: --compare lossy: expected one of ")
    assert not (tmp_path / "bad").exists()
