"""A clock for the waits (vllm_mms.progress.Clock) on which sleeping takes no time."""

from __future__ import annotations

from typing import Callable, Optional


class FakeClock:
    def __init__(self, on_sleep: Optional[Callable[[float], None]] = None) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._on_sleep = on_sleep

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self._on_sleep is not None:
            self._on_sleep(self.now)
