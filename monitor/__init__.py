"""stiffness-monitor: an early-stopping and training-monitor sidecar for PyTorch.

One subpackage per concern, dependencies pointing down only (``docs/architecture.md``):
``cli`` on top; ``demo`` and ``report``; ``daemon`` (the loop and ``check``); ``exporter``,
``watching`` and ``evaluation``; ``rules``; ``checkpoints``, ``probe``, ``store`` and
``stopping``; ``config``; and ``stiffness``, the pure engine, at the bottom. ``errors``,
``logs`` and ``extras`` are shared by all. ``trainer``, ``integrations`` and ``demo_trainer``
are the first import paths of moved modules, kept as re-exports.
"""

__version__ = "0.1.0"
