"""`./runMe.sh usage`: requests, errors, tokens and latency from the usage table, per key,
model or day."""

from __future__ import annotations

import re
import statistics
import time
from collections import defaultdict
from typing import Any

from ..errors import UserError
from ..proxy.store import Store
from .database import print_table, with_store

SINCE_RE = re.compile(r"^(\d+)([mhd])$")


def parse_since(text: str) -> float:
    match = SINCE_RE.match(text)
    if not match:
        raise UserError(f"--since {text!r}: use a number and m, h or d (30m, 12h, 7d)", 2)
    return int(match.group(1)) * {"m": 60, "h": 3600, "d": 86400}[match.group(2)]


def usage(since: str, by: str) -> int:
    """The table of `since` (30m, 12h, 7d) grouped `by` key, model or day."""
    start = time.time() - parse_since(since)

    async def action(store: Store) -> int:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in await store.usage_rows(start):
            if by == "day":
                label = time.strftime("%Y-%m-%d", time.gmtime(row["ts"]))
            elif by == "model":
                label = row["model"] or "-"
            else:
                label = row["key_name"] or "-"
            groups[label].append(row)
        table = [(by, "requests", "errors", "prompt", "completion", "p50 ms", "p95 ms")]
        for label in sorted(groups):
            rows = groups[label]
            latencies = sorted(r["latency_ms"] for r in rows if r["latency_ms"] is not None)
            table.append((label, str(len(rows)), str(sum(1 for r in rows if r["status"] >= 400)),
                          str(sum(r["prompt_tokens"] for r in rows)),
                          str(sum(r["completion_tokens"] for r in rows)),
                          _percentile(latencies, 50), _percentile(latencies, 95)))
        print_table(table)
        return 0

    return with_store(action)


def _percentile(values: list[float], pct: int) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.0f}"
    return f"{statistics.quantiles(values, n=100, method='inclusive')[pct - 1]:.0f}"
