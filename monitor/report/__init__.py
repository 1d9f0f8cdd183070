"""``stiffness-monitor report``: run histories from the store, matplotlib figures and one HTML
page, written atomically.

May import: ``store``, ``config``, ``monitor.extras``, ``monitor.errors``.
"""
