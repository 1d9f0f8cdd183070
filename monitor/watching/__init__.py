"""Watching run directories for complete checkpoints (DESIGN §1, issue 4 items 1–2).

``RunWatcher`` watches one run and calls ``on_ready(candidate)`` once per complete checkpoint
version; ``Candidate`` is the value it hands over. The modules, one concern each:
``filesystems`` (which mounts need polling), ``observers`` (watchdog, native or polling),
``candidates`` (what counts as a checkpoint), ``fingerprints`` (cheap state and identity),
``readiness`` (the markers writers leave), ``settling`` (the settle clock), ``problems``
(what is reported through ``on_problem``) and ``watcher`` (the thread that ties them
together).
"""

from monitor.watching.candidates import Candidate
from monitor.watching.watcher import RunWatcher

__all__ = ["Candidate", "RunWatcher"]
