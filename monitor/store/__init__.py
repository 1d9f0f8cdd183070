"""Every result the daemon produced, in one SQLite file: the schema and its migrations, and the
``Store`` that writes and reads it.

May import: ``stiffness`` (only the result type, to rebuild a stored result), ``monitor.errors``.
"""
