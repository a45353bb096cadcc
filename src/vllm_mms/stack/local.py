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
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from .. import bootstrap, environment, paths
from ..config import schema
from ..config.resolve import Project, Resolved, global_settings, resolve
from ..engine import fit, serve
from ..errors import UserError
from ..progress import SYSTEM_CLOCK, Clock, wait_until
from ..proxy import board
from . import render, replicas
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
from .render import CONFIG_FILE, MODELS_FILE
from .state import OnDemand, Service, Stack, service_name

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
            print(f"stopping local stack ({', '.join(stack.models)}): pids "
                  f"{', '.join(map(str, running))}")
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


def start_local(project: Project, names: Union[str, Sequence[str]], detach: bool,
                force: bool = False, environ: Optional[dict[str, str]] = None,
                on_demand: Sequence[str] = ()) -> int:
    """`names`: one catalog model, or several served at once behind the one proxy (the
    first also answers to the generic model id); `on_demand`: models loaded when a request
    names one (ondemand.py). `environ`: what the settings are resolved from (default: this
    process's environment; the CLI adds --replicas to it)."""
    names = [names] if isinstance(names, str) else list(names)
    existing = Stack.load()
    if existing and any(alive(p) for p in existing.pids):
        raise UserError(f"a local stack is already running ({', '.join(existing.models)}, "
                        f"proxy on port {existing.proxy_port}); stop it first: ./runMe.sh down")
    models = [resolve(project, name, environ) for name in [*names, *on_demand]]
    resolved = models[0]
    for model in models:
        require_cpu_model(project, model)
    if len(models) > 1 and resolved.replicas > 1:
        raise UserError(f"--replicas N runs N engines of one model; "
                        f"{', '.join(m.name for m in models)} are several models, one engine "
                        f"each: leave out --replicas (REPLICAS)")
    resolved.proxy_workers  # noqa: B018 - PROXY_WORKERS without Redis fails here, not after the engine
    settings = resolved.settings
    for port, var in ((settings.LITELLM_PORT, "LITELLM_PORT"), (settings.VLLM_PORT, "VLLM_PORT")):
        if not port_free(port):
            raise UserError(f"port {port} ({var}) is already in use on 127.0.0.1; "
                            f"choose another, e.g. {var}={port + 1} ./runMe.sh --local")
    if settings.LITELLM_PORT == settings.VLLM_PORT:
        raise UserError("LITELLM_PORT and VLLM_PORT must differ")
    render.check_names(resolved, [(m, "") for m in models[1:]])

    engine_python = bootstrap.ensure_env("engine")
    if any(m.model.local_weights for m in models):
        from ..engine.prepare_model import ensure_weights

        ensure_weights(engine_python)  # every local checkpoint, once

    def weights_of(model: Resolved) -> Optional[Path]:
        from ..engine.prepare_model import weights_dir

        return weights_dir(model.model.local_weights) if model.model.local_weights else None

    plan: Optional[fit.SetPlan] = None
    if len(models) == 1:
        fit.preflight(resolved, force, weights_of(resolved), sharing=resolved.replicas)
        shares = [0.0]
    else:
        plan = fit.preflight_set(models, force, weights_of, on_demand=len(on_demand))
        shares = plan.shares

    state = paths.state_dir()
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    generated = paths.generated_dir()
    # Replica 1 on VLLM_PORT, the other replicas and models on free ports.
    engine_ports = [settings.VLLM_PORT, *(free_port() for _ in range(resolved.replicas - 1))]
    beside = [Beside(model, free_port(), share, weights_of(model))
              for model, share in zip(models[1:], shares[1:])]
    loaded_later = beside[len(beside) - len(on_demand):] if on_demand else []
    beside = beside[:len(beside) - len(loaded_later)]
    render.render(project, resolved, generated,
                  api_base=[f"http://127.0.0.1:{port}/v1" for port in engine_ports],
                  others=[(b.resolved, f"http://127.0.0.1:{b.port}/v1")
                          for b in [*beside, *loaded_later]],
                  on_demand=list(on_demand))
    migrate_store()
    board.reset()
    stack, procs = start_processes(resolved, engine_python, weights_of(resolved), generated,
                                   logs, engine_ports, beside, shares[0])
    if loaded_later:
        assert plan is not None
        stack.on_demand = [OnDemand(b.resolved.name, b.port, b.share, b.share * plan.per_device)
                           for b in loaded_later]
        stack.budget, stack.share_unit = plan.available, plan.per_device
        stack.save()
    try:
        wait_healthy(stack, procs, environment.start_timeout())
    except BaseException:
        terminate(stack.pids)
        Stack.remove()
        raise
    print_ready(models[:len(models) - len(on_demand)], stack)
    if on_demand:
        print(f"  on demand (loaded when a request names one, unloaded after "
              f"{resolved.settings.ON_DEMAND_TTL:g}s idle): {', '.join(on_demand)}")
    if detach:
        start_supervisor(stack)
        print("running in the background (a supervisor restarts what dies); stop with: "
              "./runMe.sh down")
        return 0
    return supervise(stack, project)


@dataclass
class Beside:
    """A model served beside the stack's first: its engine's port and memory share."""
    resolved: Resolved
    port: int
    share: float
    weights: Optional[Path]


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
    env["MMS_LOAD_BOARD"] = str(board.board_dir())  # where it asks for on-demand models
    env.setdefault("USAGE_RETENTION_DAYS", str(resolved.settings.USAGE_RETENTION_DAYS))
    argv = [sys.executable, "-m", "vllm_mms.proxy.gateway", "--config", str(generated / CONFIG_FILE),
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(resolved.proxy_workers)]
    return spawn("proxy", argv, env, logs)


def engine_process(resolved: Resolved, engine_python: Path, weights: Optional[Path],
                   engine_key: str, logs: Path, port: int, replica: int = 1,
                   beside: bool = False, share: float = 0.0,
                   cores: Optional[tuple[int, int]] = None) -> subprocess.Popen:
    """Engine replica `replica` of resolved.replicas; its log is engine.log (replica 1) or
    engine-K.log (engine-NAME.log for a model `beside` the first). Replicas split the
    memory share; `share`: this engine's --gpu-memory-utilization when several models run.
    `cores`: (k, n): the k-th of n engines on this machine, each bound to its own cores."""
    label = service_name("engine", replica, resolved.name if beside else "")
    base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    base_env.update({"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
    env = serve.engine_environment(resolved, engine_key, base_env)
    if cores is None and resolved.replicas > 1:
        cores = (replica, resolved.replicas)
    if cores and cores[1] > 1 and env.get("VLLM_CPU_OMP_THREADS_BIND", "auto") == "auto":
        env["VLLM_CPU_OMP_THREADS_BIND"] = replicas.cpu_binding(*cores) or "auto"
    argv = serve.engine_argv(resolved, host="127.0.0.1", port=port,
                              cpu_python=str(engine_python), weights=weights,
                              sharing=resolved.replicas, utilization=share or None)
    (logs / f"{label}.argv.json").write_text(json.dumps(argv) + "\n")
    return spawn(label, argv, env, logs)


def start_processes(resolved: Resolved, engine_python: Path, weights: Optional[Path],
                    generated: Path, logs: Path, engine_ports: list[int],
                    beside: Sequence[Beside] = (), share: float = 0.0
                    ) -> tuple[Stack, dict[str, subprocess.Popen]]:
    """The engines (one per port, then one per model beside the first) and the proxy,
    recorded in the stack file."""
    key = serve.internal_api_key(resolved)
    procs: dict[str, subprocess.Popen] = {}
    engines = []
    count = len(engine_ports) + len(beside)
    for k, port in enumerate(engine_ports, 1):
        name = service_name("engine", k)
        procs[name] = engine_process(resolved, engine_python, weights, key, logs, port,
                                     replica=k, share=share, cores=(k, count))
        engines.append(Service("engine", k, procs[name].pid, port, share=share))
    for k, other in enumerate(beside, len(engine_ports) + 1):
        name = service_name("engine", 1, other.resolved.name)
        procs[name] = engine_process(other.resolved, engine_python, other.weights, key, logs,
                                     other.port, beside=True, share=other.share,
                                     cores=(k, count))
        engines.append(Service("engine", 1, procs[name].pid, other.port,
                               model=other.resolved.name, share=other.share))
    port = resolved.settings.LITELLM_PORT
    procs["proxy"] = proxy_process(resolved, generated, key, logs, port)
    proxy = Service("proxy", 1, procs["proxy"].pid, port)
    stack = Stack(model=resolved.name, services=[engines[0], proxy, *engines[1:]],
                  log_dir=str(logs), started=time.time())
    stack.save()
    print(f"logs: {', '.join(f'{logs}/{name}.log' for name in procs)}", file=sys.stderr,
          flush=True)
    return stack, procs


def print_ready(models: Union[Resolved, Sequence[Resolved]], stack: Stack) -> None:
    models = [models] if isinstance(models, Resolved) else list(models)
    resolved = models[0]
    key_hint = ("sk-FAKE" if resolved.settings.LITELLM_MASTER_KEY == "sk-FAKE"
                else "$LITELLM_MASTER_KEY")
    base = f"http://127.0.0.1:{stack.proxy_port}"
    for k, model in enumerate(models):
        print(f"ready: {model.name} (model ids: "
              f"{', '.join(render.served_names(model, first=k == 0))})")
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
    """Start the dead service again on its port, with the key the others hold (and, for an
    engine, its memory share and cores)."""
    model = stack.model_of(dead) if dead.role == "engine" else stack.model
    # As many replicas as the stack runs, however that number was given (--replicas).
    resolved = resolve(project, model,
                       {**os.environ, "REPLICAS": str(len(stack.engines_of(model)))})
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

        weights = weights_dir(resolved.model.local_weights) if resolved.model.local_weights \
            else None
        engines = stack.engines
        proc = engine_process(resolved, bootstrap.ensure_env("engine"), weights, key, logs,
                              dead.port, replica=dead.replica, beside=bool(dead.model),
                              share=dead.share,
                              cores=(engines.index(dead) + 1, len(engines)))
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
    loader = None
    if stack.on_demand:
        from .ondemand import Loader

        settings = global_settings(project)
        loader = Loader(project, settings.ON_DEMAND_TTL, settings.LOAD_TIMEOUT)
    code = 0
    while stopping["signal"] is None:
        # `switch` and restarts replace processes and record them in the stack file: follow it.
        current = Stack.load()
        if current is None:  # `down` ran
            return 0
        stack = current
        reap()
        if loader is not None:
            try:
                loader.tick(stack)
            except Exception as exc:  # noqa: BLE001 - say why, go on serving the others
                print(f"on-demand: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        for service in stack.services:
            if alive(service.pid) or stack.on_demand_of(service.model):
                continue  # an on-demand engine that dies is the loader's (failed, unloaded)
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
