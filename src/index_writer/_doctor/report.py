"""What :func:`~index_writer._doctor.diagnose` found, and the verdict it comes to.

The findings are :class:`Check` objects, gathered in a :class:`Report` that
renders itself for people (the verdict line first, then the evidence) or as
JSON. The verdict of a report is the worst of its findings, ranked by
:data:`SEVERITY`; the mount's verdict only decides whether passing live
checks mean ``safe`` (across hosts) or ``safe-single-host``.

Examples
--------
>>> checks = [Check("mount", "ok", "tmpfs"), Check("append", "unsafe", "torn lines")]
>>> local_verdict(None, None, checks)
('unsafe', 'torn lines')
"""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass, field
from typing import Any

from .mounts import Mount, MountRule, classify

__all__ = [
    "SEVERITY",
    "VERDICTS",
    "Check",
    "Report",
    "combine_verdicts",
    "describe",
    "local_verdict",
    "mount_check",
    "summary",
]

#: The verdicts of :func:`~index_writer._doctor.diagnose`, best first.
VERDICTS = ("safe", "safe-single-host", "unsafe", "failed")

#: Which verdict wins when several findings disagree (higher wins): a filesystem
#: that silently loses rows is worse news than one where the check could not
#: finish or where locking fails loudly.
SEVERITY = {"safe": 0, "safe-single-host": 1, "failed": 2, "unsafe": 3}


@dataclass
class Check:
    """One finding of :func:`~index_writer._doctor.diagnose`.

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
    """What :func:`~index_writer._doctor.diagnose` found.

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


def describe(e: BaseException) -> str:
    """An error as the report words it: ``ENOLCK: No locks available (path)``.

    Examples
    --------
    >>> import errno, os
    >>> describe(OSError(errno.ENOLCK, os.strerror(errno.ENOLCK), "/d/lock"))
    'ENOLCK: No locks available (/d/lock)'
    >>> describe(RuntimeError("gone"))
    'RuntimeError: gone'
    """
    if isinstance(e, OSError) and e.strerror:
        name = errno.errorcode.get(e.errno or 0, str(e.errno))
        where = f" ({e.filename})" if e.filename else ""
        return f"{name}: {e.strerror}{where}"
    return f"{type(e).__name__}: {e}"


def mount_check(mount: Mount | None) -> tuple[Check, MountRule | None]:
    """The finding about the mount, and the rule of the verdict table that judged it."""
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


def local_verdict(
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


def summary(shown: str, verdict: str, reason: str) -> str:
    """The verdict of the directory ``shown`` explained in one line."""
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


def combine_verdicts(
    report: Report, local_reason: str, participants: list[dict[str, Any]], cross: Check
) -> None:
    """Settle the verdict of a multi-host check in ``report``.

    The worst local verdict of any participant, lifted to ``safe`` when the
    cross-host finding ``cross`` proved what the mount tables could not;
    an ``unsafe`` or ``failed`` cross-host finding wins over a milder verdict.
    ``local_reason`` explains this host's own verdict; ``participants`` are
    the records each participant wrote on arrival (``host``, ``verdict``,
    ``reason``).
    """
    verdict, reason = report.verdict, local_reason
    for h in participants:
        if SEVERITY[h["verdict"]] > SEVERITY[verdict]:
            verdict, reason = h["verdict"], f"on {h['host']}: {h['reason']}"
    if cross.outcome in ("unsafe", "failed"):
        if SEVERITY[cross.outcome] >= SEVERITY[verdict]:
            verdict, reason = cross.outcome, cross.message
    elif cross.outcome == "ok" and verdict == "safe-single-host":
        verdict, reason = "safe", cross.message
    elif cross.outcome == "ok" and verdict == "safe":
        reason = cross.message
    report.verdict = verdict
    report.summary = summary(report.directory, verdict, reason)
