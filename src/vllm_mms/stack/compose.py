"""Compose mode's view of Docker: the compose command, the files a model needs, and the state
of our containers read from `docker inspect` (the same with compose v2 and the standalone
docker-compose 1.x, whose `ps` output formats differ)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config.resolve import Resolved
from ..errors import UserError
from ..paths import GENERATED_CONFIGS

BASE_FILE = "docker-compose.yml"
GPU_FILE = "docker-compose.gpu.yml"   # GPU reservation + pinned memory
CPU_FILE = "docker-compose.cpu.yml"   # CPU engine image + the prepared checkpoint
# The services, containers and volume the compose files define, named here once for the code
# (tests/test_static.py checks them against the files).
ENGINE_SERVICE = "vllm-node"          # engine replica k (--replicas) is service vllm-node-k
ENGINE_CONTAINER = "vllm-container"   # and a model served beside the first, vllm-node-NAME
PROXY_SERVICE = "litellm"
PROXY_CONTAINER = "litellm-container"
DB_SERVICE = "litellm_db"
WORKER_SERVICE = "ray-worker"         # docker-compose.cluster.yml: a Ray worker node
GENERATED_VOLUME = GENERATED_CONFIGS  # mounted at paths.CONTAINER_GENERATED_DIR
# `./runMe.sh logs NAME` → service, in the order the stack is shown.
SERVICES = {"engine": ENGINE_SERVICE, "proxy": PROXY_SERVICE, "db": DB_SERVICE}
SERVICE_ORDER = tuple(SERVICES.values())


def compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise UserError("docker compose is not installed; install Docker with the compose plugin, "
                    "or run without Docker: ./runMe.sh --local")


def docker_engine_reachable() -> bool:
    try:
        probe = subprocess.run(["docker", "ps", "-q"], capture_output=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def is_cpu_model(resolved: Resolved) -> bool:
    """CPU catalog models are the ones served from a prepared local checkpoint."""
    return resolved.model.local_weights is not None


def model_files(root: Path, resolved: Resolved) -> list[str]:
    """`-f` arguments for a model: the base file and its device's file."""
    device = CPU_FILE if is_cpu_model(resolved) else GPU_FILE
    return ["-f", str(root / BASE_FILE), "-f", str(root / device)]


def model_environment(resolved: Resolved) -> dict[str, str]:
    """What compose must see besides MODEL: for a CPU model, the checkpoint to mount."""
    env = {"MODEL": resolved.name}
    weights = prepared_weights(resolved)
    if weights is not None:
        env["MMS_WEIGHTS_HOST_DIR"] = str(weights)
    return env


def prepared_weights(resolved: Resolved) -> Optional[Path]:
    """A CPU model's checkpoint, prepared on the host once, as local mode does (converting
    needs vLLM's CPU environment); None for a GPU model (its container reads the hub cache)."""
    if not is_cpu_model(resolved):
        return None
    from .. import bootstrap
    from ..engine.prepare_model import ensure_weights, weights_dir

    ready = weights_dir(resolved.model.local_weights)
    if not (ready / ".complete").exists():
        ready = ensure_weights(bootstrap.ensure_env("engine"), resolved.model.local_weights)
    return ready


def model_service(name: str) -> str:
    """The engine service of a model served beside the first one."""
    return f"{ENGINE_SERVICE}-{name}"


@dataclass(frozen=True)
class Container:
    project: str      # compose's project name (from the directory of the compose file)
    service: str
    name: str
    state: str        # running, restarting, exited, ...
    health: str       # healthy, unhealthy, starting, or "" without a healthcheck
    started_at: str   # RFC 3339, from docker
    pid: int          # of the container's main process on the host (0 when not running)

    @property
    def good(self) -> bool:
        return self.state == "running" and self.health in ("", "healthy")


def parse_inspect(text: str) -> list[Container]:
    """`docker inspect` JSON → our containers, sorted in the stack's order."""
    out = []
    for item in json.loads(text or "[]"):
        labels = (item.get("Config") or {}).get("Labels") or {}
        state = item.get("State") or {}
        out.append(Container(
            project=labels.get("com.docker.compose.project", ""),
            service=labels.get("com.docker.compose.service", "?"),
            name=str(item.get("Name", "")).lstrip("/"),
            state=str(state.get("Status", "?")),
            # a stopped container keeps its last health status: stale, so not shown
            health=str((state.get("Health") or {}).get("Status", ""))
            if state.get("Status") == "running" else "",
            started_at=str(state.get("StartedAt", "")),
            pid=int(state.get("Pid") or 0)))
    rank = {name: i for i, name in enumerate(SERVICE_ORDER)}

    def order(c: Container) -> tuple[int, str]:  # replicas vllm-node-K sort with vllm-node
        base = ENGINE_SERVICE if c.service.startswith(ENGINE_SERVICE) else c.service
        return rank.get(base, len(rank)), c.service

    return sorted(out, key=order)


def project_name(root: Path) -> str:
    """Compose's project name for a checkout: COMPOSE_PROJECT_NAME, else the directory's name
    lowercased with what compose drops removed (both compose versions label containers so)."""
    name = os.environ.get("COMPOSE_PROJECT_NAME") or root.name
    return re.sub(r"[^-_a-z0-9]", "", name.lower())


def containers(compose: list[str]) -> list[Container]:
    """Our stack's containers in any state, replicas from the override file included; []
    when nothing of ours exists. Found by compose's project label rather than `compose ps`,
    which lists only the services of the files it is given (and v2 only running ones)."""
    root = Path(compose[compose.index("-f") + 1]).parent
    try:
        ids = subprocess.run(["docker", "ps", "-a", "-q", "--filter",
                              f"label=com.docker.compose.project={project_name(root)}"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        raise UserError("docker ps did not answer; check the Docker engine") from None
    found = ids.stdout.split()
    if ids.returncode != 0 or not found:
        return []
    inspect = subprocess.run(["docker", "inspect", *found], capture_output=True, text=True,
                             timeout=60)
    return parse_inspect(inspect.stdout) if inspect.returncode == 0 else []


def container_env(name: str) -> Optional[dict[str, str]]:
    """A container's environment, or None when it does not exist."""
    out = subprocess.run(["docker", "inspect", "--format",
                          "{{range .Config.Env}}{{println .}}{{end}}", name],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def remove_generated_volume(project_name: str) -> None:
    """The generated-config volume (a tmpfs) of a stopped stack: `down` keeps named volumes,
    and this one holds nothing worth keeping."""
    found = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project_name}",
         "--filter", f"label=com.docker.compose.volume={GENERATED_VOLUME}"],
        capture_output=True, text=True)
    for volume in found.stdout.split():
        subprocess.run(["docker", "volume", "rm", volume], capture_output=True)
