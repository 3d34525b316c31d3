"""A FUSE passthrough filesystem for tests and benchmarks: locks that do or don't lock.

It mirrors a source directory at a mount point. Three lock modes:

``kernel``
    The filesystem implements no lock operation, so the kernel keeps POSIX
    locks itself, on this host: processes here exclude each other, as on a
    local disk, and locking never reaches the filesystem.
``posix``
    The filesystem keeps the locks: every lock request reaches it (and pays
    ``delay``, as on NFS), and it applies the lock to its own descriptor of
    the file as an open-file-description lock, so different opens exclude
    each other. Closing the file (or the death of its process) releases it.
``nolock``
    The filesystem's lock operation grants every request (and ``F_GETLK``
    always answers "unlocked"). This is what an NFS client mounted ``nolock``
    or ``local_lock=posix``, or a Lustre client mounted ``localflock``, does
    as seen from *another* host: every writer "gets" the lock at once.
``enolck``
    Every lock request fails with ``ENOLCK``, as on NFSv3 without a lock
    service.

``delay`` adds a pause to every filesystem operation that reaches the
filesystem (say 0.0002 s: an NFS round trip). Attribute and lookup caching is
off (``attr_timeout=0``, ``entry_timeout=0``), so every ``stat`` reaches it too.

Used as a module (``with mounted(source, mountpoint, locks="nolock"): ...``) the
filesystem runs in a child process, started with this file as a script::

    python tests/fusefs.py SOURCE MOUNTPOINT [--locks MODE] [--delay SECONDS]

Mounting needs Linux, ``/dev/fuse``, ``fusermount3`` (Debian: ``apt-get
install fuse3``) and ``mfusepy``; :func:`unavailable` says what is missing.
The benchmarks import this file by path: it is the one copy of the harness.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

LOCK_MODES = ("kernel", "posix", "nolock", "enolck")
MOUNT_TIMEOUT = 15.0
UNMOUNT_TIMEOUT = 10.0


class FuseUnavailable(RuntimeError):
    """FUSE cannot be mounted on this machine (the message says why)."""


def cannot_mount() -> str | None:
    """Why this machine cannot mount FUSE at all (no fix from the project), or None."""
    if not sys.platform.startswith("linux"):
        return f"FUSE mounts are only tested on Linux (this is {sys.platform})"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no FUSE in this kernel or container)"
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as e:
        return f"cannot open /dev/fuse: {e.strerror} (not root, and not in the fuse group?)"
    os.close(fd)
    return None


def missing_tools() -> str | None:
    """What must be installed before mounting (the project installs it), or None."""
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed: apt-get install -y fuse3"
    try:
        import mfusepy  # noqa: F401
    except ImportError as e:
        return f"mfusepy cannot be imported ({e}): pip install mfusepy, apt-get install -y fuse3"
    except OSError as e:  # libfuse not found
        return f"mfusepy cannot load libfuse ({e}): apt-get install -y fuse3"
    return None


def unavailable() -> str | None:
    """Why mounting is impossible here, or None when it should work."""
    return cannot_mount() or missing_tools()


# ------------------------------------------------------------ the filesystem


def _operations(source: str, locks: str, delay: float) -> Any:
    import mfusepy

    class Passthrough(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True
        # Operations on open files get their handle and no path, so a file
        # that was renamed over or unlinked while open keeps working (as on a
        # local disk) instead of failing with ESTALE.
        flag_nopath = True
        flag_nullpath_ok = True

        def __init__(self) -> None:
            self.root = os.path.realpath(source)

        def _wait(self) -> None:
            if delay > 0:
                time.sleep(delay)

        def _full(self, path: str) -> str:
            return os.path.join(self.root, path.lstrip("/"))

        # metadata
        def access(self, path: str, amode: int) -> int:
            self._wait()
            if not os.access(self._full(path), amode):
                raise mfusepy.FuseOSError(errno.EACCES)
            return 0

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            self._wait()
            st = os.fstat(fh) if fh is not None else os.lstat(self._full(path))
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino",
                    "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
            out = {k: getattr(st, k) for k in keys}
            for k in ("st_atime", "st_mtime", "st_ctime"):
                out[k] = out.pop(k + "_ns")
            return out

        def chmod(self, path: str, mode: int) -> int:
            self._wait()
            os.chmod(self._full(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            self._wait()
            os.chown(self._full(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            self._wait()
            if times is None:
                os.utime(self._full(path))
            else:
                os.utime(self._full(path), ns=times)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            self._wait()
            sv = os.statvfs(self._full(path))
            keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                    "f_files", "f_flag", "f_frsize", "f_namemax")
            return {k: getattr(sv, k) for k in keys}

        # directories
        def opendir(self, path: str) -> int:
            self._wait()
            return os.open(self._full(path), os.O_RDONLY | os.O_DIRECTORY)

        def readdir(self, path: str | None, fh: int) -> list[str]:
            self._wait()
            return [".", "..", *os.listdir(fh)]

        def releasedir(self, path: str | None, fh: int) -> int:
            os.close(fh)
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            self._wait()
            os.mkdir(self._full(path), mode)
            return 0

        def rmdir(self, path: str) -> int:
            self._wait()
            os.rmdir(self._full(path))
            return 0

        def unlink(self, path: str) -> int:
            self._wait()
            os.unlink(self._full(path))
            return 0

        def rename(self, old: str, new: str) -> int:
            self._wait()
            os.rename(self._full(old), self._full(new))
            return 0

        def link(self, target: str, source_: str) -> int:
            self._wait()
            os.link(self._full(source_), self._full(target))
            return 0

        def symlink(self, target: str, source_: str) -> int:
            self._wait()
            os.symlink(source_, self._full(target))
            return 0

        def readlink(self, path: str) -> str:
            self._wait()
            return os.readlink(self._full(path))

        # files
        def open(self, path: str, flags: int) -> int:
            self._wait()
            return os.open(self._full(path), flags)

        def create(self, path: str, mode: int, flags: int | None = None) -> int:
            # The caller's own flags: a file created O_RDWR must stay readable
            # through this handle, and without O_TRUNC in them a file that
            # another process created since the lookup must keep its bytes.
            self._wait()
            if flags is None:
                flags = os.O_WRONLY | os.O_TRUNC
            return os.open(self._full(path), flags | os.O_CREAT, mode)

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            self._wait()
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            self._wait()
            return os.pwrite(fh, data, offset)

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            self._wait()
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(self._full(path), length)
            return 0

        def flush(self, path: str, fh: int) -> int:
            self._wait()
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            self._wait()
            if datasync:
                os.fdatasync(fh)
            else:
                os.fsync(fh)
            return 0

        def release(self, path: str, fh: int) -> int:
            self._wait()
            os.close(fh)
            return 0

    if locks == "kernel":
        return Passthrough()

    class Locking(Passthrough):
        def lock(self, path: str, fh: int, cmd: int, lock: Any) -> int:
            self._wait()
            if locks == "posix":
                raise AssertionError("posix locks go through lock_owned()")
            if locks == "enolck":
                raise mfusepy.FuseOSError(errno.ENOLCK)
            if cmd == fcntl.F_GETLK:
                lock.contents.l_type = fcntl.F_UNLCK  # "nobody holds it"
            return 0  # every F_SETLK / F_SETLKW / unlock is granted

        owners: ClassVar[dict[tuple[int, int], int]] = {}  # (inode, owner) -> descriptor

        def _ofd_lock(self, fh: int, owner: int, cmd: int, fl: Any) -> int:
            # POSIX locks belong to a process (the kernel's lock owner), so
            # each owner gets a descriptor of its own for the file and the
            # lock is taken on it as an open-file-description lock: owners
            # exclude each other, an owner never blocks itself, and the
            # unlock the kernel sends when an owner closes the file releases
            # that owner's locks only.
            key = (os.fstat(fh).st_ino, owner)
            fd = self.owners.get(key)
            if fd is None:
                fd = self.owners[key] = os.open(f"/proc/self/fd/{fh}", os.O_RDWR)
            # struct flock on Linux: short type, short whence, off_t start,
            # off_t len, pid_t pid (0 for open-file-description locks).
            fmt = "hh4xqqi4x"
            arg = struct.pack(fmt, fl.l_type, fl.l_whence, fl.l_start, fl.l_len, 0)
            if cmd == fcntl.F_GETLK:
                l_type, _, start, length, _pid = struct.unpack(
                    fmt, fcntl.fcntl(fd, fcntl.F_OFD_GETLK, arg)
                )
                fl.l_type, fl.l_start, fl.l_len = l_type, start, length
                return 0
            op = fcntl.F_OFD_SETLKW if cmd == fcntl.F_SETLKW else fcntl.F_OFD_SETLK
            fcntl.fcntl(fd, op, arg)  # EAGAIN when busy goes back to the caller
            return 0

    return Locking()


def serve(source: str, mountpoint: str, locks: str = "kernel", delay: float = 0.0) -> None:
    """Mount and serve in the foreground until unmounted (runs in its own process)."""
    import mfusepy

    if locks not in LOCK_MODES:
        raise ValueError(f"locks must be one of {LOCK_MODES}, not {locks!r}")
    class Fuse(mfusepy.FUSE):  # type: ignore[misc]
        def lock(self, path: bytes | None, fip: Any, cmd: int, lock: Any) -> int:
            # The lock owner is only in the raw file info: pass it on.
            ops = self.operations
            if locks != "posix":
                return super().lock(path, fip, cmd, lock)  # type: ignore[no-any-return]
            ops._wait()
            result: int = ops._ofd_lock(fip.contents.fh, fip.contents.lock_owner, cmd,
                                        lock.contents)
            return result

    Fuse(
        _operations(source, locks, delay),
        mountpoint,
        foreground=True,
        fsname=f"iwtest-{locks}",
        subtype="iwtest",
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
        hard_remove=True,
        # Reads go to the file the passthrough opened, however long: with the
        # page cache, a read racing a rename could be cut at the size of the
        # file the name stood for a moment earlier.
        direct_io=True,
    )


# ------------------------------------------------------------ mount helpers


def is_mounted(mountpoint: str | os.PathLike[str]) -> bool:
    """Whether ``mountpoint`` is a FUSE mount point now (from /proc/self/mountinfo)."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == target:
                sep = fields.index("-")
                if fields[sep + 1].startswith("fuse"):
                    return True
    return False


def _unescape(field: str) -> str:
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def unmount(mountpoint: str | os.PathLike[str]) -> bool:
    """Unmount, lazily if busy; return whether it had to be lazy. Never raises."""
    for args in (["-u"], ["-u", "-z"]):
        if not is_mounted(mountpoint):
            return args != ["-u"]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["fusermount3", *args, str(mountpoint)],
                capture_output=True,
                timeout=UNMOUNT_TIMEOUT,
                check=False,
            )
    return True


@contextlib.contextmanager
def mounted(
    source: str | os.PathLike[str],
    mountpoint: str | os.PathLike[str],
    locks: str = "kernel",
    delay: float = 0.0,
) -> Iterator[Path]:
    """Mount the passthrough of ``source`` at ``mountpoint``; always unmount after.

    Raises :class:`FuseUnavailable` when FUSE cannot be mounted here, and
    RuntimeError when the filesystem process fails to mount.
    """
    reason = unavailable()
    if reason:
        raise FuseUnavailable(reason)
    if locks not in LOCK_MODES:
        raise ValueError(f"locks must be one of {LOCK_MODES}, not {locks!r}")
    Path(mountpoint).mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), str(source), str(mountpoint),
           "--locks", locks, "--delay", repr(delay)]
    log = Path(mountpoint).parent / f".{Path(mountpoint).name}.fuse.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(mountpoint):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the FUSE filesystem exited with status {proc.returncode} before "
                    f"mounting {mountpoint}: {log.read_text(errors='replace')[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mountpoint} not mounted after {MOUNT_TIMEOUT} s")
            time.sleep(0.02)
        yield Path(mountpoint)
    finally:
        # After a lazy unmount the filesystem serves the files still open
        # until they close: give them a moment, then stop it.
        lazy = unmount(mountpoint)
        try:
            proc.wait(timeout=2 if lazy else UNMOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            log.unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source")
    ap.add_argument("mountpoint")
    ap.add_argument("--locks", choices=LOCK_MODES, default="kernel")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds per operation")
    args = ap.parse_args(argv)
    serve(args.source, args.mountpoint, args.locks, args.delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
