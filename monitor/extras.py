"""Optional extras: the one-line error, naming the install command, when one is missing.

The demo and the report draw with matplotlib and train on scikit-learn's digits; both are the
``demo`` extra, so a plain install stays small and its commands fail clearly without them.
"""

from __future__ import annotations

from monitor.errors import MonitorError

INSTALL_HINT = "pip install 'stiffness-monitor[demo]'"


class ExtraMissingError(MonitorError):
    """An optional dependency of the ``demo`` extra is not installed (a usage problem)."""


def require_demo_extra(*modules: str) -> None:
    """Fail with one line naming the install command when the ``demo`` extra is missing."""
    import importlib.util

    for module in modules or ("sklearn", "matplotlib"):
        if importlib.util.find_spec(module) is None:
            raise ExtraMissingError(
                f"the demo and report need the optional package {module!r}: {INSTALL_HINT}"
            )
