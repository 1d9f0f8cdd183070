"""The ``stiffness-monitor`` command line.

Exit codes are part of the interface scripts rely on: 0 success, 1 a runtime failure (a
corrupt checkpoint, the engine running out of memory), 2 a usage or configuration problem
(the config, its rules, the model factory or the probe set), always with a message that names
the file and key.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from monitor import __version__
from monitor.config.schema import StiffnessConfig, load_config
from monitor.daemon.checks import run_checks
from monitor.errors import (
    CheckpointError,
    ConfigError,
    EngineError,
    ModelFactoryError,
    MonitorError,
    ProbeError,
    UsageError,
)
from monitor.evaluation.summary import format_evaluation
from monitor.extras import ExtraMissingError
from monitor.report.history import UnknownRunError
from monitor.store.lock import StoreLockedError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
#: Bad input in what the operator configured (or a missing extra): fix it, then run again.
CONFIG_ERRORS = (
    ConfigError,
    ModelFactoryError,
    ProbeError,
    ExtraMissingError,
    UnknownRunError,
    StoreLockedError,  # another daemon holds the store
    UsageError,  # --run or --attempt names nothing stored
)

log = logging.getLogger("monitor")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stiffness-monitor",
        description="Measure within-class gradient stiffness of PyTorch checkpoints.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    evaluate = commands.add_parser("evaluate", help="evaluate one checkpoint and print the result")
    evaluate.add_argument("-c", "--config", required=True, help="the YAML config file")
    evaluate.add_argument("checkpoint", help="a checkpoint file or folder")
    evaluate.add_argument("--json", action="store_true", help="print the result as one JSON object")
    evaluate.add_argument(
        "--mode", choices=["class", "pair"], help="override stiffness.mode for this run"
    )
    evaluate.add_argument("--device", help="override stiffness.device (cpu, cuda, cuda:N)")

    watch = commands.add_parser(
        "watch", help="run the daemon: watch runs, evaluate new checkpoints, export metrics"
    )
    watch.add_argument("-c", "--config", required=True, help="the YAML config file")

    backtest = commands.add_parser(
        "backtest", help="replay rules over stored results: where would they have stopped?"
    )
    backtest.add_argument("-c", "--config", required=True, help="the YAML config file")
    backtest.add_argument("--rules", help="a rules file to try instead of the config's rules")
    backtest.add_argument("--run", help="only this run")
    backtest.add_argument(
        "--attempt", type=int, help="replay this attempt of each run (default: the latest)"
    )
    backtest.add_argument("--json", action="store_true", help="print a JSON list")

    reset = commands.add_parser(
        "reset",
        help="start a new attempt of a run by hand: fresh rules, history, best and stop",
        description="Begins the run's next attempt in the store. A running daemon follows within "
        "a second: it starts the run's rules afresh and removes the stop and best-checkpoint "
        "files it wrote for the earlier attempt. Reruns into the same folder are detected "
        "without this (the steps start again lower).",
    )
    reset.add_argument("-c", "--config", required=True, help="the YAML config file")
    reset.add_argument("--run", required=True, help="the run's name")

    check = commands.add_parser("check", help="validate the config, rules, model and probe")
    check.add_argument("-c", "--config", required=True, help="the YAML config file")

    report = commands.add_parser("report", help="render figures and an HTML page from the store")
    report.add_argument("-c", "--config", required=True, help="the YAML config file")
    report.add_argument("--out", required=True, type=Path, help="folder for index.html and PNGs")
    report.add_argument("--run", help="only this run")
    report.add_argument(
        "--attempt", type=int, help="draw this attempt of each run (default: the latest)"
    )
    report.add_argument(
        "--steps",
        type=int,
        nargs="+",
        metavar="STEP",
        help="checkpoints for the class heatmaps (nearest evaluated; default: 4 spread out)",
    )
    _demo_parser(commands)
    return parser


def _demo_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from monitor.demo.runner import DemoOptions

    d = DemoOptions()
    demo = commands.add_parser(
        "demo",
        help="train a small net on digits with the daemon watching, stop it, show the report",
        description="Runs a trainer and the daemon as subprocesses on scikit-learn's digits "
        "(no download, no config) until the shipped default rules stop training.",
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


def _evaluate(args: argparse.Namespace) -> int:
    from monitor.evaluation.evaluator import Evaluator, resolve_device

    config = load_config(args.config)
    overrides = {key: getattr(args, key) for key in ("mode", "device") if getattr(args, key)}
    if overrides:  # validated like the file's own keys, so '--device gpu' is a clear error
        try:
            stiffness = StiffnessConfig.model_validate(
                {**config.stiffness.model_dump(), **overrides}
            )
        except ValidationError as exc:
            flags = [f"--{e['loc'][0]}: {e['msg']}" for e in exc.errors() if e["loc"]]
            raise ConfigError(flags or str(exc)) from None
        config = config.model_copy(update={"stiffness": stiffness})
    evaluator = Evaluator(config, resolve_device(config.stiffness.device))
    evaluation = evaluator.evaluate(args.checkpoint)
    if args.json:
        print(json.dumps(evaluation.to_dict(), allow_nan=False))
    else:
        print(format_evaluation(evaluation))
    return EXIT_OK


def _stop_during_start_up(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(EXIT_OK)


def _watch(args: argparse.Namespace) -> int:
    # Until the daemon installs its own handlers (after torch is imported and the config is
    # loaded: seconds), SIGTERM is a clean stop: nothing has been evaluated or stored yet.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_during_start_up)
    from monitor.daemon.loop import Daemon
    from monitor.logs import configure_logging

    config = load_config(args.config)
    configure_logging(config.logging.format, config.logging.level)
    return Daemon(config).run()


def _backtest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from monitor.rules.backtest import backtest_store, format_backtest
    from monitor.rules.spec import load_rules

    config = load_config(args.config)
    if args.rules:
        spec: Path | list[dict[str, object]] | None = Path(args.rules).resolve()
    else:
        spec = config.rules
    rules = load_rules(spec, config.source, config.source.read_text(encoding="utf-8"))
    label = "inline" if isinstance(spec, list) else rules.source
    results = backtest_store(config.store.path, rules, label, args.run, args.attempt)
    if args.json:
        print(json.dumps([item.to_dict() for item in results], allow_nan=False))
    else:
        for item in results:
            print(format_backtest(item))
        if not results:
            print(f"no stored evaluations in {config.store.path}")
    return EXIT_OK


def _reset(args: argparse.Namespace) -> int:
    from monitor.store.store import Store

    config = load_config(args.config)
    names = [run.name for run in config.runs]
    if args.run not in names:
        raise UsageError(f"--run {args.run}: no such run in {config.source} (runs: "
                         f"{', '.join(names)})")  # fmt: skip
    if not config.store.path.is_file():
        raise UsageError(f"{config.store.path}: no store yet; nothing to reset")
    with Store(config.store.path) as store:
        attempt = store.start_attempt(args.run, "reset by hand")
    print(f"run {args.run}: attempt {attempt} begins (a running daemon follows at its next turn)")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    report = run_checks(args.config)
    for line in report.notes:
        print(line)
    for line in report.warnings:
        print(f"warning: {line}", file=sys.stderr)
    for line in report.problems:
        print(f"error: {line}", file=sys.stderr)
    if report.problems:
        print(f"{len(report.problems)} problem(s) found", file=sys.stderr)
        return EXIT_USAGE
    print("config OK")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from monitor.report.writer import write_report

    page = write_report(args.config, args.out, args.run, args.steps, args.attempt)
    print(f"report: {page}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
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


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    handlers = {
        "evaluate": _evaluate,
        "check": _check,
        "watch": _watch,
        "backtest": _backtest,
        "reset": _reset,
        "report": _report,
        "demo": _demo,
    }
    try:
        return handlers[args.command](args)
    except CONFIG_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CheckpointError, EngineError, MonitorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as exc:  # e.g. the store folder unwritable
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130
