"""Early-stopping rules: the YAML spec, the metrics rules read, the rule kinds, the engine that
judges each evaluation, and ``backtest`` over a stored history. Pure apart from reading
rule files and the store.

May import: ``store`` (backtest reads it), ``config`` (its YAML messages), ``monitor.errors``.
"""
