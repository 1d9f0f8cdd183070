"""``python -m bench.signal_quality``: rebuild (if asked) the histories, then the table.

python -m bench.signal_quality              # table from the cached histories (seconds)
python -m bench.signal_quality --rebuild    # retrain every scenario first (minutes)
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.signal_quality.build import CACHE, build, load_histories
from bench.signal_quality.outcomes import (
    Outcome,
    evaluate_rules,
    has_collapsed,
    load_rule_files,
    score,
)
from bench.signal_quality.report import render
from bench.signal_quality.scenarios import HELD_OUT_SEEDS, SELECTION_SEEDS, suite
from bench.signal_quality.table import END, ORACLE

REPO = Path(__file__).resolve().parent.parent.parent
SHIPPED = REPO / "rules"
CANDIDATES = Path(__file__).resolve().parent / "candidates"
OUT = REPO / "bench" / "signal_quality.md"
BENCHMARKS = REPO / "BENCHMARKS.md"
BEGIN = "<!-- signal-quality: begin (written by python -m bench.signal_quality) -->"
FINISH = "<!-- signal-quality: end -->"
COLUMNS = ("rules", "scenario", "task", "arch", "optimizer", "lr_level", "noise", "noise_kind",
           "seed", "collapsed", "stopped", "stop_step", "stop_epoch", "last_step",
           "test_at_stop", "best_step", "best_test", "regret", "smoothed_regret", "saved",
           "early", "costly_early")  # fmt: skip


def write_csv(
    path: Path, results: dict[str, list[Outcome]], histories: list[dict[str, Any]]
) -> None:
    """Every rule set on every run, one row each: the per-scenario numbers behind the table."""
    runs = {h["scenario"]["name"]: h for h in histories}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(COLUMNS)
        for label, outcomes in results.items():
            for o in outcomes:
                s = runs[o.scenario]["scenario"]
                last = runs[o.scenario]["checkpoints"][-1]["step"]
                writer.writerow([label, o.scenario, s["task"], s["arch"], s["optimizer"],
                                 s["lr_level"], s["noise"], s["noise_kind"], s["seed"],
                                 o.collapsed, o.stop_index is not None, o.stop_step,
                                 o.stop_epoch, last, f"{o.test_at_stop:.4f}", o.best_step,
                                 f"{o.best_test:.4f}", f"{o.regret:.4f}",
                                 f"{o.smoothed_regret:.4f}", f"{o.saved:.4f}", o.early,
                                 o.costly_early])  # fmt: skip


def benchmarks_section(report: str) -> str:
    """The report's summary (up to the per-factor tables) as a BENCHMARKS.md section."""
    summary = report.split("\n## By factor", 1)[0].rstrip()
    lines = ["#" + line if line.startswith("#") else line for line in summary.splitlines()]
    pointer = (
        "Per factor and per run: the full report the command writes, by default "
        "[bench/signal_quality.md](bench/signal_quality.md) (and `bench/signal_quality.csv`)."
    )
    return "\n".join([BEGIN, *lines, "", pointer, FINISH])


def splice(document: str, section: str) -> str:
    """``document`` with its signal-quality section replaced by ``section`` (appended if none)."""
    if BEGIN in document and FINISH in document:
        head, rest = document.split(BEGIN, 1)
        return head + section + rest.split(FINISH, 1)[1]
    return document.rstrip("\n") + "\n\n" + section + "\n"


def run_to_end(history: dict[str, Any]) -> Outcome:
    """The reference with no rule: the run delivers its last checkpoint."""
    checkpoints = history["checkpoints"]
    test = [float(c["test_accuracy"]) for c in checkpoints]
    classes = len(checkpoints[0]["evaluation"].get("classes") or [0, 1])
    return score(
        [int(c["step"]) for c in checkpoints],
        test,
        None,
        history["scenario"]["noise"] == 0.0,
        history["scenario"]["name"],
        END,
        has_collapsed(test, classes),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="retrain every scenario first")
    parser.add_argument("--jobs", type=int, default=2, help="training processes (default 2)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="history cache folder")
    parser.add_argument("--out", type=Path, default=OUT, help="markdown file to write")
    parser.add_argument(
        "--csv", type=Path, default=OUT.with_suffix(".csv"), help="per-run outcomes to write"
    )
    parser.add_argument(
        "--benchmarks", type=Path, default=BENCHMARKS, help="BENCHMARKS.md to update"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[*SELECTION_SEEDS, *HELD_OUT_SEEDS])
    args = parser.parse_args(argv)
    started = time.perf_counter()
    scenarios = suite(tuple(args.seeds))
    trained = build(scenarios, args.cache, args.rebuild, args.jobs)
    histories = load_histories(scenarios, args.cache)
    shipped = load_rule_files(sorted(SHIPPED.glob("*.yaml")))
    candidates = load_rule_files(sorted(CANDIDATES.glob("*.yaml")))
    clash = sorted(set(shipped) & set(candidates))
    if clash:
        parser.error(f"candidate rule files named like shipped ones: {clash}")
    rule_sets = {**shipped, **candidates}
    results: dict[str, list[Outcome]] = {
        ORACLE: [evaluate_rules(ORACLE, None, h) for h in histories]
    }
    results.update({label: [evaluate_rules(label, rs, h) for h in histories]
                    for label, rs in rule_sets.items()})  # fmt: skip
    results[END] = [run_to_end(h) for h in histories]
    run_seconds = [float(h["seconds"]["total"]) for h in histories]
    text = render(
        results=results,
        histories=histories,
        shipped=shipped,
        candidates=candidates,
        selection_seeds=tuple(s for s in args.seeds if s in SELECTION_SEEDS),
        trained_seconds=trained,
        run_seconds=run_seconds,
        jobs=args.jobs,
    )
    args.out.write_text(text)
    section = benchmarks_section(text)
    args.benchmarks.write_text(splice(args.benchmarks.read_text(), section))
    write_csv(args.csv, results, histories)
    print(text.split("\n## ", 2)[1] if "\n## " in text else text)
    print(f"wrote {args.out} and its summary into {args.benchmarks} in "
          f"{time.perf_counter() - started:.1f} s "
          f"(median run {statistics.median(run_seconds):.1f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
