"""The trainer-side stop helpers under their first import path, kept so trainers keep working.

They live in ``monitor.stopping.trainer``; this module only re-exports them (standard library
only, like the original), so ``from monitor.trainer import should_stop`` still works.
"""

from monitor.stopping.trainer import (
    MAX_STOP_FILE_BYTES,
    StopFilePoller,
    read_stop,
    read_stop_distributed,
    should_stop,
    should_stop_distributed,
)

__all__ = [
    "MAX_STOP_FILE_BYTES",
    "StopFilePoller",
    "read_stop",
    "read_stop_distributed",
    "should_stop",
    "should_stop_distributed",
]
