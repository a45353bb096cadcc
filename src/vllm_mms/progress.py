"""Progress for slow steps (standard library only: the bootstrap uses it before any venv)."""

from __future__ import annotations

import sys
import threading
import time


class Spinner:
    """A progress line for slow steps: elapsed seconds, redrawn in place on a terminal."""

    def __init__(self, label: str) -> None:
        self.label, self._stop = label, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def _run(self) -> None:
        tty = sys.stderr.isatty()
        last_print = -10.0
        while not self._stop.wait(0.5):
            elapsed = time.monotonic() - self._start
            if tty:
                sys.stderr.write(f"\r{self.label} ... {elapsed:4.0f}s")
                sys.stderr.flush()
            elif elapsed - last_print >= 10:  # logs (CI): one line every 10 s
                print(f"{self.label} ... {elapsed:.0f}s", file=sys.stderr, flush=True)
                last_print = elapsed

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
