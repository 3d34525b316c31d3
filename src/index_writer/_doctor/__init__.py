"""Is it safe to share an index in a directory? (``index-writer doctor``)

Writers exclude each other with POSIX byte-range locks (``fcntl``/``lockf``,
the lock fasteners takes) on a lock file next to the index, append rows with
``O_APPEND`` and replace the index with ``os.replace``. :func:`diagnose` checks
all of that in a directory, two ways:

1. **The mount.** The filesystem type and mount options of the directory are
   looked up (``/proc/self/mountinfo`` on Linux, the ``mount`` command
   elsewhere) and judged by :data:`MOUNT_RULES`, one table that the
   documentation shows as it is (:mod:`.mounts`).
2. **Live probes**, with real processes on this host, in a private
   subdirectory that is always removed afterwards: a second process cannot
   take a lock the first holds; locks are released when their holder is
   killed; appends from several processes land whole; a reader never sees a
   missing or partial file while another process replaces it. Locking that
   fails outright (``ENOLCK``, ``ENOSYS``, ``EOPNOTSUPP``) is reported as such
   (:mod:`.probes`, with the probe processes in :mod:`.children` and what
   they write in :mod:`.records`).

With ``hosts=N`` the same call, started at once on N hosts (``srun -N4
index-writer doctor DIR --hosts 4``), also checks that locks exclude each
other *across* hosts: the participants meet in a shared probe directory, take
one lock in turns, and count a shared sequence number under it. A lost update
of that number proves that two holds overlapped, without comparing clocks
(:mod:`.multihost`, judged by :mod:`.overlap`).

The findings and the verdict they add up to are in :mod:`.report`.

Examples
--------
>>> rule = classify(Mount("/scratch", "nfs", "srv:/export", ("rw", "vers=3", "nolock")))
>>> rule.verdict, rule.filesystem
('unsafe', 'NFSv2/v3')
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from . import multihost
from .mounts import MOUNT_RULES, Mount, MountRule, classify, find_mount, verdict_table_markdown
from .probes import PROBE_PREFIX, run_local
from .report import VERDICTS, Check, Report, describe, local_verdict, mount_check, summary

__all__ = [
    "MOUNT_RULES",
    "PROBE_PREFIX",
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
    run_id = _check_arguments(hosts, timeout, rounds, run_id)
    host = socket.gethostname()
    me = multihost.participant_id(host)
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
    found, rule = mount_check(mount)
    try:
        checks = [found, *run_local(path, float(timeout), me)]
    except OSError as e:
        return failed(f"cannot run the live checks: {describe(e)}", [found])
    verdict, reason = local_verdict(mount, rule, checks)
    report = Report(shown, verdict, "", checks, mount, host, hosts)
    if hosts > 1:
        multihost.run(report, path / f"{PROBE_PREFIX}.{run_id}", me, hosts, float(timeout),
                      rounds, reason)
    else:
        report.summary = summary(shown, verdict, reason)
    return report


def _check_arguments(hosts: int, timeout: float, rounds: int, run_id: str | None) -> str:
    """Refuse bad arguments of :func:`diagnose` (ValueError); return the run id to use."""
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
    return run_id

