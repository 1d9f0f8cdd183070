"""The one YAML file: reading it (and rule files) within bounds, its schema, the messages that
name file, line and key, the secrets it points at, and the import of user code it names
(model and probe factories).

May import: ``monitor.errors`` and ``monitor.stiffness`` (the engine options it validates).
"""
