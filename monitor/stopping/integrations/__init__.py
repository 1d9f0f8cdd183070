"""Stop-file callbacks for training frameworks: ``lightning`` and ``huggingface``.

Each submodule imports its framework when it is imported and raises ImportError naming the
package to install when the framework is missing; this package itself imports nothing, so
``import monitor.stopping.integrations`` always works. Plain loops need no integration: see
``monitor.stopping.trainer``.
"""
