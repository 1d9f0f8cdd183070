"""``stiffness-monitor demo``: a small trainer on scikit-learn's digits, the daemon beside it,
and the summary printed at the end.

May import: ``report``, ``rules``, ``store``, ``stopping``, ``monitor.extras``,
``monitor.errors``; it starts the daemon as a subprocess, never imports it.
"""
