"""Judging a multi-host check: did holds of the shared lock ever overlap?

Every participant of a multi-host check (see :mod:`.multihost`) records each
of its holds of the shared lock: the sequence number it read and wrote under
the lock, and whose "holding" mark it found. Without comparing clocks:

- two holds that wrote the same sequence number (a *lost update*), or
- a hold that found another participant's mark

prove that two participants held the lock at once. :func:`cross_host_check`
also checks the lines appended under the lock, and whether the participants
really took turns (a check where each took all its holds in one go proves
nothing). Every participant reads the same records and so reaches the same
finding.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .records import shared_append_problems
from .report import Check

__all__ = ["cross_host_check"]

Holds = dict[str, list[dict[str, Any]]]
"""Each participant's holds, by participant id (the ``holds.ID.json`` files)."""


@dataclass
class _Tally:
    """What the holds of all participants show."""

    total: int
    #: Sequence numbers written by more than one hold, with the participants.
    lost: dict[int, list[str]]
    #: (participant, the holder whose mark it found, the sequence number it wrote).
    marks: list[tuple[str, str, int]]
    #: How often the lock passed from one participant to another.
    handovers: int

    @property
    def overlaps(self) -> int:
        return sum(len(ids) - 1 for ids in self.lost.values()) + len(self.marks)


def _tally(records: Holds) -> _Tally:
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
    order = [writers[seq][0] for seq in sorted(writers)]
    handovers = sum(1 for a, b in itertools.pairwise(order) if a != b)
    return _Tally(total, lost, marks, handovers)


def cross_host_check(shared: Path, hellos: list[dict[str, Any]], records: Holds) -> Check:
    """Judge the holds of all participants (each participant computes the same).

    Parameters
    ----------
    shared : Path
        The shared probe directory (its ``appends`` file is checked too).
    hellos : list[dict]
        Each participant's ``hello`` record: its ``id`` and ``host``.
    records : dict
        Each participant's holds, by id.

    Returns
    -------
    Check
        The ``hosts`` finding: ``unsafe`` (holds overlapped, or appends were
        damaged), ``failed`` (the participants never took turns), ``unknown``
        (all on one host) or ``ok``.
    """
    host_of = {h["id"]: h["host"] for h in hellos}
    hosts = sorted(set(host_of.values()))
    tally = _tally(records)
    try:
        appends = (shared / "appends").read_bytes()
    except FileNotFoundError:
        appends = b""
    append_problems = shared_append_problems(appends, tally.total)
    total, handovers = tally.total, tally.handovers
    details: dict[str, Any] = {
        "participants": len(records),
        "hostnames": hosts,
        "holds": total,
        "overlaps": tally.overlaps,
        "lost_updates": sum(len(ids) - 1 for ids in tally.lost.values()),
        "marks_seen": len(tally.marks),
        "handovers": handovers,
        "append_problems": append_problems,
    }
    who = f"{len(records)} participants on {len(hosts)} host{'s' if len(hosts) != 1 else ''}"
    if tally.overlaps or append_problems:
        return _incoherent(who, tally, append_problems, records, host_of, details)
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


def _incoherent(
    who: str,
    tally: _Tally,
    append_problems: list[str],
    records: Holds,
    host_of: dict[str, str],
    details: dict[str, Any],
) -> Check:
    """The ``unsafe`` finding: what overlapped or was damaged, with an example."""
    parts = []
    if tally.overlaps:
        parts.append(f"{tally.overlaps} of {tally.total} holds overlapped another participant's")
    if append_problems:
        parts.append("shared appends damaged: " + "; ".join(append_problems))
    example = _overlap_example(records, host_of, tally.lost, tally.marks)
    if example:
        details["example"] = example
    return Check(
        "hosts", "unsafe",
        f"locks are not coherent across {who}: " + "; ".join(parts)
        + (f" (e.g. {example['text']})" if example else ""),
        details,
    )


def _overlap_example(
    records: Holds,
    host_of: dict[str, str],
    lost: dict[int, list[str]],
    marks: list[tuple[str, str, int]],
) -> dict[str, Any] | None:
    """One overlap told in a line, with the holds involved; None if there is none."""

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
