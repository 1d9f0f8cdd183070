"""The ``demo`` command's flags and what it runs; the CLI adds it to its sub-commands.

Beside the demo, as ``report``'s is beside the report, so the CLI keeps one small module per
command's options.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from monitor.errors import ConfigError

DESCRIPTION = (
    "Runs a trainer and the daemon as subprocesses on scikit-learn's digits (no download, no "
    "config) until the shipped default rules stop training, then prints a summary and writes "
    "a report. Everything goes into --workdir (./stiffness-demo by default, which git "
    "ignores); the first line of output says where."
)
EXAMPLE = """examples:
  stiffness-monitor demo                       # about 40 s on 2 cores
  stiffness-monitor demo --quick               # shorter epochs, a smaller probe
  stiffness-monitor demo --noise 0 --epochs 60 --workdir /tmp/demo --keep-running"""


def add_demo_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``demo`` to the CLI's sub-commands (``commands`` is argparse's sub-parsers)."""
    from monitor.demo.runner import DemoOptions

    d = DemoOptions()
    demo: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="train a small net on digits with the daemon watching, stop it, show the report",
        description=DESCRIPTION,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--workdir", type=Path, default=d.workdir, help="working folder (%(default)s)"
    )
    demo.add_argument("--noise", type=float, default=d.noise, help="label noise (%(default)s)")
    demo.add_argument("--lr", type=float, default=d.lr, help="learning rate (%(default)s)")
    demo.add_argument("--epochs", type=int, default=d.epochs, help="at most (%(default)s)")
    demo.add_argument("--seed", type=int, default=d.seed, help="training seed (%(default)s)")
    demo.add_argument(
        "--epoch-seconds",
        type=float,
        default=d.epoch_seconds,
        help="pad each epoch to this many seconds, as a slower job would be (%(default)s)",
    )
    demo.add_argument(
        "--quick", action="store_true", help="short epochs and a smaller probe (for CI)"
    )
    demo.add_argument(
        "--keep-running", action="store_true", help="keep the daemon running until Ctrl-C"
    )
    return demo


def run_demo_command(args: argparse.Namespace) -> int:
    """``stiffness-monitor demo``: check the flags, then run the demo."""
    from monitor.demo.runner import DemoOptions, run_demo

    if not 0.0 <= args.noise <= 1.0 or args.lr <= 0 or args.epochs < 1:
        raise ConfigError("--noise must be in [0, 1], --lr above 0 and --epochs at least 1")
    options = DemoOptions(
        workdir=args.workdir,
        noise=args.noise,
        lr=args.lr,
        epochs=args.epochs,
        seed=args.seed,
        epoch_seconds=0.5 if args.quick else args.epoch_seconds,
        per_class=10 if args.quick else DemoOptions.per_class,
        keep_running=args.keep_running,
    )
    return run_demo(options)
