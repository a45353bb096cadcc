"""Local mode: the same rendered configuration, run as supervised processes on 127.0.0.1.

Engine = vLLM's CPU build (its own environment), proxy = LiteLLM with our hooks. States are
explicit: start → wait for health (deadline, progress shown) → serve → stop (SIGTERM to the
process group, SIGKILL after a grace period). A stack file in the state directory lets
`./runMe.sh down` (or a second terminal) find and stop what is running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from .. import bootstrap, environment, paths
from ..config import schema
from ..config.resolve import Project, Resolved, resolve
from ..engine import fit, serve
from ..errors import UserError
from ..progress import SYSTEM_CLOCK, Clock, wait_until
from . import replicas
from .container import migrate_store, proxy_environment
from .processes import (
    alive,
    free_port,
    http_ok,
    port_free,
    process_env,
    reap,
    signal_group,
    spawn,
    tail,
    terminate,
)
from .render import CONFIG_FILE, MODELS_FILE, render
from .state import Service, Stack, service_name

# ----------------------------------------------------------------------------- stop

def stop_local(quiet: bool = True) -> bool:
    stack = Stack.load()
    if stack is None:
        if Stack.path().exists():
            Stack.remove()
            if not quiet:
                print(f"removed {Stack.path()}: a stack file this version cannot read (an "
                      f"older version's, or damaged); if that stack still runs, stop its "
                      f"processes by hand")
        return False
    if stack.supervisor_pid and alive(stack.supervisor_pid):
        terminate([stack.supervisor_pid], grace=5)  # first, or it would restart what we stop
    running = [p for p in stack.pids if alive(p)]
    if running:
        if not quiet:
            print(f"stopping local stack ({stack.model}): pids {', '.join(map(str, running))}")
        terminate(running)
    Stack.remove()
    if not quiet:
        print("stopped" if running else "local stack was not running (stale state removed)")
    return True


# ----------------------------------------------------------------------------- start

def wait_healthy(stack: Stack, procs: dict[str, subprocess.Popen], deadline_s: float,
                 clock: Clock = SYSTEM_CLOCK) -> None:
    """Every service answers its health check, in the order status lists them; a process
    that exits meanwhile fails the start at once."""
    logs = Path(stack.log_dir)
    deadline = clock.monotonic() + deadline_s

    def none_exited() -> None:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise UserError(f"the {name} exited (code {proc.returncode}) while starting; "
                                f"last lines of {logs / (name + '.log')}:\n"
                                f"{tail(logs / (name + '.log'))}")

    for service in stack.services:
        def healthy(url: str = service.health_url()) -> bool:
            none_exited()
            return http_ok(url)

        doing = "starting" if service.role == "proxy" else "loading the model"
        if not wait_until(healthy, deadline - clock.monotonic(),
                          f"starting: waiting for the {service.name} ({doing})", clock=clock):
            raise UserError(f"the {service.name} was not healthy after {deadline_s:.0f}s "
                            f"(MMS_START_TIMEOUT); see {logs / (service.name + '.log')}")


def require_cpu_model(project: Project, resolved: Resolved) -> None:
    if resolved.model.local_weights:
        return
    cpu_models = [n for n in schema.available_models(project.models_dir)
                  if schema.load_model_file(project.models_dir / f"{n}.yml").local_weights]
    raise UserError(f"{resolved.name} is not a CPU model ({resolved.model.hardware or 'needs a GPU'}); "
                    f"local mode serves: {', '.join(cpu_models)}. On a GPU box: "
                    f"MODEL={resolved.name} ./runMe.sh")


def start_local(project: Project, name: str, detach: bool, force: bool = False,
                environ: Optional[dict[str, str]] = None) -> int:
    """`environ`: what the settings are resolved from (default: this process's environment;
    the CLI adds --replicas to it)."""
    existing = Stack.load()
    if existing and any(alive(p) for p in existing.pids):
        raise UserError(f"a local stack is already running ({existing.model}, proxy on port "
                        f"{existing.proxy_port}); stop it first: ./runMe.sh down")
    resolved = resolve(project, name, environ)
    require_cpu_model(project, resolved)
    settings = resolved.settings
    for port, var in ((settings.LITELLM_PORT, "LITELLM_PORT"), (settings.VLLM_PORT, "VLLM_PORT")):
        if not port_free(port):
            raise UserError(f"port {port} ({var}) is already in use on 127.0.0.1; "
                            f"choose another, e.g. {var}={port + 1} ./runMe.sh --local")
    if settings.LITELLM_PORT == settings.VLLM_PORT:
        raise UserError("LITELLM_PORT and VLLM_PORT must differ")

    engine_python = bootstrap.ensure_env("engine")
    weights: Optional[Path] = None
    if resolved.model.local_weights:
        from ..engine.prepare_model import ensure_weights

        weights = ensure_weights(engine_python)
    fit.preflight(resolved, force, weights, sharing=resolved.replicas)

    state = paths.state_dir()
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    generated = paths.generated_dir()
    # Replica 1 on VLLM_PORT, the others on free ports.
    engine_ports = [settings.VLLM_PORT, *(free_port() for _ in range(resolved.replicas - 1))]
    render(project, resolved, generated,
           api_base=[f"http://127.0.0.1:{port}/v1" for port in engine_ports])
    migrate_store()
    stack, procs = start_processes(resolved, engine_python, weights, generated, logs,
                                   engine_ports)
    try:
        wait_healthy(stack, procs, environment.start_timeout())
    except BaseException:
        terminate(stack.pids)
        Stack.remove()
        raise
    print_ready(resolved, stack)
    if detach:
        start_supervisor(stack)
        print("running in the background (a supervisor restarts what dies); stop with: "
              "./runMe.sh down")
        return 0
    return supervise(stack, project)


def start_supervisor(stack: Stack) -> None:
    env = {**os.environ, "PYTHONPATH": str(paths.ROOT / "src")}
    proc = spawn("supervisor", [sys.executable, "-m", "vllm_mms", "supervise"], env,
                 Path(stack.log_dir))
    stack.supervisor_pid = proc.pid
    stack.save()


def proxy_process(resolved: Resolved, generated: Path, engine_key: str, logs: Path,
                  port: int, extra_env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    """LiteLLM from this (tools) environment behind our route gate, hooks importable."""
    env = {**os.environ, **proxy_environment(resolved, engine_key,
                                             generated / MODELS_FILE), **(extra_env or {})}
    env["PYTHONPATH"] = str(paths.ROOT / "src")
    env.setdefault("USAGE_RETENTION_DAYS", str(resolved.settings.USAGE_RETENTION_DAYS))
    argv = [sys.executable, "-m", "vllm_mms.proxy.gateway", "--config", str(generated / CONFIG_FILE),
            "--host", "127.0.0.1", "--port", str(port)]
    return spawn("proxy", argv, env, logs)


def engine_process(resolved: Resolved, engine_python: Path, weights: Optional[Path],
                   engine_key: str, logs: Path, port: int, replica: int = 1) -> subprocess.Popen:
    """Engine replica `replica` of resolved.replicas; its log is engine.log (replica 1) or
    engine-K.log. Replicas split the memory share and the cores between them."""
    label = service_name("engine", replica)
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base_env.update({"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
    env = serve.engine_environment(resolved, engine_key, base_env)
    if resolved.replicas > 1 and env.get("VLLM_CPU_OMP_THREADS_BIND", "auto") == "auto":
        env["VLLM_CPU_OMP_THREADS_BIND"] = (replicas.cpu_binding(replica, resolved.replicas)
                                            or "auto")
    argv = serve.engine_argv(resolved, host="127.0.0.1", port=port,
                              cpu_python=str(engine_python), weights=weights,
                              sharing=resolved.replicas)
    (logs / f"{label}.argv.json").write_text(json.dumps(argv) + "\n")
    return spawn(label, argv, env, logs)


def start_processes(resolved: Resolved, engine_python: Path, weights: Optional[Path],
                    generated: Path, logs: Path, engine_ports: list[int]
                    ) -> tuple[Stack, dict[str, subprocess.Popen]]:
    """The engines (one per port) and the proxy, recorded in the stack file."""
    key = serve.internal_api_key(resolved)
    procs: dict[str, subprocess.Popen] = {}
    engines = []
    for k, port in enumerate(engine_ports, 1):
        name = service_name("engine", k)
        procs[name] = engine_process(resolved, engine_python, weights, key, logs, port, replica=k)
        engines.append(Service("engine", k, procs[name].pid, port))
    port = resolved.settings.LITELLM_PORT
    procs["proxy"] = proxy_process(resolved, generated, key, logs, port)
    proxy = Service("proxy", 1, procs["proxy"].pid, port)
    stack = Stack(model=resolved.name, services=[engines[0], proxy, *engines[1:]],
                  log_dir=str(logs), started=time.time())
    stack.save()
    print(f"logs: {', '.join(f'{logs}/{name}.log' for name in procs)}", file=sys.stderr,
          flush=True)
    return stack, procs


def print_ready(resolved: Resolved, stack: Stack) -> None:
    key_hint = ("sk-FAKE" if resolved.settings.LITELLM_MASTER_KEY == "sk-FAKE"
                else "$LITELLM_MASTER_KEY")
    base = f"http://127.0.0.1:{stack.proxy_port}"
    print(f"ready: {resolved.name} (model ids: {', '.join(resolved.model_names)})")
    print(f"  proxy (OpenAI + Anthropic API): {base}/v1    key: {key_hint}")
    for engine in stack.engines:
        print(f"  {engine.name + ' (internal):':<32}http://127.0.0.1:{engine.port}")
    print(f"  logs:                           {stack.log_dir}")
    print("try:")
    print(f"  curl {base}/v1/chat/completions -H 'Authorization: Bearer {key_hint}' "
          f"-H 'Content-Type: application/json' "
          f"-d '{{\"model\": \"{resolved.name}\", \"messages\": [{{\"role\": \"user\", "
          f"\"content\": \"What is the capital of France?\"}}]}}'", flush=True)


RESTART_LIMIT = 5            # restarts of one service ...
RESTART_WINDOW_S = 600.0     # ... within this window, then the supervisor gives up


def restart(stack: Stack, dead: Service, project: Project) -> None:
    """Start the dead service again on its port, with the key the others hold."""
    # As many replicas as the stack runs, however that number was given (--replicas).
    resolved = resolve(project, stack.model,
                       {**os.environ, "REPLICAS": str(len(stack.engines))})
    logs = Path(stack.log_dir)
    signal_group(dead.pid, signal.SIGKILL)  # its workers (vLLM's engine core) must not linger
    reap()
    keys = (process_env(s.pid, "VLLM_API_KEY") for s in stack.services if s is not dead)
    key = next((k for k in keys if k), None) or serve.internal_api_key(resolved)
    with open(logs / f"{dead.name}.log", "a") as handle:
        handle.write(f"=== supervisor: the {dead.name} exited; restarting it ===\n")
    if dead.role == "proxy":
        proc = proxy_process(resolved, paths.generated_dir(), key, logs, dead.port)
    else:
        from ..engine.prepare_model import weights_dir

        weights = weights_dir() if resolved.model.local_weights else None
        proc = engine_process(resolved, bootstrap.ensure_env("engine"), weights, key, logs,
                              dead.port, replica=dead.replica)
    dead.pid = proc.pid
    stack.save()


def supervise(stack: Stack, project: Optional[Project] = None, foreground: bool = True) -> int:
    """Restart a service that dies (up to RESTART_LIMIT times in RESTART_WINDOW_S); Ctrl-C or
    SIGTERM stops everything (foreground) or just the supervisor (detached: `down` does it)."""
    stopping: dict[str, Optional[int]] = {"signal": None}

    def on_signal(signum: int, _frame: object) -> None:
        stopping["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if project is None:
        project = Project(paths.project_dir())
    if foreground:
        print("serving in the foreground (a service that dies is restarted); Ctrl-C stops "
              "everything", flush=True)
    restarts: dict[str, list[float]] = {s.name: [] for s in stack.services}
    code = 0
    while stopping["signal"] is None:
        # `switch` and restarts replace processes and record them in the stack file: follow it.
        current = Stack.load()
        if current is None:  # `down` ran
            return 0
        stack = current
        reap()
        for service in stack.services:
            if alive(service.pid):
                continue
            name = service.name
            now = time.monotonic()
            restarts[name] = [t for t in restarts.get(name, []) if now - t < RESTART_WINDOW_S] + [now]
            if len(restarts[name]) > RESTART_LIMIT:
                print(f"the {name} died {RESTART_LIMIT + 1} times in {RESTART_WINDOW_S:.0f}s; "
                      f"stopping the stack. Last lines of its log:\n"
                      f"{tail(Path(stack.log_dir) / (name + '.log'))}", file=sys.stderr, flush=True)
                code = 1
                stopping["signal"] = -1
                break
            print(f"the {name} (pid {service.pid}) exited; restarting it", file=sys.stderr,
                  flush=True)
            try:
                restart(stack, service, project)
            except Exception as exc:  # noqa: BLE001 - say why, try again next round
                print(f"restarting the {name} failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)
        time.sleep(0.5)
    if not foreground and stopping["signal"] != -1:
        return 0  # detached: `down` stops the services itself
    print("stopping ...", file=sys.stderr, flush=True)
    terminate(stack.pids)
    Stack.remove()
    print("stopped", file=sys.stderr)
    return code
