"""What ``--help`` says about each command: a description and examples to copy.

Kept apart from ``cli`` (which wires flags to code) so that the words can grow without the
wiring growing; ``report`` and ``demo`` keep theirs beside their own flags.
"""

from __future__ import annotations

import argparse
from typing import Any

#: command -> (description, examples)
HELP: dict[str, tuple[str, str]] = {
    "evaluate": (
        "Loads one checkpoint (a file, or a Hugging Face / DCP folder) into the config's model "
        "and measures gradient stiffness on the probe, once, without the store or the daemon. "
        "Under torchrun the probe's examples (or the parameters) are split across the ranks "
        "and rank 0 prints the one-process result.",
        "examples:\n"
        "  stiffness-monitor evaluate -c config.yaml runs/a/step_400.pt\n"
        "  stiffness-monitor evaluate -c config.yaml runs/a/checkpoint-400 --json --mode pair\n"
        "  torchrun --standalone --nproc_per_node 4 -m monitor evaluate -c config.yaml "
        "ckpt.pt --json",
    ),
    "watch": (
        "The daemon: watches every run's folder, evaluates each complete new checkpoint once, "
        "stores the result, serves /metrics, /healthz and /readyz, writes TensorBoard events, "
        "and writes the stop file when the rules say stop. SIGTERM or SIGINT stops it; SIGHUP "
        "re-reads the rules.",
        "examples:\n"
        "  stiffness-monitor check -c config.yaml && stiffness-monitor watch -c config.yaml\n"
        "  torchrun --standalone --nproc_per_node 2 -m monitor watch -c config.yaml",
    ),
    "backtest": (
        "Replays a rule set over the stored results of each run's latest attempt and says "
        "where it would have stopped, why, the metrics there, the best checkpoint it would "
        "have kept and how much training it would have saved. Try rules here before they may "
        "stop a real run; the store is read-only, so the daemon can keep running.",
        "examples:\n"
        "  stiffness-monitor backtest -c config.yaml\n"
        "  stiffness-monitor backtest -c config.yaml --rules my-rules.yaml --run a --json\n"
        "  stiffness-monitor backtest -c config.yaml --run a --attempt 1",
    ),
    "reset": (
        "Begins the run's next attempt in the store. A running daemon follows within a second: "
        "it starts the run's rules afresh and removes the stop and best-checkpoint files it "
        "wrote for the earlier attempt. Reruns into the same folder are detected without this "
        "(the steps start again lower).",
        "example:\n  stiffness-monitor reset -c config.yaml --run a",
    ),
    "check": (
        "Validates the config and the rules (a misspelt key gets a 'did you mean'), builds the "
        "model, runs two probe examples through it, loads the newest checkpoint of each run "
        "as the daemon would, and binds the metrics port. Lists every problem; exit 2 if any.",
        "example:\n  stiffness-monitor check -c config.yaml",
    ),
}


def command_parser(commands: Any, name: str, summary: str) -> argparse.ArgumentParser:
    """Add command ``name`` with its one-line ``summary``, description and examples."""
    description, examples = HELP[name]
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser
