"""Re-export of ``monitor.stopping.integrations.huggingface`` under its first import path."""

from monitor.stopping.integrations.huggingface import StiffnessStopCallback

__all__ = ["StiffnessStopCallback"]
