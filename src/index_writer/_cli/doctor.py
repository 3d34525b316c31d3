"""``index-writer doctor``: is it safe to share an index in a directory?"""

from __future__ import annotations

import argparse
import contextlib
import signal
from typing import Any

from .arguments import positive_int, seconds
from .common import UsageError, say, stdout


def register(subparsers: Any) -> None:
    """Add the ``doctor`` subcommand to ``subparsers``."""
    doctor = subparsers.add_parser(
        "doctor",
        help="is it safe to share an index in a directory?",
        description=(
            "Check whether writers may share an index in DIR: read how DIR is "
            "mounted, then probe it live with processes on this host (POSIX "
            "locks exclude and are released when their holder is killed, "
            "O_APPEND appends land whole, os.replace is atomic), in a private "
            "subdirectory that is removed afterwards. With --hosts N, start the "
            "same command at once on N hosts (srun -N N index-writer doctor DIR "
            "--hosts N): they also check that their locks exclude each other. "
            "The first line is the verdict: safe, safe-single-host, unsafe or "
            "failed. Exit status 0 for safe and safe-single-host, 1 otherwise."
        ),
    )
    doctor.add_argument("directory", metavar="DIR", help="where the index would live")
    doctor.add_argument(
        "--hosts",
        type=positive_int,
        default=1,
        metavar="N",
        help="how many hosts run the check together (1)",
    )
    doctor.add_argument(
        "--timeout",
        type=seconds,
        default=60.0,
        metavar="S",
        help="give up after S seconds waiting for a lock, a probe or the other hosts (60)",
    )
    doctor.add_argument(
        "--run-id",
        metavar="ID",
        help="name of the shared probe directory of a multi-host check (default: "
        "$SLURM_JOB_ID.$SLURM_STEP_ID, else 'shared'); the same on every host",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(run=run, parser=doctor)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # clean up the probe directory, as for Ctrl-C


def run(args: argparse.Namespace) -> int:
    """Check the directory and print the report; exit status 0 when safe to share."""
    from .._doctor import diagnose  # loaded on use: other commands start faster without it

    if args.timeout <= 0:
        raise UsageError("--timeout must be more than 0 seconds")
    restore = None
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        restore = signal.signal(signal.SIGTERM, _terminate)
    try:
        report = diagnose(
            args.directory, hosts=args.hosts, timeout=args.timeout, run_id=args.run_id
        )
    except ValueError as e:
        raise UsageError(str(e).replace("run_id must", "--run-id must")) from None
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
    out = stdout()
    say(report.to_json() if args.json else report.render(), out)
    out.flush()
    return report.exit_status
