"""Usage rows, written in batches from a bounded in-memory queue, off the request path.

When the database is down, requests are still served and rows wait in the queue until it is
back. When the queue is full, new rows are dropped, counted, and the count is logged: a loss
is never silent. Retention runs in the same background task, once a day.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import Any, Callable, Optional

from .. import environment
from .store import Store

try:  # inside the proxy, log where LiteLLM logs
    from litellm._logging import verbose_proxy_logger as log
except ImportError:  # pragma: no cover - the CLI without LiteLLM
    log = logging.getLogger("vllm_mms.proxy.usage_queue")


class UsageQueue:
    def __init__(self, store_factory: Callable[[], Store], max_rows: int = 10_000,
                 batch_size: int = 500, interval: float = 1.0,
                 retention_days: Optional[float] = 90.0) -> None:
        self.store_factory = store_factory
        self.max_rows, self.batch_size, self.interval = max_rows, batch_size, interval
        self.retention_days = retention_days
        self.rows: collections.deque[dict[str, Any]] = collections.deque()
        self.dropped = 0
        self.written = 0
        self.in_flight = 0  # rows taken for a write that has not finished: still held
        self.failing_since: Optional[float] = None
        self._task: Optional[asyncio.Task] = None
        self._store: Optional[Store] = None
        self._last_retention = 0.0
        self._migrated = False

    @classmethod
    def from_environment(cls, store_factory: Callable[[], Store]) -> "UsageQueue":
        return cls(store_factory,
                   max_rows=environment.get("MMS_USAGE_QUEUE_ROWS"),
                   interval=environment.get("MMS_USAGE_FLUSH_SECONDS"),
                   retention_days=float(os.environ.get("USAGE_RETENTION_DAYS", "90")))

    def add(self, row: dict[str, Any]) -> None:
        if len(self.rows) + self.in_flight >= self.max_rows:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.error("usage queue full (%d rows waiting for the database): %d usage rows "
                          "lost so far", len(self.rows), self.dropped)
            return
        self.rows.append(row)
        self._ensure_task()

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            try:
                self._task = asyncio.get_running_loop().create_task(self._run())
            except RuntimeError:
                pass  # no loop (a unit test adding rows synchronously): flush() is called by hand

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()
            await self._retention()

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = self.store_factory()
        return self._store

    async def flush(self) -> int:
        """Write everything queued, a batch at a time; on failure keep the rows, in order."""
        total = 0
        while self.rows:
            batch = [self.rows.popleft() for _ in range(min(self.batch_size, len(self.rows)))]
            self.in_flight = len(batch)
            try:
                if not self._migrated:  # the schema exists before the first write
                    await self.store.migrate()
                    self._migrated = True
                await self.store.insert_usage(batch)
            except Exception as exc:  # noqa: BLE001 - any driver error means "try later"
                self.rows.extendleft(reversed(batch))
                if self.failing_since is None:
                    self.failing_since = time.time()
                    log.warning("usage database unavailable (%s): %d rows wait in the queue",
                                type(exc).__name__, len(self.rows))
                return total
            finally:
                self.in_flight = 0
            total += len(batch)
            self.written += len(batch)
        if self.failing_since is not None:
            log.warning("usage database back after %.0fs; queued rows written; %d usage rows "
                        "lost in total because the queue was full", time.time() - self.failing_since,
                        self.dropped)
            self.failing_since = None
        return total

    async def _retention(self) -> None:
        if not self.retention_days or time.time() - self._last_retention < 86400:
            return
        try:
            await self.store.delete_usage_before(time.time() - self.retention_days * 86400)
            self._last_retention = time.time()
        except Exception:  # noqa: BLE001 - retried on the next round
            pass


def row_from_logging(kwargs: dict[str, Any], response: Any, start: Any, end: Any,
                     status: int, error_class: Optional[str] = None) -> dict[str, Any]:
    """One usage row from what LiteLLM hands its loggers."""
    slo = kwargs.get("standard_logging_object") or {}
    metadata = slo.get("metadata") or {}
    start_s = _seconds(start)
    end_s = _seconds(end)
    first = _seconds(kwargs.get("completion_start_time"))
    streaming = bool(kwargs.get("stream") or slo.get("stream"))
    return {
        "ts": end_s or time.time(),
        "key_name": metadata.get("user_api_key_alias") or None,
        "model": slo.get("model_group") or kwargs.get("model"),
        "route": metadata.get("user_api_key_request_route") or slo.get("call_type"),
        "status": status,
        "prompt_tokens": int(slo.get("prompt_tokens") or 0),
        "completion_tokens": int(slo.get("completion_tokens") or 0),
        "latency_ms": (end_s - start_s) * 1000 if start_s and end_s else None,
        "ttft_ms": (first - start_s) * 1000 if streaming and first and start_s else None,
        "error_class": error_class,
    }


def _seconds(value: Any) -> Optional[float]:
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return value.timestamp()
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
