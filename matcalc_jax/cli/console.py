"""What the command line shows while it works: progress on stderr, lines fitted to a width.

On a terminal, progress is one line redrawn in place (a bar, the step, the time so far); in a
log (stderr not a terminal: CI, a pipe, a file) it is one line per finished unit of work, so
that a log shows what was done and when, and a silent log means a stuck run.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, TextIO

#: Lines of tables and listings are fitted to this many columns unless asked for more.
WIDTH = 100


def clip(line: str, width: int | None = WIDTH) -> str:
    """``line`` cut to ``width`` columns, a cut marked with ``~``; ``None`` keeps it whole."""
    if width is None or len(line) <= width:
        return line
    return line[: width - 1] + "~"


def seconds(value: float) -> str:
    """A duration for people: ``0.4 s``, ``41 s``, ``3 min 12 s``."""
    if value < 10:
        return f"{value:.1f} s"
    if value < 120:
        return f"{value:.0f} s"
    return f"{int(value // 60)} min {int(value % 60)} s"


class Progress:
    """Progress on ``stream`` (stderr by default): a bar on a terminal, lines in a log."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.perf_counter()
        self._drawn = False

    def elapsed(self) -> float:
        """Seconds since the progress started."""
        return time.perf_counter() - self.started

    def bar(self, done: int, total: int, label: str) -> None:
        """Redraw the bar (terminal only): ``done`` of ``total`` units, now at ``label``."""
        if not self.tty:
            return
        width = 24
        filled = width * done // max(total, 1)
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label} "
            f"({seconds(self.elapsed())})"
        )
        print("\r" + clip(line, WIDTH - 1).ljust(WIDTH - 1), end="", file=self.stream, flush=True)
        self._drawn = True

    def line(self, text: str) -> None:
        """One line of progress in a log (on a terminal, the bar is redrawn instead)."""
        if self.tty:
            return
        print(f"{text} ({seconds(self.elapsed())})", file=self.stream, flush=True)

    def finish(self) -> None:
        """Clear the bar, so that what follows starts on a clean line."""
        if self._drawn:
            print("\r" + " " * (WIDTH - 1) + "\r", end="", file=self.stream, flush=True)
            self._drawn = False


class Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM during a long run, honoured even where Python loses them.

    Inside the ``with`` block either signal raises ``KeyboardInterrupt`` (so that what the
    run started is stopped on the way out) and is also remembered in ``signal`` (its
    number); ``check()``, called at each step of the run and at its end, raises it again.
    Python drops an exception raised inside a finalizer or a callback from C ("Exception
    ignored in"), and a run that lost its interrupt that way would go on to the end and
    report success. Outside the main thread (where no signal handler can be set) the block
    changes nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """True once a signal came."""
        return self.signal is not None

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for number in self.SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a signal came since the block began."""
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exception: object) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}
