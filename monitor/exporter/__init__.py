"""Prometheus metrics: the metric families and the one HTTP(S) server that serves them with
``/healthz`` and ``/readyz``.

May import: ``rules`` (to export rule state), ``config``, ``monitor.errors``.
"""
