"""Projection mode: per-example gradients projected to a few dimensions per parameter, seeded.

``ProjectedGradients`` wraps any gradient provider and hands class mode and pair mode
(b, K) rows of projected gradients instead of (b, P) rows or factored rows: the modes are
unchanged, and their memory becomes O(C·K) and O(N·K). Weights whose per-example gradient
is an outer product (Linear, Conv, GPT-2's Conv1D, Embedding) get the Kronecker-factored
projection of LoGra/LogIX without forming the gradient; every other parameter a dense
Johnson-Lindenstrauss projection of its materialised rows (``matrices``, ``projector``).
"""

from monitor.stiffness.projection.provider import ProjectedGradients, projected

__all__ = ["ProjectedGradients", "projected"]
