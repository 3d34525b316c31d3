"""``doctor``: the mount table, the live probes and the multi-host lock check.

The live tests run on real filesystems: the local disk of the tests, tmpfs,
and the FUSE passthrough of ``tests/fusefs.py`` in its three lock modes
(``kernel``: locks kept by this host's kernel; ``nolock``: every lock request
granted, as on an NFS client mounted ``nolock`` seen from another host;
``enolck``: locking fails). Multi-host checks run as concurrent invocations in
separate process trees, each in its own UTS namespace with its own hostname
where ``unshare`` allows it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fusefs
from _cli_run import console_script, run
from _system import require_fuse
from index_writer._check import check_index
from index_writer._doctor import (
    MOUNT_RULES,
    PROBE_PREFIX,
    VERDICTS,
    Check,
    Mount,
    Report,
    classify,
    diagnose,
    find_mount,
    verdict_table_markdown,
)
from index_writer._doctor.mounts import _covering, _parse_mount_output, _parse_mountinfo
from index_writer._doctor.overlap import cross_host_check as _cross_host_check
from index_writer._doctor.records import append_problems as _append_problems
from index_writer._doctor.records import append_record as _append_record
from index_writer._doctor.records import check_version as _check_version
from index_writer._doctor.records import replace_version as _replace_version

# ------------------------------------------------------------------ fixtures


@pytest.fixture
def fuse(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount FUSE passthroughs: ``fuse(locks="nolock", delay=0.0) -> mount point``."""
    require_fuse()
    numbers = itertools.count()
    with contextlib.ExitStack() as stack:

        def mount(locks: str = "kernel", delay: float = 0.0) -> Path:
            k = next(numbers)
            source = tmp_path / f"source{k}"
            source.mkdir()
            return stack.enter_context(
                fusefs.mounted(source, tmp_path / f"mount{k}", locks=locks, delay=delay)
            )

        yield mount


def leftovers(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(PROBE_PREFIX))


def by_name(report: Report) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


@functools.cache
def uts_namespaces() -> str | None:
    """None if ``unshare --uts`` can give a process tree its own hostname, else why not."""
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    r = subprocess.run(["unshare", "--uts", "hostname", "iw-probe"], capture_output=True,
                       text=True, check=False)
    return None if r.returncode == 0 else f"unshare --uts failed: {r.stderr.strip()}"


DIAGNOSE = (
    "import sys\n"
    "from index_writer._doctor import diagnose\n"
    "r = diagnose(sys.argv[1], hosts=int(sys.argv[2]), timeout=float(sys.argv[3]))\n"
    "print(r.to_json())\n"
)


def participant(directory: Path, hosts: int, timeout: float,
                hostname: str | None) -> subprocess.Popen[str]:
    """Start ``index-writer doctor DIR --hosts N --json`` in a process tree of its own."""
    cmd = [*console_script(), "doctor", str(directory), "--hosts", str(hosts),
           "--timeout", str(timeout), "--json"]
    if hostname is not None:
        cmd = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def run_participants(directory: Path, n: int, hosts: int, timeout: float = 30,
                     own_hostnames: bool = True) -> list[dict[str, Any]]:
    if own_hostnames:
        reason = uts_namespaces()
        if reason:
            pytest.skip(f"cannot give each participant its own hostname: {reason}")
    procs = [participant(directory, hosts, timeout, f"node{k}" if own_hostnames else None)
             for k in range(n)]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=timeout * 3 + 60)
        assert "Traceback" not in err, err
        report = json.loads(out)
        assert p.returncode == report["exit_status"] == (
            0 if report["verdict"] in ("safe", "safe-single-host") else 1
        )
        reports.append(report)
    return reports


def hosts_check(report: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["name"] == "hosts")


# ---------------------------------------------------------- the mount table

MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
40 27 0:44 / /shared rw,relatime - nfs srv:/export rw,vers=3,rsize=1048576,nolock,proto=tcp
41 40 0:45 / /shared/scratch rw,noatime - nfs4 srv:/scratch rw,vers=4.2,local_lock=none
42 27 0:46 / /mnt/my\040data rw - fuse.sshfs me@host:/data rw,user_id=0
43 27 0:47 / /lus rw - lustre 10.0.0.1@tcp:/fs rw,flock,lazystatfs
44 27 0:48 / /bucket rw - fuse s3fs rw,user_id=0
45 27 0:49 / /shared rw - tmpfs tmpfs rw
"""


def test_mountinfo_is_parsed_with_super_options_and_escapes() -> None:
    mounts = _parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in mounts][:5] == [
        "/proc", "/", "/shared", "/shared/scratch", "/mnt/my data"
    ]
    nfs = mounts[2]
    assert (nfs.fstype, nfs.source) == ("nfs", "srv:/export")
    assert nfs.option("vers") == "3" and nfs.option("nolock") == "" and nfs.option("x") is None
    assert nfs.options.count("rw") == 1  # mount and super options merged, once each


def test_the_longest_mount_point_wins_and_later_mounts_hide_earlier() -> None:
    mounts = _parse_mountinfo(MOUNTINFO)
    assert _covering(mounts, "/shared/scratch/a/b").fstype == "nfs4"
    assert _covering(mounts, "/shared/x").fstype == "tmpfs"  # mounted over the NFS one
    assert _covering(mounts, "/sharedfoo").fstype == "ext4"  # a prefix, not a parent
    assert _covering(mounts, "/mnt/my data/x").fstype == "fuse.sshfs"


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"),
               min_size=1, max_size=20))
def test_escaped_mount_points_round_trip(name: str) -> None:
    point = "/m/" + name
    escaped = "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in point)
    line = f"1 1 0:1 / {escaped} rw - ext4 /dev/x rw\n"
    (mount,) = _parse_mountinfo(line)
    assert mount.mount_point == point


def test_mount_command_output_of_linux_and_macos() -> None:
    mounts = _parse_mount_output(
        "/dev/disk3s1s1 on / (apfs, sealed, local, read-only, journaled)\n"
        "srv:/export on /Volumes/x (nfs, nodev, nosuid, mounted by me)\n"
        "srv:/export on /data type nfs4 (rw,relatime,vers=4.1)\n"
    )
    assert [(m.mount_point, m.fstype) for m in mounts] == [
        ("/", "apfs"), ("/Volumes/x", "nfs"), ("/data", "nfs4")
    ]
    assert mounts[0].has_option("local") and mounts[2].option("vers") == "4.1"


@pytest.mark.parametrize(
    ("fstype", "source", "options", "verdict", "filesystem"),
    [
        ("nfs4", "s:/x", "rw,vers=4.2,local_lock=none", "safe", "NFSv4"),
        ("nfs", "s:/x", "rw,vers=4.1", "safe", "NFSv4"),
        ("nfs", "s:/x", "rw,vers=3", "safe", "NFSv2/v3"),
        ("nfs", "s:/x", "rw,vers=3,nolock", "unsafe", "NFSv2/v3"),
        ("nfs", "s:/x", "rw,vers=3,local_lock=all", "unsafe", "NFS (any version)"),
        ("nfs4", "s:/x", "rw,local_lock=posix", "unsafe", "NFS (any version)"),
        ("nfs4", "s:/x", "rw,local_lock=flock", "safe", "NFSv4"),  # fcntl locks stay remote
        ("lustre", "m@tcp:/fs", "rw,flock", "safe", "Lustre"),
        ("lustre", "m@tcp:/fs", "rw,localflock", "unsafe", "Lustre"),
        ("lustre", "m@tcp:/fs", "rw,noflock", "failed", "Lustre"),
        ("lustre", "m@tcp:/fs", "rw", "unknown", "Lustre"),
        ("gpfs", "fs1", "rw", "safe", "IBM Storage Scale (GPFS)"),
        ("cifs", "//s/x", "rw", "unsafe", "SMB / CIFS"),
        ("fuse.sshfs", "me@h:/x", "rw", "unsafe", "sshfs"),
        ("fuse", "s3fs", "rw", "unsafe", "Object-store mounts (s3fs, gcsfuse, goofys, "
         "blobfuse, rclone, ...)"),
        ("fuse.gcsfuse", "bucket", "rw", "unsafe", "Object-store mounts (s3fs, gcsfuse, "
         "goofys, blobfuse, rclone, ...)"),
        ("ext4", "/dev/sda1", "rw", "safe-single-host",
         "Local disks (ext4, XFS, btrfs, ZFS, APFS, ...)"),
        ("tmpfs", "tmpfs", "rw", "safe-single-host", "Memory (tmpfs, ramfs)"),
    ],
)
def test_the_verdict_table(fstype: str, source: str, options: str, verdict: str,
                           filesystem: str) -> None:
    rule = classify(Mount("/m", fstype, source, tuple(options.split(","))))
    assert rule is not None
    assert (rule.verdict, rule.filesystem) == (verdict, filesystem)


def test_unknown_filesystems_have_no_rule() -> None:
    assert classify(Mount("/m", "fuse.iwtest", "x", ("rw",))) is None
    assert classify(Mount("/m", "9p", "x", ())) is None


def test_every_rule_is_reachable_and_uses_known_verdicts() -> None:
    for rule in MOUNT_RULES:
        assert rule.verdict in (*VERDICTS, "unknown")
        mount = Mount("/m", rule.fstypes[0], "src", rule.options[:1])
        assert classify(mount) == rule, f"{rule} is hidden by an earlier rule"


def test_the_docs_show_the_verdict_table_of_the_code() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "clusters.md").read_text()
    start, end = "<!-- doctor-table:start -->\n", "<!-- doctor-table:end -->"
    shown = page[page.index(start) + len(start):page.index(end)]
    assert shown == verdict_table_markdown(), (
        "docs/clusters.md shows another verdict table than MOUNT_RULES; paste the output of "
        "python -c 'from index_writer._doctor import verdict_table_markdown as t; print(t())'"
    )


def test_find_mount_of_a_real_directory(tmp_path: Path) -> None:
    mount = find_mount(tmp_path)
    assert mount is not None
    assert str(tmp_path.resolve()).startswith(mount.mount_point.rstrip("/"))


# ----------------------------------------------------------- the judges


def test_append_problems_are_found() -> None:
    expected = {(w, i) for w in range(2) for i in range(3)}
    good = b"".join(_append_record(w, i) for i in range(3) for w in range(2))
    assert _append_problems(good, expected) == []
    torn = good[:30] + good[60:]
    assert any("torn" in p for p in _append_problems(torn, expected))
    assert any("NUL" in p for p in _append_problems(good + b"\0\0", expected))
    assert any("lost" in p for p in _append_problems(good.split(b"\n", 1)[1], expected))
    twice = good + _append_record(0, 0)
    assert any("twice" in p for p in _append_problems(twice, expected))
    assert any("order" in p for p in _append_problems(
        _append_record(0, 1) + _append_record(0, 0), {(0, 0), (0, 1)}))


def test_replace_versions_check_themselves() -> None:
    data = _replace_version(7)
    assert _check_version(data) is None
    assert _check_version(data[:-1]) is not None
    assert _check_version(b"") is not None
    assert _check_version(data[:10] + b"x" + data[11:]) is not None


def _holds(pid: str, seqs: list[int], seen: str = "-") -> list[dict[str, Any]]:
    return [{"read": s - 1, "wrote": s, "seen": seen, "wall": [0.0, 0.001],
             "mono": [0.0, 0.001]} for s in seqs]


def _appends(tmp_path: Path, records: dict[str, list[dict[str, Any]]]) -> Path:
    import zlib

    lines = []
    for pid, holds in records.items():
        for h in holds:
            line = f"{pid} {h['wrote']}"
            lines.append(f"{line} {zlib.crc32(line.encode()):08x}\n")
    (tmp_path / "appends").write_text("".join(lines))
    return tmp_path


def test_cross_host_judge(tmp_path: Path) -> None:
    hellos = [{"id": "a", "host": "n1"}, {"id": "b", "host": "n2"}]
    turns = {"a": _holds("a", [1, 3, 5]), "b": _holds("b", [2, 4, 6])}
    ok = _cross_host_check(_appends(tmp_path, turns), hellos, turns)
    assert ok.outcome == "ok" and ok.details["handovers"] == 5

    lost = {"a": _holds("a", [1, 2, 3]), "b": _holds("b", [2, 4])}
    bad = _cross_host_check(_appends(tmp_path, lost), hellos, lost)
    assert bad.outcome == "unsafe" and bad.details["lost_updates"] == 1
    assert bad.details["example"]["sequence"] == 2
    assert "n1" in bad.message and "n2" in bad.message

    marked = {"a": _holds("a", [1, 3]), "b": _holds("b", [2, 4], seen="a")}
    assert _cross_host_check(_appends(tmp_path, marked), hellos, marked).outcome == "unsafe"

    serial = {"a": _holds("a", [1, 2, 3]), "b": _holds("b", [4, 5, 6])}
    assert _cross_host_check(_appends(tmp_path, serial), hellos, serial).outcome == "failed"

    one_host = [{"id": "a", "host": "n1"}, {"id": "b", "host": "n1"}]
    assert _cross_host_check(_appends(tmp_path, turns), one_host, turns).outcome == "unknown"

    (tmp_path / "appends").write_bytes(b"a 1 0000\0\0")
    damaged = _cross_host_check(tmp_path, hellos, turns)
    assert damaged.outcome == "unsafe" and damaged.details["append_problems"]


def test_report_json_and_exit_status() -> None:
    report = Report("/d", "safe-single-host", "fine", [Check("mount", "ok", "ext4")],
                    Mount("/", "ext4", "/dev/x", ("rw",)), "h", 1)
    data = json.loads(report.to_json())
    assert data["verdict"] == "safe-single-host" and data["exit_status"] == 0
    assert data["mount"]["fstype"] == "ext4" and data["checks"][0]["outcome"] == "ok"
    assert report.render().splitlines() == ["safe-single-host: fine", "  ok: ext4"]
    assert Report("/d", "failed", "x").exit_status == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"hosts": 0}, {"hosts": 1.5}, {"hosts": True}, {"timeout": 0}, {"timeout": float("nan")},
     {"rounds": 0}, {"run_id": "../x"}, {"run_id": ""}],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        diagnose(tmp_path, **kwargs)
    assert leftovers(tmp_path) == []


def test_a_missing_directory_or_a_file_fails(tmp_path: Path) -> None:
    missing = diagnose(tmp_path / "nope")
    assert missing.verdict == "failed" and "does not exist" in missing.summary
    (tmp_path / "f").write_text("x")
    assert "not a directory" in diagnose(tmp_path / "f").summary


# ------------------------------------------------------------- live checks


def assert_all_ok(report: Report, names: tuple[str, ...] = (
        "locks-supported", "lock-exclusion", "lock-release-on-kill", "append", "replace")) -> None:
    checks = by_name(report)
    for name in names:
        assert checks[name].outcome == "ok", report.render()


def test_local_disk_is_safe_for_one_host(tmp_path: Path) -> None:
    report = diagnose(tmp_path, timeout=30)
    assert report.verdict == "safe-single-host", report.render()
    assert_all_ok(report)
    assert report.render().startswith(f"safe-single-host: {tmp_path}: safe for writers on this")
    assert leftovers(tmp_path) == []


def test_tmpfs_is_safe_for_one_host() -> None:
    shm = Path("/dev/shm")
    mount = find_mount(shm) if shm.is_dir() else None
    if mount is None or mount.fstype != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    report = diagnose(shm, timeout=30)
    assert report.verdict == "safe-single-host", report.render()
    assert by_name(report)["mount"].details["rule"] == "Memory (tmpfs, ramfs)"
    assert_all_ok(report)
    assert leftovers(shm) == []


def test_fuse_with_kernel_locks_passes_every_probe(fuse: Callable[..., Path]) -> None:
    mnt = fuse("kernel")
    report = diagnose(mnt, timeout=30)
    # An unknown FUSE filesystem: fine on this host, nothing known about others.
    assert report.verdict == "safe-single-host", report.render()
    assert by_name(report)["mount"].outcome == "unknown"
    assert_all_ok(report)
    assert leftovers(mnt) == []


def test_fuse_that_keeps_locks_itself_passes_every_probe(fuse: Callable[..., Path]) -> None:
    mnt = fuse("posix")
    report = diagnose(mnt, timeout=30)
    assert report.verdict == "safe-single-host", report.render()
    assert_all_ok(report)
    assert leftovers(mnt) == []


def test_fuse_whose_locks_do_not_lock_is_unsafe(fuse: Callable[..., Path]) -> None:
    mnt = fuse("nolock")
    report = diagnose(mnt, timeout=30)
    assert report.verdict == "unsafe", report.render()
    exclusion = by_name(report)["lock-exclusion"]
    assert exclusion.outcome == "unsafe"
    assert len(exclusion.details["failures"]) == 2  # both ways
    assert report.render().splitlines()[0].startswith(f"unsafe: {mnt}: NOT safe")
    assert report.exit_status == 1
    assert leftovers(mnt) == []


def test_fuse_without_locks_fails_clearly(fuse: Callable[..., Path]) -> None:
    mnt = fuse("enolck")
    report = diagnose(mnt, timeout=30)
    assert report.verdict == "failed", report.render()
    check = by_name(report)["locks-supported"]
    assert check.outcome == "failed" and check.details["errno"] == "ENOLCK"
    assert "locks not supported here" in report.summary
    assert leftovers(mnt) == []


def test_ctrl_c_removes_the_probe_directory(fuse: Callable[..., Path]) -> None:
    # 2 ms per filesystem operation makes the probes take seconds, so the
    # interrupt lands while they run (the exit status proves it did).
    # Ctrl-C raises KeyboardInterrupt as in a terminal, even where this test
    # runs with SIGINT ignored (a background job of a non-interactive shell:
    # its children inherit the ignored signal and Python keeps it so).
    mnt = fuse("kernel", delay=0.002)
    terminal = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", terminal + DIAGNOSE, str(mnt), "1", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while not leftovers(mnt):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, (out, err)
    assert leftovers(mnt) == []


# ------------------------------------------------------------- multi-host


def test_two_hosts_on_local_disk_are_safe(tmp_path: Path) -> None:
    reports = run_participants(tmp_path, 2, 2)
    assert [r["verdict"] for r in reports] == ["safe", "safe"], reports[0]["summary"]
    check = hosts_check(reports[0])
    assert check["outcome"] == "ok"
    assert check["details"]["hostnames"] == ["node0", "node1"]
    assert check["details"]["overlaps"] == 0
    assert check["details"]["holds"] == 400
    assert sorted(p["host"] for p in reports[0]["participants"]) == ["node0", "node1"]
    assert leftovers(tmp_path) == []


def test_two_participants_on_one_host_prove_nothing_about_hosts(tmp_path: Path) -> None:
    reports = run_participants(tmp_path, 2, 2, own_hostnames=False)
    assert [r["verdict"] for r in reports] == ["safe-single-host"] * 2
    check = hosts_check(reports[0])
    assert check["outcome"] == "unknown" and "start one participant per host" in check["message"]
    assert leftovers(tmp_path) == []


def test_two_hosts_whose_locks_do_not_lock_are_unsafe(fuse: Callable[..., Path]) -> None:
    mnt = fuse("nolock")
    reports = run_participants(mnt, 2, 2)
    for report in reports:
        assert report["verdict"] == "unsafe"
        check = hosts_check(report)
        assert check["outcome"] == "unsafe", check
        assert check["details"]["overlaps"] > 0
        assert check["details"]["example"]["holds"][0]["host"] in ("node0", "node1")
        assert "overlapped" in check["message"]
    assert leftovers(mnt) == []


def test_two_hosts_on_fuse_with_kernel_locks_are_safe(fuse: Callable[..., Path]) -> None:
    mnt = fuse("kernel")
    reports = run_participants(mnt, 2, 2)
    assert [r["verdict"] for r in reports] == ["safe", "safe"], reports[0]["summary"]
    assert leftovers(mnt) == []


def test_fewer_participants_than_hosts_time_out(tmp_path: Path) -> None:
    started = time.monotonic()
    (report,) = run_participants(tmp_path, 1, 2, timeout=2, own_hostnames=False)
    took = time.monotonic() - started
    assert report["verdict"] == "failed"
    check = hosts_check(report)
    assert check["message"].startswith("only 1 of 2 participants arrived within 2 s")
    assert took < 30
    assert leftovers(tmp_path) == []


def test_files_of_an_interrupted_check_are_reported(tmp_path: Path) -> None:
    shared = tmp_path / f"{PROBE_PREFIX}.shared"
    shared.mkdir()
    for stale in ("hello.a.json", "hello.b.json"):
        (shared / stale).write_text("{}")
    report = diagnose(tmp_path, hosts=2, timeout=5)
    assert report.verdict == "failed"
    assert "files left by an interrupted check" in by_name(report)["hosts"].message
    assert sorted(os.listdir(shared)) == ["hello.a.json", "hello.b.json"]  # not ours: kept


# --------------------------------------------------------------------- CLI


def test_cli_prints_the_verdict_first(tmp_path: Path) -> None:
    r = run("doctor", tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"safe-single-host: {tmp_path}: ")
    assert all(line.startswith("  ") for line in lines[1:]) and len(lines) == 7
    assert r.stderr == ""


def test_cli_json_and_exit_status_of_unsafe(fuse: Callable[..., Path]) -> None:
    mnt = fuse("nolock")
    r = run("doctor", mnt, "--json")
    assert r.returncode == 1
    data = json.loads(r.stdout)
    assert data["verdict"] == "unsafe" and data["exit_status"] == 1
    assert {c["name"]: c["outcome"] for c in data["checks"]}["lock-exclusion"] == "unsafe"


def test_cli_exit_status_of_failed(tmp_path: Path) -> None:
    r = run("doctor", tmp_path / "missing")
    assert r.returncode == 1
    assert r.stdout.startswith(f"failed: {tmp_path / 'missing'}: does not exist")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hosts", "0"], "--hosts: must be at least 1"),
        (["--timeout", "0"], "--timeout must be more than 0"),
        (["--timeout", "soon"], "--timeout: not a number"),
        (["--run-id", "a/b"], "--run-id must be a plain name"),
        ([], "the following arguments are required: DIR"),
    ],
)
def test_cli_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    r = run("doctor", *([tmp_path] if args else []), *args)
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.startswith("usage: index-writer doctor")
    assert leftovers(tmp_path) == []


def test_cli_sigterm_removes_the_probe_directory(fuse: Callable[..., Path]) -> None:
    mnt = fuse("kernel", delay=0.002)  # slow enough to be interrupted mid-way
    proc = subprocess.Popen([*console_script(), "doctor", str(mnt)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not leftovers(mnt):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert err.strip() == "index-writer: error: interrupted"
    assert leftovers(mnt) == []


# ---------------------------------------------- what doctor exists to reveal

WRITER = r"""
import os, sys
from index_writer import IndexWriter
index, tag, go = sys.argv[1:4]
writer = IndexWriter(index)
print("ready", flush=True)
while not os.path.exists(go):  # all writers start their first write together
    pass
for i in range(300):
    writer.write_entry(f"out/{tag}/{i}.nii.gz", {"writer": tag, "i": i})
"""


def write_concurrently(directory: Path, go: Path) -> tuple[list[int], list[list[str]]]:
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(directory / "index.csv"), str(k),
                          str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in range(4)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    go.touch()
    statuses = [p.wait(timeout=120) for p in procs]
    with open(directory / "index.csv", newline="", encoding="utf-8") as f:
        import csv

        rows = list(csv.reader(f))
    return statuses, rows[1:]  # a blank line comes back as [], and counts as a row here


def test_locks_that_do_not_lock_corrupt_an_index(fuse: Callable[..., Path],
                                                 tmp_path: Path) -> None:
    expected = sorted(f"out/{k}/{i}.nii.gz" for k in range(4) for i in range(300))
    # The control: the same workload where locks work keeps every entry once.
    good = fuse("kernel")
    statuses, rows = write_concurrently(good, tmp_path / "go-kernel")
    assert statuses == [0, 0, 0, 0]
    assert sorted(r[0] for r in rows if r) == expected and all(rows)
    assert check_index(good / "index.csv").clean
    # Locks that do not lock, with an NFS-like 0.2 ms per operation: four
    # writers "hold" the lock at once. On one machine appends stay whole, so
    # the damage comes from writers racing to create the index (the header
    # written twice and more) and is a race: about 9 runs in 10 show it here.
    # Up to five fresh runs, so the test fails only if the hazard is gone.
    bad = fuse("nolock", delay=0.0002)
    seen = []
    for attempt in range(5):
        directory = bad / f"run{attempt}"
        directory.mkdir()
        statuses, rows = write_concurrently(directory, tmp_path / f"go-nolock-{attempt}")
        paths = sorted(r[0] if r else "" for r in rows)
        report = check_index(directory / "index.csv")
        seen.append(f"{len(rows)} rows, exit statuses {statuses}")
        if paths != expected or not report.clean:
            break
    else:
        pytest.fail(f"no damage in 5 runs without working locks: {seen}")


# --------------------------------------------------------------- the harness


def test_harness_lock_modes(fuse: Callable[..., Path]) -> None:
    import errno
    import fcntl

    def second_process_gets(path: Path) -> bool:
        code = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
                "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('got')\n"
                "except OSError:\n    print('busy')\n")
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                             text=True, check=True).stdout.strip()
        return out == "got"

    results = {}
    for mode in ("kernel", "posix", "nolock"):
        path = fuse(mode) / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            results[mode] = second_process_gets(path)
        finally:
            os.close(fd)
    assert results == {"kernel": False, "posix": False, "nolock": True}

    fd = os.open(fuse("enolck") / "lock", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="No locks available") as info:
            fcntl.lockf(fd, fcntl.LOCK_EX)
        assert info.value.errno == errno.ENOLCK
    finally:
        os.close(fd)


def test_harness_unmounts_after_a_failure(tmp_path: Path) -> None:
    require_fuse()
    (tmp_path / "src").mkdir()
    mnt = tmp_path / "mnt"
    opened: list[int] = []

    def fail_while_mounted() -> None:
        with fusefs.mounted(tmp_path / "src", mnt) as m:
            (m / "f").write_text("passed through")
            opened.append(os.open(m / "f", os.O_RDONLY))  # open: unmount must still work
            assert fusefs.is_mounted(mnt)
            raise KeyError("a failing test")

    with pytest.raises(KeyError, match="a failing test"):
        fail_while_mounted()
    with contextlib.suppress(OSError):  # the filesystem is gone: ENOTCONN
        os.close(opened[0])
    assert not fusefs.is_mounted(mnt)
    assert (tmp_path / "src" / "f").read_text() == "passed through"


# ------------------------------------------ what writers say on such filesystems


def test_a_filesystem_without_locks_gives_one_clear_error(fuse: Callable[..., Path]) -> None:
    """ENOLCK from locking: the error names the filesystem and points at doctor."""
    from index_writer import IndexReadError, IndexWriteError, IndexWriter

    mnt = fuse("enolck")
    index = mnt / "index.csv"
    with pytest.raises(IndexWriteError) as info:
        IndexWriter(index).write_entry("a.nii", {"k": "v"})
    message = str(info.value)
    assert "file locks are not supported here (fuse" in message, message
    assert f"index-writer doctor {mnt}" in message, message
    assert info.value.original_exception.errno == errno.ENOLCK  # type: ignore[attr-defined]
    index.write_text("path,k\na.nii,v\n")
    (mnt / "index.csv.lock").write_text("")
    with pytest.raises(IndexReadError, match="file locks are not supported here"):
        IndexWriter(index).read_rows()
    r = subprocess.run(
        [sys.executable, "-m", "index_writer", "add", str(index), "b.nii", "k=w"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "index-writer doctor" in lines[0], r.stderr
