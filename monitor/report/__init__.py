"""``stiffness-monitor report``: run histories from the store, matplotlib figures and one HTML
page, written atomically.

May import: ``store``, ``rules`` (the best checkpoint), ``config``, ``monitor.extras``,
``monitor.errors``.
"""
