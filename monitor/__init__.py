"""stiffness-monitor: an early-stopping and training-monitor sidecar for PyTorch.

The package is split by concern: ``config`` (the one YAML file), ``checkpoint`` (every way
trainers write weights), ``probe`` (the fixed, labelled probe set), ``stiffness`` (the pure
engine), ``evaluation`` (wiring the three for one checkpoint) and ``cli``.
"""

__version__ = "0.1.0"
