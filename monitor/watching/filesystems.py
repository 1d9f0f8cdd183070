"""Which filesystem a run directory lives on, and whether inotify can be trusted there.

inotify reports only what the local kernel sees. On a network filesystem (NFS, SMB, Lustre,
GPFS, ...) or a FUSE mount backed by object storage (gcsfuse, s3fs, ...) the trainer usually
writes from another host, so no event ever arrives: those paths must be polled. The mount
table says which filesystem holds a path: the mount point that is the longest prefix of the
resolved path wins (later mounts shadow earlier ones on the same point).

The parsers are pure functions over the table's text, so they are tested with sample lines;
``mount_for`` is the only part that reads ``/proc``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
MOUNTS = Path("/proc/mounts")

# Filesystems whose writers are usually other hosts, so inotify stays silent.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb", "smb3", "smbfs", "ncpfs", "afs", "coda", "9p",
        "lustre", "gpfs", "ceph", "cephfs", "glusterfs", "beegfs", "orangefs", "pvfs2",
        "panfs", "wekafs", "quobyte", "cvfs", "gfs2", "ocfs2", "davfs", "virtiofs",
        "vboxsf", "vmhgfs", "fuse", "fuse.glusterfs", "fuse.sshfs",
    }
)  # fmt: skip
# FUSE mounts are remote unless they are a local block device (ntfs-3g and friends).
LOCAL_FUSE = frozenset({"fuseblk", "fusectl"})

_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of the mount table: where, what kind, and from which device or server."""

    mount_point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as octal (``\\040``)."""
    raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), os.fsencode(field))
    return os.fsdecode(raw)


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse ``/proc/self/mountinfo`` (see proc(5)); malformed lines are skipped.

    A line reads ``id parent major:minor root mount-point options [optional...] - fstype
    source super-options``: the optional fields vary in number, so the fields after the
    ``-`` separator are found by position relative to it.
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        tail = fields[fields.index("-", 6) + 1 :]
        if len(tail) < 2:
            continue
        mounts.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1])))
    return mounts


def parse_mounts(text: str) -> list[Mount]:
    """Parse ``/proc/mounts`` (``source mount-point fstype options dump pass``)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mounts.append(Mount(_unescape(fields[1]), fields[2], _unescape(fields[0])))
    return mounts


def _contains(mount_point: str, path: str) -> bool:
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def find_mount(path: str | Path, mounts: Iterable[Mount]) -> Mount | None:
    """The mount holding ``path`` (already resolved): the longest mount point that is a prefix.

    Among mounts on the same point the last one wins, as in the kernel's view.
    """
    best: Mount | None = None
    for mount in mounts:
        if _contains(mount.mount_point, str(path)) and (
            best is None or len(mount.mount_point) >= len(best.mount_point)
        ):
            best = mount
    return best


def is_network_filesystem(fstype: str) -> bool:
    """True for filesystems where inotify misses writes made by other hosts."""
    fstype = fstype.lower()
    if fstype in LOCAL_FUSE:
        return False
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse.")


def read_mount_table() -> list[Mount]:
    """This process's mount table: mountinfo when readable, else /proc/mounts, else empty."""
    for source, parse in ((MOUNTINFO, parse_mountinfo), (MOUNTS, parse_mounts)):
        try:
            text = source.read_text(encoding="utf-8", errors="surrogateescape")
        except OSError:
            continue
        mounts = parse(text)
        if mounts:
            return mounts
    return []


def mount_for(path: str | Path) -> Mount | None:
    """The mount holding ``path`` (resolved, so symlinks count); None where /proc is absent."""
    return find_mount(Path(path).resolve(), read_mount_table())


def polling_reason(path: str | Path) -> str | None:
    """Why ``observer: auto`` should poll ``path``, or None when inotify can be trusted."""
    mount = mount_for(path)
    if mount is None or not is_network_filesystem(mount.fstype):
        return None
    return (
        f"{path} is on a {mount.fstype} filesystem ({mount.source} mounted at "
        f"{mount.mount_point}), where inotify does not see writes from other hosts"
    )
