"""How a directory is mounted, and what that means for sharing an index there.

:func:`find_mount` reads the mount table (``/proc/self/mountinfo`` on Linux,
the output of ``mount`` elsewhere) and :func:`classify` judges a mount by
:data:`MOUNT_RULES`: one table, shown in the documentation as it is
(:func:`verdict_table_markdown`, kept equal by a test).

Examples
--------
>>> rule = classify(Mount("/scratch", "nfs", "srv:/export", ("rw", "vers=3", "nolock")))
>>> rule.verdict, rule.filesystem
('unsafe', 'NFSv2/v3')
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MOUNT_RULES", "Mount", "MountRule", "classify", "find_mount", "verdict_table_markdown"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountRule:
    """One row of the verdict table: a kind of mount and what it means.

    Attributes
    ----------
    filesystem : str
        What users call it ("NFSv4").
    fstypes : tuple[str, ...]
        Filesystem types as the kernel names them (``nfs4``, ``fuse.sshfs``).
    options : tuple[str, ...]
        The rule applies only if the mount has one of these options (a flag
        such as ``nolock`` or ``name=value``); empty: whatever the options.
    verdict : str
        ``safe`` (writers on several hosts may share an index),
        ``safe-single-host`` (writers on this host only), ``unsafe`` (locks
        do not exclude writers on different hosts), ``failed`` (locking
        fails) or ``unknown`` (the mount does not say; run the multi-host
        check).
    reason : str
        Why, in one sentence.
    """

    filesystem: str
    fstypes: tuple[str, ...]
    options: tuple[str, ...]
    verdict: str
    reason: str

    def matches(self, mount: Mount) -> bool:
        """Whether this rule describes ``mount``."""
        if not set(self.fstypes) & set(mount.kinds()):
            return False
        return not self.options or any(mount.has_option(o) for o in self.options)


_NFS_ANY = ("nfs", "nfs4")
_LOCAL = (
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "bcachefs",
    "apfs", "hfs", "hfsplus", "ufs", "ffs", "ntfs", "ntfs3", "vfat", "exfat", "overlay",
)  # fmt: skip
_OBJECT_STORES = (
    "fuse.s3fs", "fuse.gcsfuse", "fuse.goofys", "fuse.blobfuse", "fuse.blobfuse2",
    "fuse.rclone", "fuse.mountpoint-s3", "fuse.geesefs",
)  # fmt: skip

#: The verdict table, first match wins. Rendered into the documentation by
#: :func:`verdict_table_markdown` (a test keeps the two equal).
MOUNT_RULES: tuple[MountRule, ...] = (
    MountRule(
        "NFS (any version)", _NFS_ANY, ("local_lock=posix", "local_lock=all"), "unsafe",
        "POSIX locks are kept by each client (local_lock): writers on other hosts "
        "do not see them",
    ),
    MountRule(
        "NFSv2/v3", ("nfs",), ("nolock",), "unsafe",
        "mounted nolock: locks are local to each client",
    ),
    MountRule(
        "NFSv4", ("nfs4",), (), "safe",
        "locking is part of the NFSv4 protocol",
    ),
    MountRule(
        "NFSv2/v3", ("nfs",), (), "safe",
        "locks go through the NLM lock service: lockd and rpc.statd must run on "
        "the server and on every client (if not, locking fails with ENOLCK)",
    ),
    MountRule(
        "Lustre", ("lustre",), ("localflock",), "unsafe",
        "mounted localflock: locks are local to each client",
    ),
    MountRule(
        "Lustre", ("lustre",), ("noflock",), "failed",
        "mounted noflock: every lock request fails, so every write fails",
    ),
    MountRule(
        "Lustre", ("lustre",), ("flock",), "safe",
        "mounted flock: locks are coherent across all clients",
    ),
    MountRule(
        "Lustre", ("lustre",), (), "unknown",
        "neither flock nor localflock in the mount options: the default depends "
        "on the Lustre version; mount with -o flock",
    ),
    MountRule(
        "IBM Storage Scale (GPFS)", ("gpfs",), (), "safe",
        "POSIX byte-range locks are cluster-wide",
    ),
    MountRule(
        "CephFS", ("ceph", "fuse.ceph-fuse"), (), "safe",
        "POSIX locks are coordinated by the metadata servers",
    ),
    MountRule(
        "BeeGFS", ("beegfs",), (), "unknown",
        "locks are shared between clients only with tuneUseGlobalFileLocks=true "
        "in the client configuration, which the mount does not show",
    ),
    MountRule(
        "SMB / CIFS", ("cifs", "smb3", "smbfs"), (), "unsafe",
        "POSIX locks become SMB byte-range locks or stay local to the client "
        "(nobrl): exclusion between clients is not reliable",
    ),
    MountRule(
        "sshfs", ("fuse.sshfs",), (), "unsafe",
        "locks are local to each client",
    ),
    MountRule(
        "Object-store mounts (s3fs, gcsfuse, goofys, blobfuse, rclone, ...)",
        _OBJECT_STORES, (), "unsafe",
        "no locks shared between clients, no real append, no atomic rename",
    ),
    MountRule(
        "Memory (tmpfs, ramfs)", ("tmpfs", "ramfs"), (), "safe-single-host",
        "in this host's memory: only processes on this host can share it",
    ),
    MountRule(
        "Local disks (ext4, XFS, btrfs, ZFS, APFS, ...)", _LOCAL, (), "safe-single-host",
        "a local filesystem: only processes on this host can share it",
    ),
)


@dataclass(frozen=True)
class Mount:
    """The mount a directory is on.

    Attributes
    ----------
    mount_point : str
        Where it is mounted.
    fstype : str
        The filesystem type as the kernel names it (``ext4``, ``nfs4``,
        ``fuse.sshfs``).
    source : str
        What is mounted (a device, ``server:/export``, the FUSE program's name).
    options : tuple[str, ...]
        Mount and filesystem options (``rw``, ``vers=3``, ``nolock``).

    Examples
    --------
    >>> m = Mount("/data", "fuse", "s3fs", ("rw",))
    >>> m.kinds()
    ('fuse', 'fuse.s3fs')
    >>> Mount("/n", "nfs", "s:/x", ("vers=4.2",)).kinds()
    ('nfs4',)
    """

    mount_point: str
    fstype: str
    source: str
    options: tuple[str, ...]

    def option(self, name: str) -> str | None:
        """The value of option ``name`` (``""`` for a flag), or None if absent."""
        for opt in self.options:
            key, sep, value = opt.partition("=")
            if key == name:
                return value if sep else ""
        return None

    def has_option(self, spec: str) -> bool:
        """Whether the mount has ``spec``: a flag (``nolock``) or ``name=value``."""
        name, sep, value = spec.partition("=")
        have = self.option(name)
        return have is not None and (not sep or have == value)

    def kinds(self) -> tuple[str, ...]:
        """The filesystem types this mount counts as for :data:`MOUNT_RULES`.

        ``nfs`` mounted with ``vers=4.x`` counts as ``nfs4``; a FUSE mount
        without a subtype also counts as ``fuse.<program>`` from its source.
        """
        fstype = self.fstype.lower()
        if fstype == "nfs" and (self.option("vers") or self.option("nfsvers") or "").startswith(
            "4"
        ):
            return ("nfs4",)
        if fstype in ("fuse", "fuseblk") and self.source:
            program = os.path.basename(self.source.split(":", 1)[0]).lower()
            return (fstype, f"fuse.{program}") if program else (fstype,)
        return (fstype,)

    def describe(self) -> str:
        """``SOURCE on MOUNT_POINT type FSTYPE (OPTIONS)``, as ``mount`` prints it."""
        return f"{self.source} on {self.mount_point} type {self.fstype} ({','.join(self.options)})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "mount_point": self.mount_point,
            "fstype": self.fstype,
            "source": self.source,
            "options": list(self.options),
        }


def classify(mount: Mount) -> MountRule | None:
    """The first rule of :data:`MOUNT_RULES` that describes ``mount``, or None.

    Examples
    --------
    >>> classify(Mount("/lus", "lustre", "mgs@tcp:/fs", ("rw", "flock"))).verdict
    'safe'
    >>> classify(Mount("/x", "weirdfs", "dev", ())) is None
    True
    """
    for rule in MOUNT_RULES:
        if rule.matches(mount):
            return rule
    return None


def verdict_table_markdown() -> str:
    """:data:`MOUNT_RULES` as the markdown table shown in the documentation.

    Examples
    --------
    >>> print(verdict_table_markdown().splitlines()[0])
    | Filesystem | Type | Mount options | Verdict | Why |
    """
    lines = ["| Filesystem | Type | Mount options | Verdict | Why |", "|---|---|---|---|---|"]
    for rule in MOUNT_RULES:
        types = ", ".join(f"`{t}`" for t in rule.fstypes)
        options = " or ".join(f"`{o}`" for o in rule.options) if rule.options else "any"
        lines.append(
            f"| {rule.filesystem} | {types} | {options} | {rule.verdict} | {rule.reason} |"
        )
    return "\n".join(lines) + "\n"


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.split("\n"):  # the kernel escapes only " \t\n\\" in fields
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            mount_point = _unescape_mountinfo(fields[4])
            options = fields[5].split(",")
            fstype = fields[sep + 1]
            source = _unescape_mountinfo(fields[sep + 2])
            options += fields[sep + 3].split(",") if len(fields) > sep + 3 else []
        except (ValueError, IndexError):
            continue
        unique = tuple(dict.fromkeys(o for o in options if o))
        mounts.append(Mount(mount_point, fstype, source, unique))
    return mounts


_MOUNT_LINE = re.compile(
    r"^(?P<source>.+?) on (?P<mp>.+?)"
    r"(?: type (?P<type1>\S+) \((?P<opts1>[^)]*)\)| \((?P<type2>[^,)]+)(?:, (?P<opts2>[^)]*))?\))$"
)


def _parse_mount_output(text: str) -> list[Mount]:
    """Parse ``mount`` output: Linux (``type T (opts)``) or BSD/macOS (``(T, opts)``)."""
    mounts = []
    for line in text.splitlines():
        m = _MOUNT_LINE.match(line.strip())
        if not m:
            continue
        fstype = m["type1"] or m["type2"] or ""
        opts = m["opts1"] if m["type1"] else (m["opts2"] or "")
        options = tuple(o.strip() for o in opts.split(",") if o.strip())
        mounts.append(Mount(m["mp"], fstype.strip(), m["source"], options))
    return mounts


def _covering(mounts: Sequence[Mount], path: str) -> Mount | None:
    best: Mount | None = None
    for mount in mounts:  # later mounts hide earlier ones on the same point
        mp = mount.mount_point.rstrip("/") or "/"
        covers = path == mp or path.startswith(mp + "/") or mp == "/"
        if covers and (best is None or len(mp) >= len(best.mount_point.rstrip("/") or "/")):
            best = mount
    return best


def find_mount(directory: str | os.PathLike[str]) -> Mount | None:
    """The mount ``directory`` is on, or None when it cannot be told.

    Linux reads ``/proc/self/mountinfo`` (the longest mount point that is a
    prefix of the directory's real path); other systems parse the output of
    ``mount``. Never raises for an unreadable mount table.

    Examples
    --------
    >>> find_mount("/").mount_point
    '/'
    """
    path = os.path.realpath(os.fspath(directory))
    mounts: list[Mount] = []
    try:
        if os.path.exists("/proc/self/mountinfo"):
            with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
                mounts = _parse_mountinfo(f.read())
        elif shutil.which("mount"):  # pragma: no cover - not Linux
            out = subprocess.run(
                ["mount"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
            mounts = _parse_mount_output(out)
    except (OSError, subprocess.SubprocessError, UnicodeError) as e:  # pragma: no cover
        logger.debug("cannot read the mount table: %s", e)
        return None
    return _covering(mounts, path)
