"""The stop signal, both sides: the stop file the daemon writes atomically and the ``on_stop``
command it may run, and the trainer-side helpers and framework callbacks that read it.

May import: ``monitor.errors`` only. ``trainer`` and ``integrations`` run inside training
scripts, so they import nothing from the package but each other (and no torch at import).
"""
