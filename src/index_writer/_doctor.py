"""Is it safe to share an index in a directory? (``index-writer doctor``)

Writers exclude each other with POSIX byte-range locks (``fcntl``/``lockf``,
the lock fasteners takes) on a lock file next to the index, append rows with
``O_APPEND`` and replace the index with ``os.replace``. :func:`diagnose` checks
all of that in a directory, two ways:

1. **The mount.** The filesystem type and mount options of the directory are
   looked up (``/proc/self/mountinfo`` on Linux, the ``mount`` command
   elsewhere) and judged by :data:`MOUNT_RULES`, one table that the
   documentation shows as it is.
2. **Live probes**, with real processes on this host, in a private
   subdirectory that is always removed afterwards: a second process cannot
   take a lock the first holds; locks are released when their holder is
   killed; appends from several processes land whole; a reader never sees a
   missing or partial file while another process replaces it. Locking that
   fails outright (``ENOLCK``, ``ENOSYS``, ``EOPNOTSUPP``) is reported as such.

With ``hosts=N`` the same call, started at once on N hosts (``srun -N4
index-writer doctor DIR --hosts 4``), also checks that locks exclude each
other *across* hosts: the participants meet in a shared probe directory, take
one lock in turns, and count a shared sequence number under it. A lost update
of that number proves that two holds overlapped, without comparing clocks; see
:func:`diagnose`.

Examples
--------
>>> rule = classify(Mount("/scratch", "nfs", "srv:/export", ("rw", "vers=3", "nolock")))
>>> rule.verdict, rule.filesystem
('unsafe', 'NFSv2/v3')
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import queue
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MOUNT_RULES",
    "VERDICTS",
    "Check",
    "Mount",
    "MountRule",
    "Report",
    "classify",
    "diagnose",
    "find_mount",
    "verdict_table_markdown",
]

logger = logging.getLogger(__name__)

#: The verdicts of :func:`diagnose`, best first.
VERDICTS = ("safe", "safe-single-host", "unsafe", "failed")

#: Which verdict wins when several findings disagree (higher wins): a filesystem
#: that silently loses rows is worse news than one where the check could not
#: finish or where locking fails loudly.
_SEVERITY = {"safe": 0, "safe-single-host": 1, "failed": 2, "unsafe": 3}

#: Errors from ``fcntl`` that mean "no locks on this filesystem".
_UNSUPPORTED = frozenset(
    e for e in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", None))
    if e is not None
)

PROBE_PREFIX = ".index-writer-doctor"

# ------------------------------------------------------------ the mount table


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
    >>> _say(verdict_table_markdown().splitlines()[0])
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


# ------------------------------------------------------------------ the report


@dataclass
class Check:
    """One finding of :func:`diagnose`.

    Attributes
    ----------
    name : str
        ``mount``, ``locks-supported``, ``lock-exclusion``,
        ``lock-release-on-kill``, ``append``, ``replace`` or ``hosts``.
    outcome : str
        ``ok``, ``unsafe``, ``failed``, ``unknown`` or ``skipped``.
    message : str
        One line for humans.
    details : dict
        Figures and examples, for ``--json``.
    """

    name: str
    outcome: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """``outcome: message``, as the evidence lines show it."""
        label = {"ok": "ok", "unsafe": "UNSAFE", "failed": "FAILED"}.get(self.outcome, self.outcome)
        return f"{label}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "outcome": self.outcome,
            "message": self.message,
            "details": self.details,
        }


@dataclass
class Report:
    """What :func:`diagnose` found.

    Attributes
    ----------
    directory : str
        The directory checked.
    verdict : str
        One of :data:`VERDICTS`.
    summary : str
        The verdict explained in one line.
    checks : list[Check]
        The findings, mount first.
    mount : Mount | None
        The mount of the directory, if it could be read.
    host : str
        This host's name.
    hosts : int
        How many hosts took part (1: this host only).
    participants : list[dict]
        In a multi-host check: each participant's host, id and verdict.

    Examples
    --------
    >>> r = Report("/d", "unsafe", "locks do not exclude", [Check("x", "unsafe", "bad")])
    >>> r.exit_status, r.evidence
    (1, ['UNSAFE: bad'])
    """

    directory: str
    verdict: str
    summary: str
    checks: list[Check] = field(default_factory=list)
    mount: Mount | None = None
    host: str = ""
    hosts: int = 1
    participants: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """0 for ``safe`` and ``safe-single-host``, 1 otherwise."""
        return 0 if self.verdict in ("safe", "safe-single-host") else 1

    @property
    def evidence(self) -> list[str]:
        """One line per finding."""
        return [check.line() for check in self.checks]

    def render(self) -> str:
        """The human report: the verdict line first, then the evidence."""
        lines = [f"{self.verdict}: {self.summary}"]
        lines += [f"  {line}" for line in self.evidence]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``--json`` prints)."""
        return {
            "directory": self.directory,
            "verdict": self.verdict,
            "summary": self.summary,
            "exit_status": self.exit_status,
            "host": self.host,
            "hosts": self.hosts,
            "mount": None if self.mount is None else self.mount.to_dict(),
            "checks": [c.to_dict() for c in self.checks],
            "participants": self.participants,
        }

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)


# --------------------------------------------------------------- lock helpers
# Platform-specific, kept here rather than in _platform.py: only the doctor
# needs to lock an arbitrary descriptor without the index's lock machinery.

try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None  # type: ignore[assignment]


def _try_lock(fd: int) -> bool:
    """Take the ``lockf`` lock (the one fasteners takes) if free; False if busy."""
    assert _fcntl is not None
    try:
        _fcntl.lockf(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise


def _lock(fd: int, deadline: float) -> bool:
    """Poll for the lock until ``deadline`` (monotonic); True once held."""
    delay = 0.0002
    while True:
        if _try_lock(fd):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.005)


def _unlock(fd: int) -> None:
    assert _fcntl is not None
    _fcntl.lockf(fd, _fcntl.LOCK_UN)


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        name = errno.errorcode.get(e.errno or 0, str(e.errno))
        where = f" ({e.filename})" if e.filename else ""
        return f"{name}: {e.strerror}{where}"
    return f"{type(e).__name__}: {e}"


# ------------------------------------------------------------- child processes

_CHILD_CODE = "import sys; from index_writer._doctor import _child; sys.exit(_child(sys.argv[1:]))"


class _Child:
    """A probe process: commands on stdin, one answer per line on stdout."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()

    def answer(self, timeout: float) -> str:
        """The next line, or raise RuntimeError on exit or timeout."""
        try:
            line = self._lines.get(timeout=max(timeout, 0.01))
        except queue.Empty:
            raise RuntimeError(f"a probe process gave no answer within {timeout:.0f} s") from None
        if line is None:
            self.proc.wait()
            err = self.proc.stderr.read().strip() if self.proc.stderr else ""
            raise RuntimeError(
                f"a probe process exited with status {self.proc.returncode}"
                + (f": {err.splitlines()[-1]}" if err else "")
            )
        if line.startswith("error "):
            raise _ChildError(line[6:])
        return line

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class _ChildError(RuntimeError):
    """A probe process reported an OSError (``errno-name: message``)."""


def _append_record(writer: int, i: int) -> bytes:
    pad = "abcdefghij"[(writer + i) % 10] * ((i * 37 + writer * 11) % 300 + 1)
    body = f"{writer}:{i}:{pad}"
    return f"{body}:{zlib.crc32(body.encode()):08x}\n".encode()


def _replace_version(v: int) -> bytes:
    payload = bytes([v % 251]) * (4096 + (v * 997) % 28672)
    return f"v{v} {len(payload)} {zlib.crc32(payload):08x}\n".encode() + payload


def _check_version(data: bytes) -> str | None:
    """None if ``data`` is a whole version written by the replace probe."""
    head, nl, payload = data.partition(b"\n")
    try:
        _v, size, crc = head.decode().split(" ")
        if nl and len(payload) == int(size) and zlib.crc32(payload) == int(crc, 16):
            return None
    except (ValueError, UnicodeDecodeError):
        pass
    return f"{len(data)} bytes starting {data[:24]!r}"


def _say(line: str) -> None:
    """One answer of a probe process to its parent."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _child(argv: list[str]) -> int:
    """Entry point of the probe processes (``python -c``)."""
    role, args = argv[0], argv[1:]
    try:
        status: int = _CHILD_ROLES[role](*args)
        return status
    except OSError as e:
        _say(f"error {_describe(e)}")
        return 1


def _child_hold(path: str, timeout: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    if not _lock(fd, time.monotonic() + float(timeout)):
        _say("busy")
        return 1
    _say("held")
    sys.stdin.readline()  # "release", or EOF when the parent is gone
    _unlock(fd)
    _say("released")
    return 0


def _child_try(path: str, timeout: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    if _try_lock(fd):
        _say("got")
        _unlock(fd)
        return 0
    _say("busy")
    if sys.stdin.readline().strip() != "wait":
        return 0
    _say("got" if _lock(fd, time.monotonic() + float(timeout)) else "busy")
    return 0


def _child_append(path: str, lock_path: str, writer: str, count: str, timeout: str) -> int:
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    _say("ready")
    sys.stdin.readline()  # "go": all writers start together
    deadline = time.monotonic() + float(timeout)
    for i in range(int(count)):
        if not _lock(lock_fd, deadline):
            _say("busy")
            return 1
        try:
            os.write(fd, _append_record(int(writer), i))
        finally:
            _unlock(lock_fd)
    _say("done")
    return 0


def _child_replace(target: str, count: str, done: str) -> int:
    tmp = f"{target}.tmp"
    for v in range(1, int(count) + 1):
        with open(tmp, "wb") as f:
            f.write(_replace_version(v))
        os.replace(tmp, target)
    with open(done, "wb"):
        pass
    _say("done")
    return 0


def _child_read(target: str, done: str, timeout: str) -> int:
    deadline = time.monotonic() + float(timeout)
    reads = missing = partial = stale = 0
    example = ""
    _say("ready")
    while not os.path.exists(done) and time.monotonic() < deadline:
        try:
            with open(target, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            missing += 1
            continue
        except OSError as e:
            # A network filesystem may answer ESTALE when the file was
            # replaced between looking it up and opening it: an error the
            # reader sees and retries, never a wrong content.
            if e.errno != errno.ESTALE:
                raise
            stale += 1
            continue
        reads += 1
        problem = _check_version(data)
        if problem is not None:
            partial += 1
            example = example or problem
    _say(json.dumps({"reads": reads, "missing": missing, "partial": partial,
                      "stale": stale, "example": example}))
    return 0


_CHILD_ROLES: dict[str, Any] = {
    "hold": _child_hold,
    "try": _child_try,
    "append": _child_append,
    "replace": _child_replace,
    "read": _child_read,
}


# ---------------------------------------------------------------- local probes


class _Probes:
    """The live checks on this host, in a private directory."""

    APPEND_WRITERS = 4
    APPENDS = 200
    REPLACES = 200
    READERS = 2
    RELEASE_WAIT = 5.0

    def __init__(self, work: Path, timeout: float) -> None:
        self.work = work
        self.timeout = timeout
        self.children: list[_Child] = []

    def spawn(self, *args: str) -> _Child:
        child = _Child(*args)
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in self.children:
            child.close()
        self.children.clear()

    def run(self) -> list[Check]:
        checks = [self.locks_supported()]
        if checks[0].outcome != "ok":
            return checks
        checks += self.exclusion_and_release()
        checks.append(self.append())
        checks.append(self.replace())
        return checks

    # -- locks
    def locks_supported(self) -> Check:
        if _fcntl is None:  # pragma: no cover - Windows
            return Check("locks-supported", "skipped",
                         "no POSIX locks on this platform: live lock checks skipped")
        path = self.work / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not _lock(fd, time.monotonic() + self.timeout):
                return Check("locks-supported", "failed",
                             f"a new lock file stayed locked for {self.timeout:g} s")
            _unlock(fd)
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                return Check(
                    "locks-supported", "failed",
                    f"locks not supported here: fcntl lock on {path} failed with "
                    f"{_describe(e)}; index-writer cannot write in this directory",
                    {"errno": errno.errorcode.get(e.errno or 0, "")},
                )
            raise
        finally:
            os.close(fd)
        return Check("locks-supported", "ok", "POSIX (fcntl) locks can be taken")

    def exclusion_and_release(self) -> list[Check]:
        path = str(self.work / "lock")
        t = self.timeout
        failures: list[str] = []
        # 1. A child holds the lock: we must not get it.
        holder = self.spawn("hold", path, str(t))
        holder.answer(t)  # "held"
        fd = os.open(path, os.O_RDWR)
        try:
            if _try_lock(fd):
                _unlock(fd)
                failures.append("this process took the lock while another process held it")
            # 2. Kill the holder: the lock must become free.
            holder.kill()
            started = time.monotonic()
            released = _lock(fd, started + self.RELEASE_WAIT)
            waited = time.monotonic() - started
            if released:
                release = Check(
                    "lock-release-on-kill", "ok",
                    f"a SIGKILLed holder's lock was free again after {waited:.2f} s",
                    {"seconds": round(waited, 3)},
                )
            else:
                release = Check(
                    "lock-release-on-kill", "unsafe",
                    f"the lock was still held {self.RELEASE_WAIT:g} s after its holder was "
                    "killed: writers would wait for a dead process",
                )
            # 3. We hold it: a new process must not get it, then get it once we unlock.
            if not released and not _lock(fd, time.monotonic() + t):
                return [Check("lock-exclusion", "failed", "the probe lock never became free"),
                        release]
            probe = self.spawn("try", path, str(t))
            if probe.answer(t) == "got":
                failures.append("another process took the lock while this process held it")
            else:
                _unlock(fd)
                probe.send("wait")
                if probe.answer(t) != "got":
                    failures.append(
                        f"another process could not take the lock within {t:g} s after "
                        "this process released it"
                    )
        finally:
            os.close(fd)
        if failures:
            exclusion = Check(
                "lock-exclusion", "unsafe",
                "locks do not exclude: " + "; ".join(failures),
                {"failures": failures},
            )
        else:
            exclusion = Check(
                "lock-exclusion", "ok",
                "POSIX locks exclude: a second process could not take the lock while the "
                "first held it (both ways)",
            )
        return [exclusion, release]

    # -- appends
    def append(self) -> Check:
        path = self.work / "appends"
        lock = str(self.work / "lock")
        t = self.timeout
        writers = [
            self.spawn("append", str(path), lock, str(w), str(self.APPENDS), str(t))
            for w in range(self.APPEND_WRITERS)
        ]
        for w in writers:
            w.answer(t)  # "ready"
        for w in writers:
            w.send("go")
        for w in writers:
            if w.answer(t) != "done":
                return Check("append", "failed", f"an append probe could not lock within {t:g} s")
        data = path.read_bytes()
        total = self.APPEND_WRITERS * self.APPENDS
        problems = _append_problems(
            data, {(w, i) for w in range(self.APPEND_WRITERS) for i in range(self.APPENDS)}
        )
        if problems:
            return Check(
                "append", "unsafe",
                f"appends from {self.APPEND_WRITERS} processes did not land whole: "
                + "; ".join(problems),
                {"appends": total, "problems": problems},
            )
        return Check(
            "append", "ok",
            f"{total} O_APPEND appends from {self.APPEND_WRITERS} processes (under the lock) "
            "landed whole and in order",
            {"appends": total},
        )

    # -- atomic replace
    def replace(self) -> Check:
        target = self.work / "replaced"
        done = self.work / "replaced.done"
        target.write_bytes(_replace_version(0))
        t = self.timeout
        readers = [self.spawn("read", str(target), str(done), str(t))
                   for _ in range(self.READERS)]
        for r in readers:
            r.answer(t)  # "ready"
        writer = self.spawn("replace", str(target), str(self.REPLACES), str(done))
        writer.answer(t)  # "done"
        results = [json.loads(r.answer(t)) for r in readers]
        reads = sum(r["reads"] for r in results)
        missing = sum(r["missing"] for r in results)
        partial = sum(r["partial"] for r in results)
        stale = sum(r["stale"] for r in results)
        details = {"replaces": self.REPLACES, "reads": reads, "missing": missing,
                   "partial": partial, "stale": stale}
        if missing or partial:
            example = next((r["example"] for r in results if r["example"]), "")
            what = []
            if missing:
                what.append(f"{missing} found no file")
            if partial:
                what.append(f"{partial} read a partial file (e.g. {example})")
            return Check(
                "replace", "unsafe",
                f"os.replace is not atomic here: of {reads + missing} reads during "
                f"{self.REPLACES} replacements, {' and '.join(what)}",
                details,
            )
        note = f" ({stale} opens failed with ESTALE and were retried)" if stale else ""
        return Check(
            "replace", "ok",
            f"{self.REPLACES} os.replace calls: {reads} reads by {self.READERS} other "
            f"processes saw only whole files{note}",
            details,
        )


def _append_problems(data: bytes, expected: set[tuple[int, int]]) -> list[str]:
    """What is wrong with an appends file: NUL bytes, torn lines, lost or repeated records."""
    problems = []
    nuls = data.count(b"\0")
    if nuls:
        problems.append(f"{nuls} NUL bytes")
    if data and not data.endswith(b"\n"):
        problems.append("the file does not end with a whole line")
    seen: dict[tuple[int, int], int] = {}
    torn = 0
    example = b""
    last: dict[int, int] = {}
    disorder = 0
    for line in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
        try:
            body, crc = line.rsplit(b":", 1)
            writer, i, _ = body.split(b":", 2)
            if zlib.crc32(body) != int(crc, 16):
                raise ValueError
            key = (int(writer), int(i))
        except ValueError:
            torn += 1
            example = example or line[:40]
            continue
        seen[key] = seen.get(key, 0) + 1
        if key[1] < last.get(key[0], -1):
            disorder += 1
        last[key[0]] = key[1]
    if torn:
        problems.append(f"{torn} torn or interleaved lines (e.g. {example!r})")
    lost = len(expected - seen.keys())
    if lost:
        problems.append(f"{lost} of {len(expected)} records lost")
    repeated = sum(n - 1 for n in seen.values() if n > 1)
    if repeated:
        problems.append(f"{repeated} records written twice")
    if disorder:
        problems.append(f"{disorder} records out of order")
    return problems


# ----------------------------------------------------------------- multi-host

_COUNTER_SIZE = 64


def _counter_record(seq: int, holder: str) -> bytes:
    return f"{seq:020d} {holder[:40]}".ljust(_COUNTER_SIZE - 1).encode() + b"\n"


def _parse_counter(data: bytes) -> tuple[int, str]:
    if not data.strip():
        return 0, "-"
    seq, _, holder = data.decode("ascii", "replace").strip().partition(" ")
    return int(seq), holder.strip() or "-"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:60] or "host"


class _Rendezvous:
    """The shared probe directory of a multi-host check.

    Files: ``hello.<id>.json`` (a participant arrived, with its local
    findings), ``holds.<id>.json`` (its lock holds), ``done.<id>`` (it has read
    everyone's holds), ``lock`` (the probe lock), ``counter`` (the shared
    sequence number) and ``appends`` (one line per hold).
    """

    def __init__(self, shared: Path, me: str, hosts: int, timeout: float) -> None:
        self.dir = shared
        self.me = me
        self.hosts = hosts
        self.timeout = timeout
        self.mine: list[Path] = []

    def write(self, name: str, payload: dict[str, Any]) -> None:
        path = self.dir / name
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(json.dumps(payload), encoding="utf-8")
        os.replace(tmp, path)
        self.mine.append(path)

    def names(self, prefix: str) -> list[str]:
        # Creating and removing a file makes an NFS client notice that the
        # directory changed, so it rereads the listing instead of trusting
        # its cache for up to a minute.
        ping = self.dir / f".ping.{self.me}"
        with contextlib.suppress(OSError):
            ping.touch()
            ping.unlink()
        try:
            return sorted(n for n in os.listdir(self.dir) if n.startswith(prefix))
        except FileNotFoundError:
            return []

    def wait_for(self, prefix: str, what: str) -> list[str]:
        """Wait until ``hosts`` files start with ``prefix``; raise _Incomplete if not."""
        deadline = time.monotonic() + self.timeout
        while True:
            names = self.names(prefix)
            if len(names) > self.hosts:
                raise _Incomplete(
                    f"{len(names)} participants in {self.dir}, but --hosts is {self.hosts}: "
                    "files left by an interrupted check? Remove the directory (or give "
                    "each check its own run id) and start again",
                    names,
                )
            if len(names) == self.hosts:
                return names
            if time.monotonic() >= deadline:
                raise _Incomplete(
                    f"only {len(names)} of {self.hosts} participants {what} within "
                    f"{self.timeout:g} s: start the check on all {self.hosts} hosts at "
                    "once (srun -N HOSTS ...), with the same DIR and --hosts",
                    names,
                )
            time.sleep(0.05)

    def read(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.dir / name).read_text(encoding="utf-8"))
        return result

    def remove_mine(self) -> None:
        for path in self.mine:
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # only when nobody else left anything


class _Incomplete(Exception):
    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names


def _take_turns(shared: Path, me: str, rounds: int, timeout: float) -> list[dict[str, Any]]:
    """Take the shared lock ``rounds`` times; return one record per hold.

    Under the lock: open the counter (as a writer opens the index), read
    ``seq holder``, write ``seq+1 me``, hold briefly, append a line to
    ``appends``, write ``seq+1 -``, close, unlock. Two holds that overlap
    read the same ``seq`` or see each other's mark.
    """
    rng = random.Random(me)
    holds = []
    lock_fd = os.open(shared / "lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        for _ in range(rounds):
            if not _lock(lock_fd, time.monotonic() + timeout):
                raise _Incomplete(
                    f"could not take the probe lock in {shared} within {timeout:g} s", []
                )
            mono0, wall0 = time.monotonic(), time.time()
            try:
                fd = os.open(shared / "counter", os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    seq, seen = _parse_counter(os.pread(fd, _COUNTER_SIZE, 0))
                    os.pwrite(fd, _counter_record(seq + 1, me), 0)
                    os.fsync(fd)
                    time.sleep(rng.uniform(0.0005, 0.002))
                    line = f"{me} {seq + 1}"
                    afd = os.open(shared / "appends", os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                  0o666)
                    try:
                        os.write(afd, f"{line} {zlib.crc32(line.encode()):08x}\n".encode())
                    finally:
                        os.close(afd)
                    os.pwrite(fd, _counter_record(seq + 1, "-"), 0)
                finally:
                    os.close(fd)
            finally:
                mono1, wall1 = time.monotonic(), time.time()
                _unlock(lock_fd)
            holds.append({"read": seq, "wrote": seq + 1, "seen": seen,
                          "wall": [wall0, wall1], "mono": [mono0, mono1]})
            time.sleep(rng.uniform(0, 0.002))  # let the others in
    finally:
        os.close(lock_fd)
    return holds


def _cross_host_check(
    shared: Path, hellos: list[dict[str, Any]], records: dict[str, list[dict[str, Any]]]
) -> Check:
    """Judge the holds of all participants (each participant computes the same)."""
    host_of = {h["id"]: h["host"] for h in hellos}
    hosts = sorted(set(host_of.values()))
    writers: dict[int, list[str]] = {}
    marks: list[tuple[str, str, int]] = []
    total = 0
    for pid, holds in records.items():
        for hold in holds:
            total += 1
            writers.setdefault(hold["wrote"], []).append(pid)
            if hold["seen"] not in ("-", pid):
                marks.append((pid, hold["seen"], hold["wrote"]))
    lost = {seq: ids for seq, ids in writers.items() if len(ids) > 1}
    overlaps = sum(len(ids) - 1 for ids in lost.values()) + len(marks)
    order = [writers[seq][0] for seq in sorted(writers)]
    handovers = sum(1 for a, b in itertools.pairwise(order) if a != b)
    try:
        appends = (shared / "appends").read_bytes()
    except FileNotFoundError:
        appends = b""
    append_problems = _shared_append_problems(appends, total)
    details: dict[str, Any] = {
        "participants": len(records),
        "hostnames": hosts,
        "holds": total,
        "overlaps": overlaps,
        "lost_updates": sum(len(ids) - 1 for ids in lost.values()),
        "marks_seen": len(marks),
        "handovers": handovers,
        "append_problems": append_problems,
    }
    who = f"{len(records)} participants on {len(hosts)} host{'s' if len(hosts) != 1 else ''}"
    if overlaps or append_problems:
        parts = []
        if overlaps:
            parts.append(f"{overlaps} of {total} holds overlapped another participant's")
        if append_problems:
            parts.append("shared appends damaged: " + "; ".join(append_problems))
        example = _overlap_example(records, host_of, lost, marks)
        if example:
            details["example"] = example
        return Check(
            "hosts", "unsafe",
            f"locks are not coherent across {who}: " + "; ".join(parts)
            + (f" (e.g. {example['text']})" if example else ""),
            details,
        )
    if handovers <= len(records) - 1:
        return Check(
            "hosts", "failed",
            f"inconclusive: the {who} took the lock one after another, never in turns "
            f"({handovers} handovers in {total} holds); run the check again",
            details,
        )
    if len(hosts) < 2:
        return Check(
            "hosts", "unknown",
            f"{total} holds by {who} never overlapped ({handovers} handovers), but all ran on "
            f"{hosts[0]}: start one participant per host to check across hosts",
            details,
        )
    return Check(
        "hosts", "ok",
        f"locks are coherent across {who} ({', '.join(hosts)}): {total} holds, "
        f"{handovers} handovers, none overlapped; shared appends landed whole",
        details,
    )


def _overlap_example(
    records: dict[str, list[dict[str, Any]]],
    host_of: dict[str, str],
    lost: dict[int, list[str]],
    marks: list[tuple[str, str, int]],
) -> dict[str, Any] | None:
    def hold(pid: str, wrote: int) -> dict[str, Any]:
        found = next(h for h in records[pid] if h["wrote"] == wrote)
        return {"participant": pid, "host": host_of.get(pid, "?"), "wall": found["wall"]}

    def stamp(h: dict[str, Any]) -> str:
        start, end = h["wall"]
        clock = time.strftime("%H:%M:%S", time.localtime(start)) + f"{start % 1:.3f}"[1:]
        return f"{h['host']} at {clock} for {(end - start) * 1e3:.1f} ms"

    if lost:
        seq, ids = min(lost.items())
        a, b = hold(ids[0], seq), hold(ids[1], seq)
        return {"kind": "lost update", "sequence": seq, "holds": [a, b],
                "text": f"two holds both counted to {seq}: {stamp(a)} and {stamp(b)}"
                        " (wall clocks as each host saw them)"}
    if marks:
        pid, other, seq = marks[0]
        a = hold(pid, seq)
        return {"kind": "marked holder", "sequence": seq, "holds": [a],
                "text": f"{a['host']} took the lock while {host_of.get(other, other)} "
                        f"was marked as holding it (hold {seq})"}
    return None


def _shared_append_problems(data: bytes, total: int) -> list[str]:
    problems = []
    nuls = data.count(b"\0")
    if nuls:
        problems.append(f"{nuls} NUL bytes")
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    else:
        problems.append("the file does not end with a whole line")
    good = 0
    for line in lines:
        body, _, crc = line.rpartition(b" ")
        try:
            ok = zlib.crc32(body) == int(crc, 16)
        except ValueError:
            ok = False
        good += ok
    if good != len(lines):
        problems.append(f"{len(lines) - good} torn lines")
    if good < total:
        problems.append(f"{total - good} of {total} appended lines lost")
    return problems


# ---------------------------------------------------------------- the verdict


def _local_verdict(
    mount: Mount | None, rule: MountRule | None, checks: list[Check]
) -> tuple[str, str]:
    """The verdict from the mount and the probes of this host, with its reason."""
    for outcome in ("unsafe", "failed"):
        bad = [c for c in checks if c.outcome == outcome]
        if bad:
            return outcome, bad[0].message
    fstype = "its filesystem" if mount is None else mount.fstype
    if rule is None:
        return "safe-single-host", (
            f"the live checks passed, but nothing tells whether {fstype} shares locks "
            "between hosts"
        )
    if rule.verdict == "safe":
        return "safe", f"{fstype}: {rule.reason}; the live checks passed"
    return "safe-single-host", f"{fstype}: {rule.reason}; the live checks passed"


def _mount_check(mount: Mount | None) -> tuple[Check, MountRule | None]:
    if mount is None:
        return Check("mount", "unknown", "the mount table could not be read"), None
    rule = classify(mount)
    details = {"mount": mount.to_dict(), "rule": None if rule is None else rule.filesystem}
    if rule is None:
        return Check(
            "mount", "unknown",
            f"{mount.describe()}: no rule for filesystem type {mount.fstype!r}",
            details,
        ), None
    outcome = {"safe": "ok", "safe-single-host": "ok"}.get(rule.verdict, rule.verdict)
    return Check("mount", outcome, f"{mount.describe()}: {rule.reason}", details), rule


def _remove_tree(path: Path) -> None:
    """Remove a probe directory, retrying while a network filesystem finishes closing."""
    for attempt in range(40):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if attempt == 39:
                logger.warning("could not remove the probe directory %s: %s", path, e)
                return
            time.sleep(0.05)


def _run_local(directory: Path, timeout: float, label: str) -> list[Check]:
    work = directory / f"{PROBE_PREFIX}-{label}"
    work.mkdir()
    probes = _Probes(work, timeout)
    try:
        return probes.run()
    except (_ChildError, RuntimeError) as e:
        return [Check("probes", "failed", f"a live check could not run: {e}")]
    finally:
        probes.close()
        _remove_tree(work)


def diagnose(
    directory: str | os.PathLike[str],
    hosts: int = 1,
    timeout: float = 60.0,
    *,
    run_id: str | None = None,
    rounds: int = 200,
) -> Report:
    """Check whether writers may share an index in ``directory``.

    Reads the mount of ``directory``, then probes it live with real processes
    on this host, in a private subdirectory that is removed afterwards (also
    on errors and Ctrl-C). With ``hosts`` > 1, call it at once on that many
    hosts (``srun -N4 index-writer doctor DIR --hosts 4``): the participants
    meet in ``DIR/.index-writer-doctor.RUN_ID``, each takes a shared lock
    ``rounds`` times and counts a shared sequence number under it, and every
    participant reports the same cross-host finding. The last one to finish
    removes that directory.

    How overlap is detected without synchronized clocks: while holding the
    lock, a participant reads ``seq`` from a shared counter file, writes
    ``seq+1`` with its id as holder, waits a moment, appends a line to a
    shared file and clears the holder mark. If the lock excludes, every hold
    writes a different ``seq`` and finds no mark of another participant. Two
    holds that write the same ``seq`` (a lost update) or a hold that finds
    another's mark prove that two participants held the lock at once. The
    wall-clock times recorded with each hold only illustrate an example.

    Parameters
    ----------
    directory : str or os.PathLike
        An existing directory where the index would live.
    hosts : int, optional
        How many participants take part (1: this host only).
    timeout : float, optional
        Seconds to wait for a lock, a probe process, or the other
        participants, before giving up with verdict ``failed``.
    run_id : str, optional
        Names the shared probe directory of a multi-host check; all
        participants must use the same. Default: ``$SLURM_JOB_ID.$SLURM_STEP_ID``
        when set, else ``shared``.
    rounds : int, optional
        Lock holds per participant in a multi-host check.

    Returns
    -------
    Report
        ``verdict`` is ``safe`` (writers on several hosts may share an index
        here), ``safe-single-host`` (writers on this host may), ``unsafe``
        (writers would silently lose or duplicate rows) or ``failed`` (locking
        fails here, or the check could not finish).

    Raises
    ------
    ValueError
        ``hosts`` or ``rounds`` below 1, ``timeout`` not positive, or a
        ``run_id`` that is not a plain name.

    Examples
    --------
    >>> import tempfile
    >>> report = diagnose(tempfile.mkdtemp())
    >>> report.verdict in ("safe", "safe-single-host")
    True
    >>> [c.name for c in report.checks]  # doctest: +NORMALIZE_WHITESPACE
    ['mount', 'locks-supported', 'lock-exclusion', 'lock-release-on-kill',
     'append', 'replace']
    """
    if isinstance(hosts, bool) or not isinstance(hosts, int) or hosts < 1:
        raise ValueError(f"hosts must be a whole number >= 1, not {hosts!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a whole number >= 1, not {rounds!r}")
    if not isinstance(timeout, (int, float)) or not timeout > 0 or timeout != timeout:
        raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
    if run_id is None:
        job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")
        run_id = f"{job}.{step}" if job and step else (job or "shared")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", run_id) or run_id in (".", ".."):
        raise ValueError(f"run_id must be a plain name (letters, digits, . _ -), not {run_id!r}")

    host = socket.gethostname()
    me = f"{_safe_name(host)}-{os.getpid()}-{secrets.token_hex(3)}"
    path = Path(os.fspath(directory))
    shown = os.fspath(directory)

    def failed(message: str, checks: list[Check] | None = None) -> Report:
        return Report(shown, "failed", f"{shown}: {message}", checks or [], None, host, hosts)

    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        return failed(f"{what}; give the directory where the index would live")
    if not os.access(path, os.W_OK | os.X_OK):
        return failed("no permission to create files here (the check needs to)")

    mount = find_mount(path)
    mount_check, rule = _mount_check(mount)
    try:
        checks = [mount_check, *_run_local(path, float(timeout), me)]
    except OSError as e:
        return failed(f"cannot run the live checks: {_describe(e)}", [mount_check])
    verdict, reason = _local_verdict(mount, rule, checks)
    report = Report(shown, verdict, "", checks, mount, host, hosts)
    if hosts > 1:
        _multi_host(report, path / f"{PROBE_PREFIX}.{run_id}", me, hosts, float(timeout),
                    rounds, reason)
    else:
        report.summary = _summary(shown, verdict, reason)
    return report


def _summary(shown: str, verdict: str, reason: str) -> str:
    if verdict == "safe":
        return f"{shown}: writers on several hosts can share an index here ({reason})"
    if verdict == "safe-single-host":
        return (
            f"{shown}: safe for writers on this host only ({reason}); to check writers "
            "on several hosts, run this on them at once with --hosts N"
        )
    if verdict == "unsafe":
        return f"{shown}: NOT safe to share an index here: {reason}"
    return f"{shown}: {reason}"


def _multi_host(
    report: Report, shared: Path, me: str, hosts: int, timeout: float, rounds: int,
    local_reason: str,
) -> None:
    rv = _Rendezvous(shared, me, hosts, timeout)
    shown = report.directory
    finished = False
    try:
        shared.mkdir(exist_ok=True)
        rv.write(f"hello.{me}.json", {
            "id": me, "host": report.host, "pid": os.getpid(), "verdict": report.verdict,
            "reason": local_reason,
            "mount": None if report.mount is None else report.mount.to_dict(),
        })
        names = rv.wait_for("hello.", "arrived")
        hellos = [rv.read(n) for n in names]
        holds = _take_turns(shared, me, rounds, timeout)
        rv.write(f"holds.{me}.json", {"id": me, "holds": holds})
        hold_names = rv.wait_for("holds.", "finished")
        records = {}
        for name in hold_names:
            data = rv.read(name)
            records[data["id"]] = data["holds"]
        cross = _cross_host_check(shared, hellos, records)
        finished = True
        (shared / f"done.{me}").touch()
        rv.mine.append(shared / f"done.{me}")
        if len(rv.names("done.")) >= hosts:
            _remove_tree(shared)  # the last one out
    except _Incomplete as e:
        cross = Check("hosts", "failed", str(e), {"seen": e.names})
        hellos = []
    except OSError as e:
        cross = Check("hosts", "failed", f"the multi-host check failed: {_describe(e)}")
        hellos = []
    except (ValueError, KeyError, TypeError) as e:  # a file we did not write
        cross = Check(
            "hosts", "failed",
            f"unexpected content in {shared} ({type(e).__name__}: {e}): files left by "
            "another program or an interrupted check? Remove the directory and start again",
        )
        hellos = []
    finally:
        if not finished:
            rv.remove_mine()
    report.checks.append(cross)
    report.participants = [
        {"id": h["id"], "host": h["host"], "verdict": h["verdict"], "reason": h["reason"],
         "mount": h["mount"]}
        for h in hellos
    ]
    # The worst local verdict of any participant, lifted to "safe" when the
    # cross-host check proved what the mount tables could not.
    verdict, reason = report.verdict, local_reason
    for h in hellos:
        if _SEVERITY[h["verdict"]] > _SEVERITY[verdict]:
            verdict, reason = h["verdict"], f"on {h['host']}: {h['reason']}"
    if cross.outcome in ("unsafe", "failed"):
        if _SEVERITY[cross.outcome] >= _SEVERITY[verdict]:
            verdict, reason = cross.outcome, cross.message
    elif cross.outcome == "ok" and verdict == "safe-single-host":
        verdict, reason = "safe", cross.message
    elif cross.outcome == "ok" and verdict == "safe":
        reason = cross.message
    report.verdict = verdict
    report.summary = _summary(shown, verdict, reason)

