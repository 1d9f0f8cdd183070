"""Reading checkpoints, every way trainers write them: format detection, weights-only loading
of each format, DCP folders, and fitting the weights into the model.

May import: ``config``, ``monitor.errors``.
"""
