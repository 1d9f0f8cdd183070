"""The probe set: reading it from a file or a factory, validating it, and drawing the fixed,
class-balanced sample the engine sees at every checkpoint.

May import: ``config``, ``stiffness`` (the ``ProbeSet`` it builds), ``monitor.errors``.
"""
