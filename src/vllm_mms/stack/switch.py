"""`./runMe.sh switch MODEL`: move a running stack to another catalog model.

Local mode (blue/green): start the new engine beside the old one on a free port, wait for
its health, render the configuration for it (the proxy follows config.yaml without a
restart, see proxy_hooks.ROUTER), let the old engine finish what it is serving, stop it.
If the new engine never becomes healthy, it is stopped and the old one never stopped serving.

Compose mode: a GPU holds one large model at a time, so the engine service is recreated with
the new MODEL (no rebuild, no other service touched); the engine entrypoint renders the new
configuration into the shared volume and the proxy follows it. If the new engine does not
become healthy, the service is recreated with the old MODEL (rollback).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Optional

from .. import bootstrap, environment, paths
from ..config.resolve import Project, Resolved, resolve
from ..engine import fit
from ..errors import UserError
from ..progress import SYSTEM_CLOCK, Clock, wait_until
from . import local
from .compose import ENGINE_CONTAINER, ENGINE_SERVICE
from .processes import alive, free_port, http_ok, process_env, tail, terminate
from .render import render
from .state import Stack


def switch(project: Project, name: str, force: bool, compose: list[str]) -> int:
    target = resolve(project, name)  # an unknown or broken model fails here, before anything
    stack = Stack.load()
    if stack is not None and any(alive(p) for p in stack.pids):
        return switch_local(project, stack, name, force)
    if compose and compose_engine_model() is not None:
        return switch_compose(project, compose, name, force)
    start = f"./runMe.sh --local {name}" if target.model.local_weights else f"MODEL={name} ./runMe.sh"
    raise UserError(f"nothing is running to switch; start {name} with: {start}")


# ----------------------------------------------------------------------------- local mode

def proxy_engine_key(proxy_pid: int) -> str:
    """The key the running proxy sends to the engine (from its environment: the new engine
    must accept the same key, and it is written nowhere)."""
    key = process_env(proxy_pid, "VLLM_API_KEY")
    if not key:
        raise UserError(f"cannot read the engine key of the proxy (pid {proxy_pid}); restart "
                        f"the stack: ./runMe.sh down && ./runMe.sh --local")
    return key


def engine_load(port: int) -> Optional[float]:
    """Requests running + waiting in an engine (its Prometheus metrics); None if it is gone."""
    from ..ops.status import engine_metrics

    metrics = engine_metrics(port)
    if metrics is None:
        return None
    return metrics.get("vllm:num_requests_running", 0.0) + metrics.get("vllm:num_requests_waiting", 0.0)


def wait_engine(proc: subprocess.Popen, port: int, log: Path, deadline_s: float,
                clock: Clock = SYSTEM_CLOCK) -> None:
    def healthy() -> bool:
        if proc.poll() is not None:
            raise UserError(f"the new engine exited (code {proc.returncode}) while loading; "
                            f"last lines of {log}:\n{tail(log)}")
        return http_ok(f"http://127.0.0.1:{port}/health")

    if not wait_until(healthy, deadline_s, "switch: loading the new model", clock=clock):
        raise UserError(f"the new engine was not healthy after {deadline_s:.0f}s "
                        f"(MMS_START_TIMEOUT); last lines of {log}:\n{tail(log)}")


def proxy_lists(port: int, master_key: str, names: list[str]) -> bool:
    """Whether the proxy on `port` lists all of `names` (it re-reads config.yaml on a request)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models",
                                     headers={"Authorization": f"Bearer {master_key}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 - loopback
            ids = {m.get("id") for m in json.load(resp).get("data", [])}
    except (OSError, ValueError):
        return False
    return set(names) <= ids


def proxy_serves(stack: Stack, master_key: str, names: list[str], deadline_s: float,
                 clock: Clock = SYSTEM_CLOCK) -> bool:
    """True once the proxy lists the new model ids, False if not within `deadline_s`."""
    return wait_until(lambda: proxy_lists(stack.proxy_port, master_key, names), deadline_s,
                      "switch: waiting for the proxy to serve the new model", every=0.5,
                      clock=clock)


# The engine's gauges lag: a request the proxy routed just before it moved may still be on its
# way (or not yet scheduled), so "idle" must hold for a moment before the old engine stops.
DRAIN_QUIET_S = 3.0


def drain(port: int, deadline_s: float, quiet_s: float = DRAIN_QUIET_S,
          clock: Clock = SYSTEM_CLOCK) -> float:
    """Wait until the old engine has had nothing running or waiting for `quiet_s` seconds
    (or it no longer answers, or the deadline); the seconds waited."""
    start = clock.monotonic()
    idle_since: Optional[float] = None  # when the current idle stretch began

    def settled() -> bool:
        nonlocal idle_since
        load = engine_load(port)
        if load is None:  # the engine no longer answers
            return True
        if load:
            idle_since = None
            return False
        if idle_since is None:
            idle_since = clock.monotonic()
        return clock.monotonic() - idle_since >= quiet_s

    wait_until(settled, deadline_s, "switch: the old engine finishes what it serves",
               every=0.5, clock=clock)
    return clock.monotonic() - start


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def switch_local(project: Project, stack: Stack, name: str, force: bool) -> int:
    if stack.model == name:
        print(f"{name} is already serving")
        return 0
    if len(stack.models) > 1:
        raise UserError(f"switch replaces the one model a stack serves, and this one serves "
                        f"{', '.join(stack.models)}: ./runMe.sh down && ./runMe.sh --local "
                        f"{' '.join(m if m != stack.model else name for m in stack.models)}")
    if len(stack.engines) > 1:
        raise UserError(f"switch moves one engine, and {stack.model} runs "
                        f"{len(stack.engines)} replicas: ./runMe.sh down && "
                        f"./runMe.sh --local {name} --replicas {len(stack.engines)}")
    old = resolve(project, stack.model)
    new = resolve(project, name)
    local.require_cpu_model(project, new)
    engine_python = bootstrap.ensure_env("engine")
    weights = None
    if new.model.local_weights:
        from ..engine.prepare_model import ensure_weights

        weights = ensure_weights(engine_python, new.model.local_weights)
    fit.preflight(new, force, weights)

    key = proxy_engine_key(stack.proxy.pid)
    engine = stack.engines[0]
    logs = Path(stack.log_dir)
    port = free_port()
    with open(logs / "engine.log", "a") as handle:
        handle.write(f"=== switch: starting {name} on port {port} ===\n")
    print(f"switch: starting {name} beside {stack.model} (engine port {port}) ...", flush=True)
    # Until the proxy has moved, an interrupt (Ctrl-C, or SIGTERM from a supervisor) must not
    # leave the new engine running on its own.
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    proc = local.engine_process(new, engine_python, weights, key, logs, port)
    generated = paths.generated_dir()
    rendered = False
    try:
        wait_engine(proc, port, logs / "engine.log",
                    environment.start_timeout())
        render(project, new, generated, api_base=f"http://127.0.0.1:{port}/v1")
        rendered = True
        if not proxy_serves(stack, new.settings.LITELLM_MASTER_KEY, new.model_names, 30):
            raise UserError("the proxy did not pick up the new configuration within 30s")
    except (UserError, KeyboardInterrupt) as exc:
        if rendered:
            render(project, old, generated, api_base=f"http://127.0.0.1:{engine.port}/v1")
        terminate([proc.pid])
        why = exc.message if isinstance(exc, UserError) else "interrupted"
        raise UserError(f"switch to {name} failed, {stack.model} keeps serving (rolled back): "
                        f"{why}") from None
    finally:
        signal.signal(signal.SIGTERM, previous_handler)

    old_pid, old_port = engine.pid, engine.port
    stack.model, engine.pid, engine.port = name, proc.pid, port
    stack.save()
    waited = drain(old_port, float(old.limits["request_timeout"]))
    terminate([old_pid])
    print(f"switched: {old.name} -> {name}; the proxy on port {stack.proxy_port} serves "
          f"{', '.join(new.model_names)} (old engine drained in {waited:.1f}s and stopped)")
    return 0


# ----------------------------------------------------------------------------- compose mode

def _docker(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


def compose_engine_env() -> Optional[dict[str, str]]:
    """The engine container's environment, or None when it does not exist."""
    out = _docker(["docker", "inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}",
                   ENGINE_CONTAINER])
    if out.returncode != 0:
        return None
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def compose_engine_model() -> Optional[str]:
    """MODEL of the engine container, or None when it does not exist."""
    return (compose_engine_env() or {}).get("MODEL")


def recreate_engine(project: Project, resolved: Resolved) -> None:
    """The engine service alone, recreated with the model's compose files and MODEL."""
    from . import compose

    cmd = [*compose.compose_command(), *compose.model_files(project.root, resolved), "up", "-d",
           "--no-deps", "--no-build", "--force-recreate", ENGINE_SERVICE]
    print(f"switch: MODEL={resolved.name} {' '.join(cmd)}", flush=True)
    result = subprocess.run(cmd, env={**os.environ, **compose.model_environment(resolved)})
    if result.returncode != 0:
        raise UserError(f"'{' '.join(cmd)}' failed (exit {result.returncode})")


def wait_container_healthy(deadline_s: float, clock: Clock = SYSTEM_CLOCK) -> Optional[str]:
    """None when healthy, else why not. The engine restarts by itself when vLLM exits
    (restart: unless-stopped), so a restart counts as a failure too."""
    failure: Optional[str] = None

    def settled() -> bool:
        nonlocal failure
        out = _docker(["docker", "inspect", "--format",
                       "{{.State.Status}} {{.RestartCount}} "
                       "{{if .State.Health}}{{.State.Health.Status}}{{end}}", ENGINE_CONTAINER])
        status, restarts, *health = out.stdout.split() or ["gone", "0"]
        if out.returncode == 0 and health == ["healthy"]:
            return True
        if out.returncode != 0 or status in ("exited", "dead") or health == ["unhealthy"]:
            failure = f"the engine container is {' '.join([status, *health])}"
        elif restarts != "0":
            failure = f"vLLM exited and the engine container restarted ({restarts}x)"
        return failure is not None

    if not wait_until(settled, deadline_s, "switch: loading the new model", every=5, clock=clock):
        return f"the engine was not healthy after {deadline_s:.0f}s (MMS_START_TIMEOUT)"
    return failure


def switch_compose(project: Project, compose: list[str], name: str, force: bool) -> int:
    env = compose_engine_env() or {}
    old = env.get("MODEL")
    if old == name:
        print(f"{name} is already serving")
        return 0
    beside = [m for m in (env.get("MMS_ALSO_SERVED") or "").split(",") if m]
    if beside:
        models = [old, *beside]
        raise UserError(f"switch replaces the one model a stack serves, and this one serves "
                        f"{', '.join(models)}: ./runMe.sh down && ./runMe.sh "
                        f"{' '.join(name if m == old else m for m in models)}")
    running = int(env.get("REPLICAS") or 1)
    if running > 1:
        raise UserError(f"switch moves one engine, and {old} runs {running} replicas: "
                        f"./runMe.sh down && ./runMe.sh {name} --replicas {running}")
    new: Resolved = resolve(project, name)
    try:  # the running model's file may be gone or broken: then there is no rollback
        previous: Optional[Resolved] = resolve(project, old) if old else None
    except UserError:
        previous = None
    from .compose import is_cpu_model

    if previous is not None and is_cpu_model(previous) != is_cpu_model(new):
        kinds = {True: "a CPU model", False: "a GPU model"}
        raise UserError(f"switch keeps the engine image, and {old} is {kinds[is_cpu_model(previous)]} "
                        f"while {name} is {kinds[is_cpu_model(new)]}: ./runMe.sh down && "
                        f"./runMe.sh {name} -d --build")
    fit.preflight(new, force)
    deadline = environment.start_timeout(compose=True)
    recreate_engine(project, new)
    why = wait_container_healthy(deadline)
    if why is None:
        print(f"switched: {old} -> {name}; the proxy follows the new configuration")
        return 0
    logs = _docker([*compose, "logs", "--no-color", "--tail", "30", ENGINE_SERVICE])
    print(f"switch to {name} failed: {why}; last engine log lines:\n{logs.stdout}", file=sys.stderr)
    if previous is None:
        raise UserError(f"switch to {name} failed and no previous model is known to roll back to")
    print(f"rolling back to {old} ...", file=sys.stderr, flush=True)
    recreate_engine(project, previous)
    again = wait_container_healthy(deadline)
    if again is not None:
        raise UserError(f"switch to {name} failed ({why}); the rollback to {old} failed too "
                        f"({again}): see ./runMe.sh logs engine")
    raise UserError(f"switch to {name} failed ({why}); rolled back: {old} serves again")
