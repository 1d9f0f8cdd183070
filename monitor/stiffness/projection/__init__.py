"""Projection mode: per-example gradients projected to a few dimensions per parameter, seeded.

``ProjectedGradients`` wraps any gradient provider and hands class mode and pair mode
(b, K) rows of projected gradients instead of (b, P) rows or factored rows: the modes are
unchanged, and their memory becomes O(C·K) and O(N·K), K at most ``dim`` per parameter.
Weights whose per-example gradient is an outer product (Linear, Conv, GPT-2's Conv1D,
Embedding) are projected from the layer's factors without forming the gradient: a
TensorSketch (``tensor_sketch``, the default), row-wise Kronecker (``khatri_rao``) or
LoGra/LogIX's Kronecker form (``projector``); every other parameter gets a count sketch
(``tensor_sketch``) or a dense Johnson-Lindenstrauss projection of its materialised rows.
"""

from monitor.stiffness.projection.provider import ProjectedGradients, projected

__all__ = ["ProjectedGradients", "projected"]
