"""Real operating-system set-ups for tests: mounts, forked children, other users.

Nothing here is mocked: a tmpfs is really mounted, a read-only bind mount
really refuses writes, and an "unprivileged user" is a forked child that
called ``setuid``. Set-ups that need root are skipped (with the reason)
where the test runs without it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

FORK = multiprocessing.get_context("fork")

#: The unprivileged user and group the tests switch to (``nobody``/``nogroup``).
NOBODY = 65534


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot run {argv[0]}: {e}")


def mount_tmpfs(target: Path, size: str = "4m") -> None:
    """Mount a fresh tmpfs of ``size`` on ``target`` (skip the test if not allowed)."""
    r = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(target))
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")


@contextmanager
def ramfs(target: Path) -> Iterator[Path]:
    """A ramfs mounted on ``target`` for the block (its file times tick coarsely).

    Unlike tmpfs on Linux 6.13 and later, ramfs stamps every change with the
    clock tick's time, as every Linux filesystem did before: two changes
    within one tick (1 to 10 ms) leave the same modification time.
    """
    target.mkdir(parents=True, exist_ok=True)
    r = _run("mount", "-t", "ramfs", "ramfs", str(target))
    if r.returncode != 0:
        pytest.skip(f"cannot mount a ramfs here (needs root): {r.stderr.strip()}")
    try:
        yield target
    finally:
        if umount(target).returncode != 0:
            _run("umount", "-l", str(target))


def umount(target: Path) -> subprocess.CompletedProcess[str]:
    """``umount TARGET`` (not lazy: it fails while anything holds the filesystem)."""
    return _run("umount", str(target))


def is_mount_point(target: Path) -> bool:
    return os.path.ismount(target)


@contextmanager
def tmpfs(target: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs mounted on ``target`` for the block; unmounted (lazily if busy) after."""
    target.mkdir(parents=True, exist_ok=True)
    mount_tmpfs(target, size)
    try:
        yield target
    finally:
        while is_mount_point(target):
            if _run("umount", "-l", str(target)).returncode != 0:
                break


@contextmanager
def read_only_view(source: Path, view: Path) -> Iterator[Path]:
    """``source`` bind-mounted read-only on ``view`` for the block."""
    view.mkdir(parents=True, exist_ok=True)
    r = _run("mount", "--bind", str(source), str(view))
    if r.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root): {r.stderr.strip()}")
    try:
        r = _run("mount", "-o", "remount,ro,bind", str(view))
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
        yield view
    finally:
        _run("umount", "-l", str(view))


@contextmanager
def shared_directory() -> Iterator[Path]:
    """A directory under /tmp an unprivileged child can reach (pytest's are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="index-writer-edges-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (to switch to another user, mount, chown)")


def become(uid: int = NOBODY, gid: int = NOBODY, groups: tuple[int, ...] = ()) -> None:
    """Switch this (forked) process to ``uid``/``gid`` for good."""
    os.setgroups(list(groups))
    os.setgid(gid)
    os.setuid(uid)


def _child_main(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], uid: int | None) -> None:
    try:
        if uid is not None:
            become(uid, uid)
        conn.send(("ok", fn(*args)))
    except BaseException as e:
        try:
            conn.send(("err", e))
        except Exception:  # an exception that does not pickle
            conn.send(("err", RuntimeError(repr(e))))


def in_child(fn: Callable[..., Any], *args: Any, uid: int | None = None, wait: float = 120) -> Any:
    """Run ``fn(*args)`` in a forked child (as ``uid`` if given); its result or exception."""
    parent, kid = FORK.Pipe()
    p = FORK.Process(target=_child_main, args=(kid, fn, args, uid))
    p.start()
    try:
        assert parent.poll(wait), f"the child running {fn.__name__} did not answer in {wait} s"
        status, value = parent.recv()
    finally:
        p.join(30)
        if p.is_alive():  # pragma: no cover - a hung child
            p.kill()
            p.join()
    assert p.exitcode == 0, p.exitcode
    if status == "err":
        raise value
    return value


def open_descriptors() -> list[str]:
    """What this process's descriptors point to (``/proc/self/fd``)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
    return out


def listing(directory: Path) -> list[str]:
    """Every file and directory under ``directory`` (relative, sorted)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def require_fuse() -> None:
    """Skip where FUSE cannot be mounted; fail where only the project's tools are missing.

    ``.ci/run`` installs what the FUSE tests need, so a missing tool is a
    broken set-up, not a reason to skip.
    """
    import fusefs

    reason = fusefs.cannot_mount()
    if reason:
        pytest.skip(f"FUSE cannot be mounted here: {reason}")
    missing = fusefs.missing_tools()
    if missing:
        pytest.fail(f"the FUSE tests need tools the project installs: {missing}")
