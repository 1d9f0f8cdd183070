"""Which mounts need the polling observer: the mount-table parsers, on sample lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.watching.filesystems import (
    Mount,
    find_mount,
    is_network_filesystem,
    mount_for,
    parse_mountinfo,
    parse_mounts,
    polling_reason,
)
from monitor.watching.observers import choose_observer

MOUNTINFO = """\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
40 22 0:45 / /mnt/nfs rw,relatime shared:30 - nfs4 fileserver:/export/ckpt rw,vers=4.2
41 22 0:46 / /mnt/gcs rw,nosuid,nodev,relatime shared:31 - fuse.gcsfuse my-bucket rw,user_id=0
42 22 0:47 / /lustre/scratch rw,relatime shared:32 - lustre 10.0.0.1@o2ib:/scratch rw,flock
43 22 0:48 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay rw,lowerdir=/l
44 22 0:49 /exports /mnt/my\\040checkpoints rw,relatime shared:33 master:2 - cifs //nas/ckpt rw
45 40 0:50 / /mnt/nfs/local rw,relatime shared:34 - tmpfs tmpfs rw
garbage line without a separator
"""

MOUNTS = """\
/dev/nvme0n1p2 / ext4 rw,relatime 0 0
fileserver:/export/ckpt /mnt/nfs nfs4 rw,vers=4.2 0 0
my-bucket /mnt/gcs fuse.gcsfuse rw,nosuid 0 0
"""


def test_mountinfo_lines_are_parsed() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert len(mounts) == 8  # the garbage line is skipped
    assert mounts[0] == Mount("/", "ext4", "/dev/nvme0n1p2")
    assert mounts[2] == Mount("/mnt/nfs", "nfs4", "fileserver:/export/ckpt")
    assert mounts[3] == Mount("/mnt/gcs", "fuse.gcsfuse", "my-bucket")
    assert mounts[4] == Mount("/lustre/scratch", "lustre", "10.0.0.1@o2ib:/scratch")
    assert mounts[5].fstype == "overlay"


def test_escaped_spaces_and_a_varying_number_of_optional_fields() -> None:
    mount = parse_mountinfo(MOUNTINFO)[6]  # two optional fields before the "-"
    assert mount == Mount("/mnt/my checkpoints", "cifs", "//nas/ckpt")


def test_proc_mounts_is_the_fallback_format() -> None:
    assert parse_mounts(MOUNTS)[1] == Mount("/mnt/nfs", "nfs4", "fileserver:/export/ckpt")
    assert parse_mounts("/dev/sda1 /mnt/a\\040b ext4 rw 0 0") == [
        Mount("/mnt/a b", "ext4", "/dev/sda1")
    ]


@pytest.mark.parametrize(
    ("path", "fstype"),
    [
        ("/home/me/run", "ext4"),
        ("/mnt/nfs/run-a/step_1.pt", "nfs4"),
        ("/mnt/nfs", "nfs4"),
        ("/mnt/nfsother/run", "ext4"),  # a prefix of the name is not a parent folder
        ("/mnt/nfs/local/run", "tmpfs"),  # the longest mount point wins
        ("/mnt/gcs/run", "fuse.gcsfuse"),
        ("/lustre/scratch/me/run", "lustre"),
        ("/var/lib/docker/overlay2/abc/merged/ckpt", "overlay"),
        ("/mnt/my checkpoints/run", "cifs"),
    ],
)
def test_the_longest_mount_point_holds_the_path(path: str, fstype: str) -> None:
    mount = find_mount(path, parse_mountinfo(MOUNTINFO))
    assert mount is not None and mount.fstype == fstype


def test_the_last_mount_on_a_point_shadows_earlier_ones() -> None:
    mounts = [Mount("/data", "ext4", "/dev/sdb"), Mount("/data", "nfs", "server:/data")]
    assert find_mount("/data/run", mounts) == mounts[1]
    assert find_mount("/data/run", []) is None


@pytest.mark.parametrize(
    ("fstype", "network"),
    [
        ("ext4", False), ("xfs", False), ("overlay", False), ("tmpfs", False), ("btrfs", False),
        ("fuseblk", False), ("nfs", True), ("nfs4", True), ("cifs", True), ("smb3", True),
        ("lustre", True), ("gpfs", True), ("ceph", True), ("glusterfs", True), ("beegfs", True),
        ("9p", True), ("afs", True), ("fuse.gcsfuse", True), ("fuse.s3fs", True),
        ("fuse.juicefs", True), ("fuse", True), ("NFS4", True),
    ],
)  # fmt: skip
def test_network_and_fuse_filesystems_need_polling(fstype: str, network: bool) -> None:
    assert is_network_filesystem(fstype) is network


def test_this_machines_table_is_read(tmp_path: Path) -> None:
    mount = mount_for(tmp_path)
    assert mount is not None and Path(tmp_path).resolve().is_relative_to(mount.mount_point)
    if not is_network_filesystem(mount.fstype):
        assert polling_reason(tmp_path) is None
        assert choose_observer("auto", tmp_path) == ("native", None)
    assert choose_observer("polling", tmp_path) == ("polling", None)
    assert choose_observer("native", tmp_path) == ("native", None)
