"""A watchdog for long runs: a step that makes no progress for a set time is reported.

A compiled program that never returns (a deadlock inside a runtime, a device that stopped
answering) cannot be interrupted from Python: the thread that waits on it is stuck in C++.
The watchdog is a daemon thread that wakes up every second; each step of the run calls
``Watchdog.beat`` with a label before it starts, and when no beat comes for
``timeout_s`` seconds the watchdog calls ``on_hang(label, seconds)`` once. The command line
prints the label and ends the process (``os._exit``), so a run fails instead of hanging.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType


class Watchdog:
    """Calls ``on_hang(label, seconds)`` when ``beat`` is not called for ``timeout_s``.

    Use it as a context manager around the run::

        with Watchdog(300, on_hang=report_and_exit) as watchdog:
            for step in steps:
                watchdog.beat(step.label)
                step.run()
    """

    def __init__(
        self,
        timeout_s: float,
        on_hang: Callable[[str, float], None],
        *,
        poll_s: float = 1.0,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"Watchdog: timeout_s={timeout_s!r}; expected a positive number")
        self.timeout_s = float(timeout_s)
        self.on_hang = on_hang
        self.poll_s = min(float(poll_s), self.timeout_s / 4)
        self.label = "starting"
        self.fired = False
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name="matcalc-jax-watchdog", daemon=True
        )

    def beat(self, label: str) -> None:
        """Record progress: the step called ``label`` starts now."""
        with self._lock:
            self.label = label
            self._last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                label, waited = self.label, time.monotonic() - self._last
            if waited >= self.timeout_s:
                self.fired = True
                self.on_hang(label, waited)
                return

    def __enter__(self) -> Watchdog:
        self.beat("starting")
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
