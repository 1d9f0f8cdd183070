"""Re-export of ``monitor.stopping.integrations.lightning`` under its first import path."""

from monitor.stopping.integrations.lightning import StiffnessStopCallback

__all__ = ["StiffnessStopCallback"]
