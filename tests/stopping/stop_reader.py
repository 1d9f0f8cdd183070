"""Reads one path in a tight loop and counts what it sees (a test fixture, run as a script).

``stop_reader.py PATH DONE_FILE``: prints ``ready``, then reads PATH until DONE_FILE exists and
prints one JSON line counting reads that found no file, a complete JSON object, or anything
else (empty or partial content), with one example of the latter.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    path, done = sys.argv[1:]
    counts = {"absent": 0, "complete": 0, "partial": 0}
    example = None
    print("ready", flush=True)
    while not os.path.exists(done):
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            counts["absent"] += 1
            continue
        try:
            complete = isinstance(json.loads(raw), dict)
        except ValueError:
            complete = False
        counts["complete" if complete else "partial"] += 1
        if not complete and example is None:
            example = raw[:80].decode("utf-8", errors="replace")
    print(json.dumps({**counts, "example": example}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
