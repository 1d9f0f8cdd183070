"""Exception types, one per kind of bad input, so callers can react to each precisely.

Every message names the file, key or path involved and what was expected, because the person
reading it is an operator looking at a log line, not at a traceback.
"""

from __future__ import annotations


class MonitorError(Exception):
    """Base class: a problem the operator can fix (bad input), not a bug in the monitor."""


class ConfigError(MonitorError):
    """The config file (or a rules file it names) is missing, malformed or invalid.

    ``problems`` lists every problem found, one line each, so ``check`` can show them all.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ModelFactoryError(MonitorError):
    """The configured model factory cannot be imported, called, or returned no module."""


class CheckpointError(MonitorError):
    """A checkpoint is missing, truncated, corrupt, unsafe to load, or does not fit the model.

    ``reason`` is a short, stable token (``missing``, ``corrupt``, ``pickle``, ``mismatch``,
    ``format``) used as the ``reason`` label of the checkpoint-error metric.
    """

    def __init__(self, message: str, reason: str = "corrupt") -> None:
        self.reason = reason
        super().__init__(message)


class ProbeError(MonitorError):
    """The probe set is missing, malformed, or cannot support a stiffness measurement."""


class EngineError(MonitorError):
    """The engine cannot evaluate this model on this probe (wrong output shape, out of memory)."""


class UsageError(MonitorError):
    """A command-line argument names something that is not there (a run, an attempt)."""
