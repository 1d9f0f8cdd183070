"""One checkpoint, end to end and nothing more: read it, load it into the model, run the
engine on the probe, and the text ``evaluate`` prints. Used by the CLI, ``check`` and the daemon.

May import: ``checkpoints``, ``probe``, ``stiffness``, ``config``, ``monitor.errors``.
"""
