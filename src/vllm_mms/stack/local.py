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
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .. import bootstrap, paths
from ..config import schema
from ..config.resolve import Project, Resolved, resolve
from ..engine import fit, serve
from ..errors import UserError
from . import replicas
from .container import migrate_store, proxy_environment
from .render import CONFIG_FILE, MODELS_FILE, render

STOP_GRACE_SECONDS = 15.0


def engine_name(replica: int) -> str:
    """The service (and log) name of engine replica 1, 2, ...: engine, engine-2, ..."""
    return "engine" if replica == 1 else f"engine-{replica}"


def replica_of(name: str) -> int:
    """The inverse of engine_name."""
    return 1 if name == "engine" else int(name.split("-")[1])


@dataclass
class Stack:
    model: str
    engine_pid: int
    proxy_pid: int
    engine_port: int
    proxy_port: int
    log_dir: str
    started: float
    supervisor_pid: int = 0   # detached mode: the process that restarts what dies
    replicas: list[list[int]] = field(default_factory=list)  # [pid, port] of engines 2..N

    @property
    def pids(self) -> list[int]:
        return [self.proxy_pid, self.engine_pid, *(pid for pid, _ in self.replicas)]

    def services(self) -> list[tuple[str, int, int]]:
        """(name, pid, port) of every process: the proxy, engine, engine-2, ..."""
        return [("engine", self.engine_pid, self.engine_port),
                ("proxy", self.proxy_pid, self.proxy_port),
                *((engine_name(k), pid, port) for k, (pid, port) in enumerate(self.replicas, 2))]

    def set_pid(self, name: str, pid: int) -> None:
        if name == "engine":
            self.engine_pid = pid
        elif name == "proxy":
            self.proxy_pid = pid
        else:
            self.replicas[replica_of(name) - 2][0] = pid


def health_url(service: str, port: int) -> str:
    """What says a service of the stack is up: the proxy's liveliness, an engine's /health."""
    path = "/health/liveliness" if service == "proxy" else "/health"
    return f"http://127.0.0.1:{port}{path}"


def stack_file() -> Path:
    return paths.state_dir() / "stack.json"


def read_stack() -> Optional[Stack]:
    try:
        return Stack(**json.loads(stack_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) is not alive.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on right now, on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status == 200
    except (OSError, urllib.error.HTTPError, ValueError):
        return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ----------------------------------------------------------------------------- stop

def terminate(pids: list[int], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM each process group, wait up to `grace` seconds, then SIGKILL what is left."""
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        _reap()
        time.sleep(0.2)
    for pid in pids:
        if alive(pid):
            _signal_group(pid, signal.SIGKILL)
    _reap()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # each child leads its own session: this reaches its workers too
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def stop_local(quiet: bool = True) -> bool:
    stack = read_stack()
    if stack is None:
        return False
    if stack.supervisor_pid and alive(stack.supervisor_pid):
        terminate([stack.supervisor_pid], grace=5)  # first, or it would restart what we stop
    running = [p for p in stack.pids if alive(p)]
    if running:
        if not quiet:
            print(f"stopping local stack ({stack.model}): pids {', '.join(map(str, running))}")
        terminate(running)
    stack_file().unlink(missing_ok=True)
    if not quiet:
        print("stopped" if running else "local stack was not running (stale state removed)")
    return True


# ----------------------------------------------------------------------------- start

def _progress(label: str) -> Callable[[str], None]:
    tty = sys.stderr.isatty()
    start = time.monotonic()
    last = [-10.0]

    def update(phase: str) -> None:
        elapsed = time.monotonic() - start
        if tty:
            sys.stderr.write(f"\r\033[K{label}: {phase} ... {elapsed:4.0f}s")
            sys.stderr.flush()
        elif elapsed - last[0] >= 10:
            print(f"{label}: {phase} ... {elapsed:.0f}s", file=sys.stderr, flush=True)
            last[0] = elapsed

    return update


def wait_healthy(stack: Stack, procs: dict[str, subprocess.Popen], deadline_s: float) -> None:
    logs = Path(stack.log_dir)
    checks = [(name, health_url(name, port)) for name, _, port in stack.services()]
    update = _progress("starting")
    deadline = time.monotonic() + deadline_s
    pending = list(checks)
    while pending:
        name, url = pending[0]
        for proc_name, proc in procs.items():
            if proc.poll() is not None:
                raise UserError(f"the {proc_name} exited (code {proc.returncode}) while starting; "
                                f"last lines of {logs / (proc_name + '.log')}:\n"
                                f"{tail(logs / (proc_name + '.log'))}")
        if http_ok(url):
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise UserError(f"the {name} was not healthy after {deadline_s:.0f}s "
                            f"(MMS_START_TIMEOUT); see {logs / (name + '.log')}")
        update(f"waiting for the {name} ({'starting' if name == 'proxy' else 'loading the model'})")
        time.sleep(1)
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")


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
    existing = read_stack()
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
    generated = state / "generated_configs"
    # Replica 1 on VLLM_PORT, the others on free ports.
    engine_ports = [settings.VLLM_PORT, *(free_port() for _ in range(resolved.replicas - 1))]
    render(project, resolved, generated,
           api_base=[f"http://127.0.0.1:{port}/v1" for port in engine_ports])
    migrate_store()
    stack, procs = launch(resolved, engine_python, weights, generated, logs, engine_ports)
    try:
        wait_healthy(stack, procs, float(os.environ.get("MMS_START_TIMEOUT", "600")))
    except BaseException:
        terminate(stack.pids)
        stack_file().unlink(missing_ok=True)
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
    stack_file().write_text(json.dumps(asdict(stack)) + "\n")


def spawn(label: str, argv: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen:
    """Start one supervised process in its own session (so a stop reaches its workers),
    output appended to logs/<label>.log."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{label}.log", "ab") as log_handle:
        return subprocess.Popen(argv, env=env, stdout=log_handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


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
    label = engine_name(replica)
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


def launch(resolved: Resolved, engine_python: Path, weights: Optional[Path], generated: Path,
           logs: Path, engine_ports: list[int]) -> tuple[Stack, dict[str, subprocess.Popen]]:
    settings = resolved.settings
    key = serve.internal_api_key(resolved)
    procs = {engine_name(k):
             engine_process(resolved, engine_python, weights, key, logs, port, replica=k)
             for k, port in enumerate(engine_ports, 1)}
    procs["proxy"] = proxy_process(resolved, generated, key, logs, settings.LITELLM_PORT)
    stack = Stack(model=resolved.name, engine_pid=procs["engine"].pid,
                  proxy_pid=procs["proxy"].pid, engine_port=engine_ports[0],
                  proxy_port=settings.LITELLM_PORT, log_dir=str(logs), started=time.time(),
                  replicas=[[procs[engine_name(k)].pid, port]
                            for k, port in enumerate(engine_ports[1:], 2)])
    stack_file().parent.mkdir(parents=True, exist_ok=True)
    stack_file().write_text(json.dumps(asdict(stack)) + "\n")
    print(f"logs: {', '.join(f'{logs}/{name}.log' for name in procs)}", file=sys.stderr,
          flush=True)
    return stack, procs


def print_ready(resolved: Resolved, stack: Stack) -> None:
    key_hint = ("sk-FAKE" if resolved.settings.LITELLM_MASTER_KEY == "sk-FAKE"
                else "$LITELLM_MASTER_KEY")
    base = f"http://127.0.0.1:{stack.proxy_port}"
    print(f"ready: {resolved.name} (model ids: {', '.join(resolved.model_names)})")
    print(f"  proxy (OpenAI + Anthropic API): {base}/v1    key: {key_hint}")
    for name, _, port in stack.services():
        if name != "proxy":
            print(f"  {name + ' (internal):':<32}http://127.0.0.1:{port}")
    print(f"  logs:                           {stack.log_dir}")
    print("try:")
    print(f"  curl {base}/v1/chat/completions -H 'Authorization: Bearer {key_hint}' "
          f"-H 'Content-Type: application/json' "
          f"-d '{{\"model\": \"{resolved.name}\", \"messages\": [{{\"role\": \"user\", "
          f"\"content\": \"What is the capital of France?\"}}]}}'", flush=True)


RESTART_LIMIT = 5            # restarts of one service ...
RESTART_WINDOW_S = 600.0     # ... within this window, then the supervisor gives up


def process_env(pid: int, name: str) -> Optional[str]:
    """One variable of a running process's environment (ours: same user), or None."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in raw.split(b"\0"):
        if item.startswith(name.encode() + b"="):
            return item.split(b"=", 1)[1].decode()
    return None


def restart(stack: Stack, name: str, project: Project) -> Stack:
    """Start the dead service again on its port, with the key the others hold."""
    # As many replicas as the stack runs, however that number was given (--replicas).
    resolved = resolve(project, stack.model,
                       {**os.environ, "REPLICAS": str(1 + len(stack.replicas))})
    logs = Path(stack.log_dir)
    ports = {service: (pid, port) for service, pid, port in stack.services()}
    dead, port = ports[name]
    _signal_group(dead, signal.SIGKILL)  # its workers (vLLM's engine core) must not linger
    _reap()
    keys = (process_env(pid, "VLLM_API_KEY") for service, (pid, _) in ports.items()
            if service != name)
    key = next((k for k in keys if k), None) or serve.internal_api_key(resolved)
    with open(logs / f"{name}.log", "a") as handle:
        handle.write(f"=== supervisor: the {name} exited; restarting it ===\n")
    if name == "proxy":
        proc = proxy_process(resolved, logs.parent / "generated_configs", key, logs, port)
    else:
        from ..engine.prepare_model import weights_dir

        weights = weights_dir() if resolved.model.local_weights else None
        proc = engine_process(resolved, bootstrap.ensure_env("engine"), weights, key, logs,
                              port, replica=replica_of(name))
    stack.set_pid(name, proc.pid)
    stack_file().write_text(json.dumps(asdict(stack)) + "\n")
    return stack


def supervise(stack: Stack, project: Optional[Project] = None, foreground: bool = True) -> int:
    """Restart a service that dies (up to RESTART_LIMIT times in RESTART_WINDOW_S); Ctrl-C or
    SIGTERM stops everything (foreground) or just the supervisor (detached: `down` does it)."""
    stopping: dict[str, Optional[int]] = {"signal": None}

    def on_signal(signum: int, _frame: object) -> None:
        stopping["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if project is None:
        project = Project(Path(os.environ.get("MMS_PROJECT_DIR") or paths.ROOT))
    if foreground:
        print("serving in the foreground (a service that dies is restarted); Ctrl-C stops "
              "everything", flush=True)
    restarts: dict[str, list[float]] = {name: [] for name, _, _ in stack.services()}
    code = 0
    while stopping["signal"] is None:
        # `switch` and restarts replace processes and record them in the stack file: follow it.
        current = read_stack()
        if current is None:  # `down` ran
            return 0
        stack = current
        _reap()
        for name, pid, _ in stack.services():
            if alive(pid):
                continue
            now = time.monotonic()
            restarts[name] = [t for t in restarts.get(name, []) if now - t < RESTART_WINDOW_S] + [now]
            if len(restarts[name]) > RESTART_LIMIT:
                print(f"the {name} died {RESTART_LIMIT + 1} times in {RESTART_WINDOW_S:.0f}s; "
                      f"stopping the stack. Last lines of its log:\n"
                      f"{tail(Path(stack.log_dir) / (name + '.log'))}", file=sys.stderr, flush=True)
                code = 1
                stopping["signal"] = -1
                break
            print(f"the {name} (pid {pid}) exited; restarting it", file=sys.stderr, flush=True)
            try:
                stack = restart(stack, name, project)
            except Exception as exc:  # noqa: BLE001 - say why, try again next round
                print(f"restarting the {name} failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)
        time.sleep(0.5)
    if not foreground and stopping["signal"] != -1:
        return 0  # detached: `down` stops the services itself
    print("stopping ...", file=sys.stderr, flush=True)
    terminate(stack.pids)
    stack_file().unlink(missing_ok=True)
    print("stopped", file=sys.stderr)
    return code
