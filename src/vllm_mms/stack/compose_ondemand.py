"""On-demand models in compose mode: the same Loader as local mode (stack/ondemand.py), run by
a supervisor process on the host, with engine containers instead of engine processes.

Why on the host: starting a container takes the Docker socket, and a container holding the
socket is root on the host. So the proxy container only writes its wishes on the load board,
a host directory bind-mounted into it (MMS_LOAD_BOARD), and this process — started by
`./runMe.sh NAME --on-demand a,b`, stopped by `./runMe.sh down` — does what local mode's
supervisor does: `docker compose up -d` of a model's engine service (defined in the models'
override file under the `on-demand` profile, so a plain `up` does not start it), its health
from Docker's health check, its load from its own metrics, `docker compose stop` to unload.

Its state is a stack file of its own (compose-stack.json): the resident engines with their
shares, the on-demand models, the memory budget and the compose command; local mode's
commands never mistake it for a local stack.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from .. import paths
from ..config.resolve import Project, global_settings
from ..engine.fit import SetPlan
from ..proxy import board
from .compose import ENGINE_CONTAINER, model_service
from .ondemand import BUSY, Loader
from .processes import alive, spawn
from .state import OnDemand, Service, Stack

ON_DEMAND_PROFILE = "on-demand"
BOARD_IN_CONTAINER = "/app/loads"   # where the proxy container sees the load board
ENGINE_PORT = 8000                  # an engine container's port, inside the compose network


@dataclass
class ComposeStack(Stack):
    """What the compose supervisor needs: Stack's fields, plus the compose command (with
    every -f file) that starts and stops the engine services."""
    compose: list[str] = field(default_factory=list)

    @staticmethod
    def path() -> Path:
        return paths.state_dir() / "compose-stack.json"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ComposeStack":
        stack = super().from_dict(data)
        assert isinstance(stack, ComposeStack)
        stack.compose = [str(a) for a in data.get("compose", [])]
        return stack


def container_of(model: str) -> str:
    return f"{ENGINE_CONTAINER}-{model}"


def _docker(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(args, 1, "", str(exc))


class ContainerEngines:
    """Compose mode's engines: the engine services of the on-demand models."""

    def __init__(self, compose: list[str]) -> None:
        self.compose = compose

    def start(self, stack: Stack, wanted: OnDemand) -> Service:
        # the profile enabled and the service named: only that engine starts
        done = _docker([*self.compose, "--profile", ON_DEMAND_PROFILE, "up", "-d", "--no-deps",
                        model_service(wanted.model)], timeout=600)
        if done.returncode != 0:
            print(f"on-demand: starting {model_service(wanted.model)} failed: "
                  f"{(done.stderr or done.stdout).strip()[-300:]}", flush=True)
        return Service("engine", 1, self._pid(wanted.model), ENGINE_PORT, model=wanted.model,
                       share=wanted.share)

    def _state(self, model: str) -> dict[str, Any]:
        out = _docker(["docker", "inspect", "--format", "{{json .State}}", container_of(model)])
        try:
            return json.loads(out.stdout) if out.returncode == 0 else {}
        except ValueError:
            return {}

    def _pid(self, model: str) -> int:
        return int(self._state(model).get("Pid") or 0)

    def running(self, engine: Service) -> bool:
        return self._state(engine.model).get("Status") == "running"

    def healthy(self, engine: Service) -> bool:
        return (self._state(engine.model).get("Health") or {}).get("Status") == "healthy"

    def metrics(self, engine: Service) -> Optional[dict[str, float]]:
        from ..ops.status import ENGINE_METRICS_READ, parse_metrics

        out = _docker(["docker", "exec", container_of(engine.model), "python3", "-c",
                       ENGINE_METRICS_READ], timeout=30)
        if out.returncode != 0:
            return None
        found = parse_metrics(out.stdout)
        return {name: found.get(name, 0.0) for name in BUSY}

    def last_log_line(self, stack: Stack, engine: Service) -> str:
        out = _docker(["docker", "logs", "--tail", "20", container_of(engine.model)])
        lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def stop(self, engine: Service) -> None:
        _docker([*self.compose, "--profile", ON_DEMAND_PROFILE, "stop",
                 model_service(engine.model)], timeout=120)

    def where(self, engine: Service) -> str:
        return f"container {container_of(engine.model)}"


def stack_for(names: Sequence[str], on_demand: Sequence[str], plan: SetPlan,
              compose: list[str], proxy_port: int) -> ComposeStack:
    """The compose supervisor's state for the set `names` (the resident models first, then
    the `on_demand` ones) with fit's plan: the resident engines hold their shares from the
    start, the on-demand ones when loaded."""
    services = [Service("engine", 1, 0, ENGINE_PORT, model=name if i else "",
                        share=plan.shares[i])
                for i, name in enumerate(names) if name not in on_demand]
    services.append(Service("proxy", 1, 0, proxy_port))
    return ComposeStack(
        model=names[0], services=services, log_dir=str(paths.state_dir() / "logs"),
        started=time.time(), budget=plan.available, share_unit=plan.per_device,
        on_demand=[OnDemand(name, ENGINE_PORT, plan.shares[i], plan.needs[i])
                   for i, name in enumerate(names) if name in on_demand],
        compose=compose)


def start_supervisor(stack: ComposeStack, compose_env: dict[str, str]) -> None:
    """The host process that loads and unloads the on-demand models (`supervise-compose`);
    `compose_env`: what compose must see (MODEL, the checkpoint to mount, the settings)."""
    logs = Path(stack.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    stack.save()
    env = {**os.environ, **compose_env, "PYTHONPATH": str(paths.ROOT / "src")}
    proc = spawn("compose-supervisor", [sys.executable, "-m", "vllm_mms", "supervise-compose"],
                 env, logs)
    stack.supervisor_pid = proc.pid
    stack.save()


def stop_supervisor(quiet: bool = True) -> bool:
    """`down`: the compose supervisor goes first (or it would start what compose stops)."""
    stack = ComposeStack.load()
    if stack is None:
        ComposeStack.path().unlink(missing_ok=True)
        return False
    if stack.supervisor_pid and alive(stack.supervisor_pid):
        os.kill(stack.supervisor_pid, signal.SIGTERM)
        if not quiet:
            print(f"stopped the on-demand supervisor (pid {stack.supervisor_pid})")
    ComposeStack.path().unlink(missing_ok=True)
    return True


def supervise(project: Project, interval: float = 1.0) -> int:
    """One Loader round a second while this process is the stack's supervisor; it ends when
    `down` removes the stack file (or SIGTERM)."""
    settings = global_settings(project)
    stack = ComposeStack.load()
    if stack is None:
        return 1
    loader = Loader(project, settings.ON_DEMAND_TTL, settings.LOAD_TIMEOUT,
                    engines=ContainerEngines(stack.compose))  # type: ignore[arg-type]
    board.reset()
    print(f"compose supervisor: on-demand models {', '.join(o.model for o in stack.on_demand)}",
          flush=True)
    while True:
        stack = ComposeStack.load()
        if stack is None or stack.supervisor_pid not in (0, os.getpid()):
            return 0
        loader.tick(stack)
        time.sleep(interval)
