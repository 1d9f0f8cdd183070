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
from monitor.cli_help import command_parser
from monitor.config.schema import StiffnessConfig, load_config
from monitor.daemon.checks import run_checks
from monitor.demo.command import add_demo_parser, run_demo_command
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
from monitor.report.command import add_report_parser, run_report
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

    evaluate = command_parser(commands, "evaluate", "evaluate one checkpoint and print the result")
    evaluate.add_argument("-c", "--config", required=True, help="the YAML config file")
    evaluate.add_argument("checkpoint", help="a checkpoint file or folder")
    evaluate.add_argument("--json", action="store_true", help="print the result as one JSON object")
    evaluate.add_argument(
        "--mode", choices=["class", "pair"], help="override stiffness.mode for this run"
    )
    evaluate.add_argument("--device", help="override stiffness.device (cpu, cuda, cuda:N)")
    _rank_flags(evaluate)

    watch = command_parser(
        commands, "watch", "run the daemon: watch runs, evaluate new checkpoints, export metrics"
    )
    watch.add_argument("-c", "--config", required=True, help="the YAML config file")
    _rank_flags(watch)

    backtest = command_parser(
        commands, "backtest", "replay rules over stored results: where would they have stopped?"
    )
    backtest.add_argument("-c", "--config", required=True, help="the YAML config file")
    backtest.add_argument("--rules", help="a rules file to try instead of the config's rules")
    backtest.add_argument("--run", help="only this run")
    backtest.add_argument(
        "--attempt", type=int, help="replay this attempt of each run (default: the latest)"
    )
    backtest.add_argument("--json", action="store_true", help="print a JSON list")

    reset = command_parser(
        commands, "reset", "start a new attempt of a run by hand: fresh rules, history, stop"
    )
    reset.add_argument("-c", "--config", required=True, help="the YAML config file")
    reset.add_argument("--run", required=True, help="the run's name")

    check = command_parser(commands, "check", "validate the config, rules, model and probe")
    check.add_argument("-c", "--config", required=True, help="the YAML config file")

    add_report_parser(commands)
    add_demo_parser(commands)
    return parser


def _rank_flags(command: argparse.ArgumentParser) -> None:
    """Flags that matter only under torchrun (docs/distributed.md)."""
    command.add_argument(
        "--split",
        choices=["examples", "parameters", "fsdp"],
        default="examples",
        help="under torchrun: split the probe's examples (default) or the parameters across "
        "ranks, or the examples with the weights sharded by FSDP2 (fsdp)",
    )
    command.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="under torchrun: seconds a rank waits for the others before it fails (%(default)s)",
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
    from monitor.distributed.launch import Launch

    launch = Launch.from_env()  # torchrun's processes; None (one process) without it
    if launch is not None and launch.world_size > 1:
        from monitor.distributed.engine import DistributedEngine
        from monitor.distributed.launch import ProcessGroup

        with ProcessGroup.join(launch, config.stiffness.device, args.timeout) as group:
            engine = DistributedEngine(group, args.split)
            evaluation = Evaluator(config, group.device, engine).evaluate(args.checkpoint)
        if launch.rank != 0:  # every rank has the result; rank 0 alone prints it
            return EXIT_OK
    else:
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
    from monitor.daemon.ranks import watch
    from monitor.logs import configure_logging

    config = load_config(args.config)
    configure_logging(config.logging.format, config.logging.level)
    return watch(config, args.split, args.timeout)  # the daemon; under torchrun, on every rank


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


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    handlers = {
        "evaluate": _evaluate,
        "check": _check,
        "watch": _watch,
        "backtest": _backtest,
        "reset": _reset,
        "report": run_report,
        "demo": run_demo_command,
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
