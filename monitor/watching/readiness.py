"""When is a checkpoint whole? Markers that writers leave, and the settle clock.

Writers announce completeness in different ways, and a sidecar must honour all of them:

- **rename into place** (``torch.save`` to ``x.pt.tmp``, then ``os.replace``): the moved
  event itself says the file is whole, so it is trusted at once;
- **slow writers** that append in place: the size and modification time must stay unchanged
  for ``settle_seconds`` (``time.monotonic``, observed by the watcher's own ``stat`` calls,
  not by counting events). On NFS, ``stat`` may be answered from the attribute cache, so
  ``settle_seconds`` should exceed the mount's ``acregmax`` there;
- **torch.distributed.checkpoint** writes ``.metadata`` last: a folder with ``*.distcp``
  shards but no ``.metadata`` is unfinished;
- **NeMo** puts an ``-unfinished`` marker beside the checkpoint while saving
  (``step=5.ckpt`` → ``step=5-unfinished``): no ``unfinished_markers`` match may exist
  beside it (as ``<name><suffix>``, with ``.ckpt``/``.nemo`` and ``-EMA`` stripped as NeMo
  does) or anywhere inside a folder checkpoint;
- a **ready marker** such as ``commit_success.txt``: when ``ready_markers`` is configured, a
  FOLDER checkpoint is whole only once one of them exists directly inside it. Ready markers
  do not apply to single files, which have nowhere to put one;
- a temporary file (``*.tmp``, ``*.partial``, ...) anywhere inside a folder means a writer
  is still at work there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from monitor.watching.candidates import matches_any
from monitor.watching.fingerprints import Observation

IN_PROGRESS = ("*.tmp", "*.temp", "*.part", "*.partial", "*.incomplete")
_GLOB_CHARS = frozenset("*?[")


def marker_bases(name: str) -> set[str]:
    """The names a sibling marker may start with: the name, and NeMo's shortened forms."""
    stem = Path(name).stem
    bases = {name, stem, stem.removesuffix("-EMA")}
    for suffix in (".ckpt", ".nemo"):
        bases.add(name.removesuffix(suffix).removesuffix("-EMA"))
    return {base for base in bases if base}


@dataclass(frozen=True)
class Completeness:
    """The marker rules of one run (``watch.unfinished_markers``, ``watch.ready_markers``)."""

    unfinished: tuple[str, ...] = ("*-unfinished",)
    ready: tuple[str, ...] = ()

    def missing(self, path: Path, is_dir: bool, observation: Observation) -> str | None:
        """Why the checkpoint is not whole yet (a phrase for the log), or None when it is."""
        sibling = self._unfinished_sibling(path)
        if sibling is not None:
            return f"the unfinished marker {sibling} is present"
        if not is_dir:
            return None
        names = observation.names()
        inside = sorted(n for n in names if matches_any(n, self.unfinished))
        if inside:
            return f"the unfinished marker {inside[0]} is inside it"
        writing = sorted(n for n in names if matches_any(n, IN_PROGRESS))
        if writing:
            return f"{writing[0]} inside it is still being written"
        top = observation.top_level()
        if any(n.endswith(".distcp") for n in top) and ".metadata" not in top:
            return "it has no .metadata yet (torch.distributed.checkpoint writes it last)"
        if self.ready and not any(matches_any(n, self.ready) for n in top):
            return f"none of the ready markers {list(self.ready)} is inside it yet"
        return None

    def _unfinished_sibling(self, path: Path) -> str | None:
        expected = [
            base + glob[1:]
            for glob in self.unfinished
            if glob.startswith("*")
            for base in sorted(marker_bases(path.name))
        ]
        plain = [name for name in expected if not _GLOB_CHARS.intersection(name)]
        for name in plain:
            if os.path.lexists(path.parent / name):
                return name
        globbed = [name for name in expected if _GLOB_CHARS.intersection(name)]
        if globbed:
            try:
                siblings = os.listdir(path.parent)
            except OSError:
                return None
            for sibling in siblings:
                if matches_any(sibling, globbed):
                    return sibling
        return None
