"""The sidecar: the evaluation loop that wires watchers, queue, evaluation, store, exporter,
rules and the stop file together, and ``check``, its preflight. It wires; it computes nothing.

May import: every package below it (``evaluation``, ``watching``, ``rules``, ``store``,
``exporter``, ``stopping``, ``probe``, ``checkpoints``, ``config``, ``distributed``,
``stiffness``), never ``report``, ``demo`` or ``cli``.
"""
