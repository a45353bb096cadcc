"""Progress for slow steps (standard library only: the bootstrap uses it before any venv)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Protocol, Union

LOG_EVERY_S = 10.0  # not on a terminal (CI, container logs): one line this often


class Clock(Protocol):
    """Time as the waits see it; tests pass one that sleeps instantly."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)


SYSTEM_CLOCK: Clock = SystemClock()


class ProgressLine:
    """A line saying what is slow and for how long: redrawn in place on a terminal, one
    line every LOG_EVERY_S seconds in logs."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last_print = -LOG_EVERY_S
        self._drawn = False

    def draw(self, text: str, elapsed: float) -> None:
        if self.tty:
            sys.stderr.write(f"\r\033[K{text} ... {elapsed:4.0f}s")
            sys.stderr.flush()
            self._drawn = True
        elif elapsed - self._last_print >= LOG_EVERY_S:
            print(f"{text} ... {elapsed:.0f}s", file=sys.stderr, flush=True)
            self._last_print = elapsed

    def clear(self) -> None:
        """Wipe the line on a terminal, so what is printed next starts on a clean line."""
        if self._drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._drawn = False


class Spinner:
    """A progress line for slow steps: elapsed seconds, redrawn in place on a terminal."""

    def __init__(self, label: str) -> None:
        self.label, self._stop = label, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def _run(self) -> None:
        line = ProgressLine()
        while not self._stop.wait(0.5):
            line.draw(self.label, time.monotonic() - self._start)

    def __enter__(self) -> "Spinner":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        elapsed = time.monotonic() - self._start
        status = "done" if exc[0] is None else "failed"
        end = "\r" if sys.stderr.isatty() else ""
        print(f"{end}{self.label} ... {status} in {elapsed:.0f}s", file=sys.stderr, flush=True)


def wait_until(check: Callable[[], object], deadline_s: float,
               label: Union[str, Callable[[], str]], *, every: float = 1.0,
               clock: Clock = SYSTEM_CLOCK) -> bool:
    """Call `check` every `every` seconds until it returns something true (→ True) or
    `deadline_s` seconds have passed (→ False), showing `label` and the time waited while it
    is not. The caller says what a timeout means; `check` raises to stop early (a process
    that died). `label` may be a function, for a line that says how far the wait has got."""
    start = clock.monotonic()
    line = ProgressLine()
    try:
        while True:
            if check():
                return True
            elapsed = clock.monotonic() - start
            if elapsed > deadline_s:
                return False
            line.draw(label() if callable(label) else label, elapsed)
            clock.sleep(every)
    finally:
        line.clear()
