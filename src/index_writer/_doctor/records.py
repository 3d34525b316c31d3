"""What the probes write, and how to tell when it came back damaged.

Every record carries its own CRC-32, so a reader can tell a whole record from
a torn, interleaved or zero-filled one without knowing what else was written:

- the append probe's lines (:func:`append_record`, judged by
  :func:`append_problems`): ``writer:i:padding:crc``, of varying lengths;
- the replace probe's versions (:func:`replace_version`, judged by
  :func:`check_version`): a header line with the length and CRC of a payload
  of 4 to 32 KiB;
- the lines appended under the shared lock of a multi-host check
  (:func:`shared_append_line`, judged by :func:`shared_append_problems`).

Examples
--------
>>> append_problems(append_record(0, 0) + append_record(0, 1), {(0, 0), (0, 1)})
[]
>>> check_version(replace_version(3)) is None
True
"""

from __future__ import annotations

import zlib

__all__ = [
    "append_problems",
    "append_record",
    "check_version",
    "replace_version",
    "shared_append_line",
    "shared_append_problems",
]


def append_record(writer: int, i: int) -> bytes:
    """Line ``i`` of append-probe writer ``writer``."""
    pad = "abcdefghij"[(writer + i) % 10] * ((i * 37 + writer * 11) % 300 + 1)
    body = f"{writer}:{i}:{pad}"
    return f"{body}:{zlib.crc32(body.encode()):08x}\n".encode()


def append_problems(data: bytes, expected: set[tuple[int, int]]) -> list[str]:
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


def replace_version(v: int) -> bytes:
    """Version ``v`` of the replaced file: a header line, then its payload."""
    payload = bytes([v % 251]) * (4096 + (v * 997) % 28672)
    return f"v{v} {len(payload)} {zlib.crc32(payload):08x}\n".encode() + payload


def check_version(data: bytes) -> str | None:
    """None if ``data`` is a whole version written by the replace probe."""
    head, nl, payload = data.partition(b"\n")
    try:
        _v, size, crc = head.decode().split(" ")
        if nl and len(payload) == int(size) and zlib.crc32(payload) == int(crc, 16):
            return None
    except (ValueError, UnicodeDecodeError):
        pass
    return f"{len(data)} bytes starting {data[:24]!r}"


def shared_append_line(holder: str, seq: int) -> bytes:
    """The line ``holder`` appends during the hold that counted to ``seq``."""
    line = f"{holder} {seq}"
    return f"{line} {zlib.crc32(line.encode()):08x}\n".encode()


def shared_append_problems(data: bytes, total: int) -> list[str]:
    """What is wrong with the shared appends of ``total`` holds: NUL bytes, torn or lost lines."""
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
