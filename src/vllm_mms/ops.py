"""`./runMe.sh status` and `./runMe.sh logs [engine|proxy] [-f]`.

Local mode reads the stack file, the health endpoints, the engine's Prometheus metrics and the
usage table; compose mode hands over to `docker compose ps` / `docker compose logs`.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import urllib.request
from pathlib import Path
from typing import Iterable, Optional

from .errors import UserError
from .local import alive, health_url, http_ok, read_stack

ENGINE_METRICS = {
    "vllm:num_requests_running": "requests running",
    "vllm:num_requests_waiting": "requests waiting",
    "vllm:kv_cache_usage_perc": "KV-cache use",
}
SERVICES = {"engine": "vllm-node", "proxy": "litellm", "db": "litellm_db"}


def engine_metrics(port: int, names: Iterable[str] = ENGINE_METRICS) -> Optional[dict[str, float]]:
    """Sum of each metric in `names` over its label sets, from the engine's /metrics (open,
    no key); None when the engine does not answer."""
    wanted = set(names)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
            text = response.read().decode("utf-8", "replace")
    except OSError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})?\s+([-+0-9.eE]+|NaN)$", line)
        if match and match.group(1) in wanted:
            values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(2))
    return values


def recent_requests(minutes: int = 5) -> Optional[int]:
    from .store import Store

    async def count() -> int:
        store = Store()
        try:
            rows = await store.fetchall("SELECT COUNT(*) FROM mms_usage WHERE ts >= ?",
                                        (time.time() - minutes * 60,))
            return int(rows[0][0])
        finally:
            await store.close()

    try:
        return asyncio.run(count())
    except Exception:  # noqa: BLE001 - no table yet, database away: shown as unknown
        return None


def _uptime(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def status_lines() -> list[str]:
    stack = read_stack()
    if stack is None:
        return []
    lines = [
        "mode:     local",
        f"model:    {stack.model}",
        f"uptime:   {_uptime(time.time() - stack.started)}",
    ]
    load: dict[str, float] = {}
    for name, pid, port in stack.services():
        up = alive(pid) and http_ok(health_url(name, port))
        lines.append(f"{name + ':':<10}{'healthy' if up else 'DOWN'}  pid {pid}  "
                     f"http://127.0.0.1:{port}")
        if up and name != "proxy":  # summed over the replicas
            for metric, value in (engine_metrics(port) or {}).items():
                load[metric] = load.get(metric, 0.0) + value
    engines = len(stack.replicas) + 1
    for name, label in ENGINE_METRICS.items():
        if name in load:
            value = load[name] / engines if name.endswith("_perc") else load[name]
            shown = f"{value * 100:.1f}%" if name.endswith("_perc") else f"{value:.0f}"
            lines.append(f"{label + ':':<18}{shown}")
    recent = recent_requests()
    lines.append(f"{'proxy requests, last 5 min:':<28} {'?' if recent is None else recent}")
    lines.append(f"logs:     {stack.log_dir}")
    return lines


def status(compose: list[str]) -> int:
    lines = status_lines()
    if lines:
        print("\n".join(lines))
        return 0 if all("DOWN" not in line for line in lines) else 1
    if compose:
        os.execvp(compose[0], [*compose, "ps"])
    print("nothing is running (start with ./runMe.sh --local, or MODEL=NAME ./runMe.sh)")
    return 1


def logs(service: Optional[str], follow: bool, compose: list[str]) -> int:
    if service is not None and service not in SERVICES:
        raise UserError(f"unknown service {service!r}; choose one of: {', '.join(SERVICES)}", 2)
    stack = read_stack()
    if stack is not None:
        if service == "db":
            raise UserError("local mode has no database service (usage goes to SQLite)", 2)
        names = [name for name, _, _ in stack.services()
                 if service is None or name == service or name.startswith(f"{service}-")]
        paths = [str(Path(stack.log_dir) / f"{name}.log") for name in names]
        argv = ["tail", "-n", "100", *(["-F"] if follow else []), *paths]
        os.execvp(argv[0], argv)
    if compose:
        argv = [*compose, "logs", *(["-f"] if follow else []),
                *([SERVICES[service]] if service else [])]
        os.execvp(argv[0], argv)
    print("nothing is running, so there are no logs to show")
    return 1
