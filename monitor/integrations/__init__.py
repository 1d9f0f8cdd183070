"""The trainer callbacks under their first import path, kept so trainers keep working.

They live in ``monitor.stopping.integrations``; ``monitor.integrations.lightning`` and
``monitor.integrations.huggingface`` re-export them. Like the originals, this package imports
nothing and each submodule raises ImportError naming the package to install.
"""
