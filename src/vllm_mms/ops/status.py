"""`./runMe.sh status` and `./runMe.sh logs [engine|proxy] [-f]`.

Local mode reads the stack file, the health endpoints, the engine's Prometheus metrics and the
usage table; compose mode hands over to `docker compose ps` / `docker compose logs`.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Optional

from ..errors import UserError
from ..stack.compose import ENGINE_SERVICE, PROXY_SERVICE, SERVICES
from ..stack.processes import alive, http_ok
from ..stack.state import Stack

ENGINE_METRICS = {
    "vllm:num_requests_running": "requests running",
    "vllm:num_requests_waiting": "requests waiting",
    "vllm:kv_cache_usage_perc": "KV-cache use",
}


def engine_metrics(port: int, names: Iterable[str] = ENGINE_METRICS) -> Optional[dict[str, float]]:
    """Sum of each metric in `names` over its label sets, from the engine's /metrics (open,
    no key); None when the engine does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310
            text = response.read().decode("utf-8", "replace")
    except OSError:
        return None
    return parse_metrics(text, names)


def parse_metrics(text: str, names: Iterable[str] = ENGINE_METRICS) -> dict[str, float]:
    """Prometheus text → the sum of each metric in `names` over its label sets."""
    wanted = set(names)
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})?\s+([-+0-9.eE]+|NaN)$", line)
        if match and match.group(1) in wanted:
            values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(2))
    return values


def recent_requests(minutes: int = 5) -> Optional[int]:
    from ..proxy.store import Store

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
    stack = Stack.load()
    if stack is None:
        return []
    lines = [
        "mode:     local",
        f"model:    {', '.join(stack.models)}",
        f"uptime:   {_uptime(time.time() - stack.started)}",
    ]
    load: dict[str, float] = {}
    for service in stack.services:
        up = alive(service.pid) and http_ok(service.health_url())
        lines.append(f"{service.name + ':':<10}{'healthy' if up else 'DOWN'}  pid {service.pid}  "
                     f"http://127.0.0.1:{service.port}")
        if up and service.role == "engine":  # summed over the replicas
            for metric, value in (engine_metrics(service.port) or {}).items():
                load[metric] = load.get(metric, 0.0) + value
    engines = len(stack.engines)
    for name, label in ENGINE_METRICS.items():
        if name in load:
            value = load[name] / engines if name.endswith("_perc") else load[name]
            shown = f"{value * 100:.1f}%" if name.endswith("_perc") else f"{value:.0f}"
            lines.append(f"{label + ':':<18}{shown}")
    recent = recent_requests()
    lines.append(f"{'proxy requests, last 5 min:':<28} {'?' if recent is None else recent}")
    lines.append(f"logs:     {stack.log_dir}")
    return lines


PS_COLUMNS = ("MODEL", "STATE", "ENGINE", "PID", "MEMORY SHARE", "RUNNING", "WAITING",
              "UNLOADS")


def ps_rows(stack: Stack, probe=None, ttl: float = 300.0) -> list[tuple[str, ...]]:
    """One row per engine: its model, its state (ready: answers its health check; loading:
    its process runs but does not answer yet; down; an on-demand model: the supervisor's
    state, idle when ready with nothing running), where it runs, its memory share (the
    --gpu-memory-utilization fit gave it when several models run; else its command's), the
    requests it runs and queues (its own metrics), and when it unloads (resident: never; on
    demand: `ttl` seconds after its last request). Then a row per on-demand model not loaded."""
    from ..proxy import board

    probe = probe or (lambda port: engine_metrics(port, ENGINE_METRICS))
    states = board.states() if stack.on_demand else {}
    rows = []
    for engine in stack.engines:
        running = alive(engine.pid)
        ready = running and http_ok(engine.health_url())
        metrics = (probe(engine.port) or {}) if ready else {}
        state = "ready" if ready else "loading" if running else "down"
        share = f"{engine.share:.2f}" if engine.share else "its own"
        running_now, waiting = (f"{metrics[name]:.0f}" if name in metrics else "-"
                                for name in ("vllm:num_requests_running",
                                             "vllm:num_requests_waiting"))
        unloads = "never (resident)"
        told = states.get(engine.model)
        if stack.on_demand_of(engine.model) and told is not None:
            state, unloads = on_demand_state(engine.model, told, running_now, waiting, ttl)
        rows.append((stack.model_of(engine), state, f"{engine.name} :{engine.port}",
                     str(engine.pid), share, running_now, waiting, unloads))
    loaded = {s.model for s in stack.engines}
    for wanted in stack.on_demand:
        if wanted.model not in loaded:
            rows.append(not_loaded_row(wanted.model, wanted.share, states))
    return rows


def on_demand_state(model: str, told, running_now: str, waiting: str,
                    ttl: float) -> tuple[str, str]:
    """A loaded on-demand model's state as its supervisor says it (idle: ready with nothing
    running or waiting) and when it unloads: `ttl` seconds after its last request."""
    from ..proxy import board

    state = told.state
    if state == "ready" and (running_now, waiting) == ("0", "0"):
        state = "idle"
    last = max(board.last_used(model) or 0.0, told.since)
    unloads = time.strftime("%H:%M:%S", time.localtime(last + ttl)) \
        if state in ("ready", "idle") else "-"
    return state, unloads


def not_loaded_row(model: str, share: float, states: dict) -> tuple[str, ...]:
    told = states.get(model)
    return (model, told.state if told else "unloaded", "-", "-", f"{share:.2f}", "-", "-",
            "on demand")


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()
            for r in [header, *rows]]


def ps(compose: list[str]) -> int:
    """`./runMe.sh ps`: the models and their engines."""
    stack = Stack.load()
    if stack is not None:
        ttl = 300.0
        if stack.on_demand:
            from .. import paths
            from ..config.resolve import Project, global_settings

            ttl = global_settings(Project(paths.project_dir())).ON_DEMAND_TTL
        rows = ps_rows(stack, ttl=ttl)
        print("\n".join(table(PS_COLUMNS, rows)))
        return 0 if all(r[1] not in ("down", "failed") for r in rows) else 1
    rows = compose_ps_rows(compose) if compose else []
    if rows:
        print("\n".join(table(PS_COLUMNS, rows)))
        return 0 if all(r[1] not in ("down", "failed") for r in rows) else 1
    print("nothing is running (start with ./runMe.sh --local, or MODEL=NAME ./runMe.sh)")
    return 1


def compose_ps_rows(compose: list[str], ttl: Optional[float] = None) -> list[tuple[str, ...]]:
    """Compose mode: one row per engine container (its model, state from its health check,
    memory share, requests from its own metrics, read inside it); an on-demand model's state
    as its supervisor says on the load board (compose_ondemand.py), a row for each one not
    loaded."""
    from ..proxy import board
    from ..stack.compose import container_env, containers
    from ..stack.compose_ondemand import ComposeStack

    supervised = ComposeStack.load()
    on_demand = {o.model: o for o in supervised.on_demand} if supervised else {}
    if on_demand and ttl is None:
        from .. import paths
        from ..config.resolve import Project, global_settings

        ttl = global_settings(Project(paths.project_dir())).ON_DEMAND_TTL
    states = board.states() if on_demand else {}
    rows, loaded = [], set()
    for c in containers(compose):
        if not c.service.startswith(ENGINE_SERVICE):
            continue
        env = container_env(c.name) or {}
        model = env.get("MODEL", "?")
        if model in on_demand and c.state != "running":
            continue  # stopped: unloaded (its row follows)
        state = "ready" if c.good else "loading" if c.state == "running" and \
            c.health == "starting" else "down"
        metrics = parse_metrics(_docker_exec(c.name, ENGINE_METRICS_READ) or "") if c.good else {}
        running_now, waiting = (f"{metrics[name]:.0f}" if name in metrics else "-"
                                for name in ("vllm:num_requests_running",
                                             "vllm:num_requests_waiting"))
        share = env.get("MMS_MEMORY_SHARE") or "its own"
        unloads = "never (resident)"
        told = states.get(model)
        if model in on_demand:
            loaded.add(model)
            share = f"{on_demand[model].share:.2f}"
            if told is not None:
                state, unloads = on_demand_state(model, told, running_now, waiting, ttl or 0.0)
        rows.append((model, state, f"container {c.name}", str(c.pid or "-"), share,
                     running_now, waiting, unloads))
    for model, wanted in on_demand.items():
        if model not in loaded:
            rows.append(not_loaded_row(model, wanted.share, states))
    return rows


def status(compose: list[str]) -> int:
    lines = status_lines()
    if lines:
        print("\n".join(lines))
        return 0 if all("DOWN" not in line for line in lines) else 1
    lines = compose_status_lines(compose) if compose else []
    if lines:
        print("\n".join(lines))
        return 0 if all("DOWN" not in line for line in lines) else 1
    print("nothing is running (start with ./runMe.sh --local, or MODEL=NAME ./runMe.sh)")
    return 1


# Run inside an engine container: its /metrics (the engine's port is not published).
ENGINE_METRICS_READ = ("import urllib.request; print(urllib.request.urlopen("
                       "'http://127.0.0.1:8000/metrics', timeout=5).read().decode())")


def _docker_exec(container: str, code: str) -> Optional[str]:
    """Run Python inside one of our containers; its stdout, or None when that fails."""
    try:
        out = subprocess.run(["docker", "exec", container, "python3", "-c", code],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _since(started_at: str) -> str:
    try:  # docker's RFC 3339 in UTC; seconds are enough (3.10 parses no odd fractions)
        start = datetime.fromisoformat(started_at[:19] + "+00:00")
    except ValueError:
        return "?"
    return _uptime((datetime.now(timezone.utc) - start).total_seconds())


def compose_status_lines(compose: list[str]) -> list[str]:
    """Compose mode: each container's state, health and uptime, the engine's queue and KV
    cache (read inside the engine container: its port is not published) and the proxy's
    recent requests (counted inside the proxy container, which reaches the database)."""
    from ..stack.compose import container_env, containers

    found = containers(compose)
    if not found:
        return []
    models = list(dict.fromkeys((container_env(c.name) or {}).get("MODEL", "?")
                                for c in found if c.service.startswith(ENGINE_SERVICE)))
    label = "models:" if len(models) > 1 else "model:"
    lines = ["mode:     compose", f"{label:<10}{', '.join(models) or '?'}"]
    for c in found:
        shown = c.state + (f" ({c.health})" if c.health else "")
        up = f"  up {_since(c.started_at)}" if c.state == "running" else ""
        lines.append(f"{c.service + ':':<13}{'healthy' if c.good else 'DOWN'}  {shown}  "
                     f"container {c.name}{up}")
    load: dict[str, float] = {}
    for c in found:
        if c.service.startswith(ENGINE_SERVICE) and c.good:
            text = _docker_exec(c.name, ENGINE_METRICS_READ)
            for metric, value in parse_metrics(text or "").items():
                load[metric] = load.get(metric, 0.0) + value
    engines = sum(1 for c in found if c.service.startswith(ENGINE_SERVICE)) or 1
    for name, label in ENGINE_METRICS.items():
        if name in load:
            value = load[name] / engines if name.endswith("_perc") else load[name]
            shown = f"{value * 100:.1f}%" if name.endswith("_perc") else f"{value:.0f}"
            lines.append(f"{label + ':':<18}{shown}")
    proxy = next((c for c in found if c.service == PROXY_SERVICE and c.state == "running"), None)
    recent = _docker_exec(proxy.name, "from vllm_mms.ops.status import recent_requests; "
                          "print(recent_requests())") if proxy else None
    recent = (recent or "").strip()
    lines.append(f"{'proxy requests, last 5 min:':<28} "
                 f"{recent if recent and recent != 'None' else '?'}")
    lines.append("logs:     ./runMe.sh logs engine|proxy|db")
    return lines


def logs(service: Optional[str], follow: bool, compose: list[str]) -> int:
    if service is not None and service not in SERVICES:
        raise UserError(f"unknown service {service!r}; choose one of: {', '.join(SERVICES)}", 2)
    stack = Stack.load()
    if stack is not None:
        if service == "db":
            raise UserError("local mode has no database service (usage goes to SQLite)", 2)
        names = [s.name for s in stack.services if service is None or s.role == service]
        paths = [str(Path(stack.log_dir) / f"{name}.log") for name in names]
        argv = ["tail", "-n", "100", *(["-F"] if follow else []), *paths]
        os.execvp(argv[0], argv)
    if compose:
        argv = [*compose, "logs", *(["-f"] if follow else []),
                *([SERVICES[service]] if service else [])]
        os.execvp(argv[0], argv)
    print("nothing is running, so there are no logs to show")
    return 1
