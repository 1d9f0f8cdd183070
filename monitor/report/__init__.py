"""``stiffness-monitor report``: run histories from the store, the summary a person reads
first, matplotlib figures of what the rules read and one HTML page, written atomically.

May import: ``store``, ``rules`` (the best checkpoint, the metrics the rules read, splitting
their reasons), ``config``, ``monitor.extras``,
``monitor.errors``.
"""
