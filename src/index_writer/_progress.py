"""Progress of a long run, written to a terminal, a log file or nowhere."""

from __future__ import annotations

import contextlib
import importlib
import time
from typing import Any, TextIO

__all__ = ["Progress"]


class Progress:
    """Progress of a run, written to a text stream (normally stderr).

    On a terminal it uses ``tqdm`` when that is installed, else one line
    rewritten in place at most ten times a second. Elsewhere (a log file, a
    pipe, a batch job) it writes a plain line at most every ``interval``
    seconds and one at the end. Write errors (a closed stream) switch it off
    silently: progress must never break a run.

    Parameters
    ----------
    total : int
        Number of steps expected.
    label : str
        Text in front of the count.
    stream : TextIO or None
        Where to write; ``None`` disables output.
    interval : float, optional
        Seconds between plain lines when ``stream`` is not a terminal.
    use_tqdm : bool, optional
        Allow ``tqdm`` on a terminal.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> with Progress(3, "demo", out) as progress:
    ...     for _ in range(3):
    ...         progress.update()
    >>> print(out.getvalue(), end="")
    demo: 3/3 (100%) in 0.0 s
    """

    def __init__(
        self,
        total: int,
        label: str,
        stream: TextIO | None,
        *,
        interval: float = 5.0,
        use_tqdm: bool = True,
    ) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self._stream = stream
        self._interval = interval
        self._start = time.perf_counter()
        self._last = self._start
        self._tty = False
        self._bar: Any = None
        if stream is not None:
            try:
                self._tty = stream.isatty()
            except (AttributeError, ValueError, OSError):
                self._tty = False
        if self._tty and use_tqdm:
            self._bar = self._make_tqdm()

    def _make_tqdm(self) -> Any:
        try:
            tqdm = importlib.import_module("tqdm").tqdm
            return tqdm(total=self.total, desc=self.label, unit="entry", file=self._stream)
        except Exception:  # not installed, or broken: fall back to plain lines
            return None

    def _write(self, text: str) -> None:
        if self._stream is None:
            return
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            self._stream = None

    def _line(self) -> str:
        pct = 100 * self.done // self.total if self.total else 100
        elapsed = time.perf_counter() - self._start
        return f"{self.label}: {self.done}/{self.total} ({pct}%) in {elapsed:.1f} s"

    def update(self, n: int = 1) -> None:
        """Record ``n`` more finished steps."""
        self.done += n
        if self._stream is None:
            return
        if self._bar is not None:
            try:
                self._bar.update(n)
            except Exception:
                self._bar = None
            return
        now = time.perf_counter()
        if self._tty:
            if now - self._last >= 0.1:  # close() draws the final state
                self._last = now
                self._write("\r" + self._line())
        elif now - self._last >= self._interval and self.done < self.total:
            self._last = now
            self._write(self._line() + "\n")

    def close(self) -> None:
        """Finish the display: close the bar or write the final line."""
        if self._bar is not None:
            with contextlib.suppress(Exception):
                self._bar.close()
            self._bar = None
            return
        if self._tty:
            self._write("\r" + self._line() + "\n")
        else:
            self._write(self._line() + "\n")
        self._stream = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
