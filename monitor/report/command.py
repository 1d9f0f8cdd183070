"""The ``report`` command's flags and what it runs; the CLI adds it to its sub-commands.

It lives beside the report so that the command line keeps one small module per command's
options; matplotlib is imported only when the command runs, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

DESCRIPTION = (
    "Draws figures and one HTML page from the store (read-only: safe while the daemon runs). "
    "Each run's part starts with a summary (the stop, the best checkpoint, what the stop "
    "saved, why it stopped as a list), then the curves the rules read, then the other "
    "measurements; panels with nothing to show are left out."
)
EXAMPLE = """examples:
  stiffness-monitor report -c config.yaml --out report/
  stiffness-monitor report -c config.yaml --out report/ --compare          # every attempt
  stiffness-monitor report -c config.yaml --out report/ --compare within_class --attempt 2"""


def attempt_value(value: str) -> int | str:
    """``--attempt``: an attempt number, or ``all``."""
    if value == "all":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise argparse.ArgumentTypeError(
        f"expected an attempt number (1, 2, ...) or 'all', got {value!r}"
    )


def add_report_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``report`` to the CLI's sub-commands (``commands`` is argparse's sub-parsers)."""
    report: argparse.ArgumentParser = commands.add_parser(
        "report",
        help="render figures and an HTML page from the store",
        description=textwrap.fill(DESCRIPTION, 79),
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("-c", "--config", required=True, help="the YAML config file")
    report.add_argument("--out", required=True, type=Path, help="folder for index.html and PNGs")
    report.add_argument("--run", help="only this run")
    report.add_argument(
        "--attempt",
        type=attempt_value,
        metavar="N|all",
        help="draw this attempt of each run, or every attempt (default: the latest)",
    )
    report.add_argument(
        "--compare",
        nargs="?",
        const="",
        metavar="METRIC",
        help="start the page with every run and attempt side by side: a table, and their "
        "curves of METRIC (default: the metric that picks the best checkpoint) on shared "
        "axes; compares every attempt unless --attempt is given",
    )
    report.add_argument(
        "--steps",
        type=int,
        nargs="+",
        metavar="STEP",
        help="checkpoints for the class heatmaps (nearest evaluated; default: 4 spread out)",
    )
    return report


def run_report(args: argparse.Namespace) -> int:
    """Render the report as the flags say; prints where the page is. Errors raise (the CLI
    turns them into exit codes)."""
    from monitor.report.writer import write_report

    every = args.attempt == "all"
    page = write_report(
        args.config,
        args.out,
        args.run,
        args.steps,
        None if every else args.attempt,
        every_attempt=every,
        compare=args.compare is not None,
        compare_metric=args.compare or None,
    )
    print(f"report: {page}")
    return 0
