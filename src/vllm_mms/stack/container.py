"""Compose mode: the two container entrypoints and the engine health check.

The engine container renders the configuration into the shared tmpfs volume, then replaces
itself with vLLM (os.execvpe: vLLM becomes PID 1 and receives SIGTERM from `docker stop`).
The proxy container waits on the engine's health (compose `depends_on`), reads the rendered
configuration and the internal key from that volume, and replaces itself with the proxy
(LiteLLM behind our route gate, `python3 -m vllm_mms.proxy.gateway`).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Optional

from .. import environment
from ..config.resolve import SERVED_MODEL_NAME, Project, Resolved, resolve
from ..engine import serve
from ..errors import UserError
from ..progress import SYSTEM_CLOCK, Clock, wait_until
from . import cluster, replicas
from .compose import ENGINE_SERVICE, model_service
from .render import CONFIG_FILE, MODELS_FILE, compose_api_bases, render

GENERATED_DIR = environment.get("MMS_GENERATED_DIR")
ENGINE_KEY_FILE = ".engine_api_key"  # on the tmpfs volume only: gone when the stack stops


def _model_name() -> str:
    name = environment.get("MODEL")
    if not name:
        raise UserError("MODEL is not set for the container (./runMe.sh sets it)")
    return name


def engine_entrypoint(project: Project) -> None:
    resolved = resolve(project, _model_name())
    role = os.environ.get("CLUSTER_ROLE", "")
    if role == "worker":  # a Ray worker node (./runMe.sh cluster worker): no config, no key
        cluster.worker_entrypoint(resolved)
    replica = environment.get("MMS_REPLICA")
    key_path = GENERATED_DIR / ENGINE_KEY_FILE
    if replica == 1 and not environment.get("MMS_BESIDE"):
        also = [name.strip() for name in (environment.get("MMS_ALSO_SERVED") or "").split(",")
                if name.strip()]
        others = [(resolve(project, name), f"http://{model_service(name)}:8000/v1")
                  for name in also]
        on_demand = [name.strip() for name in (environment.get("MMS_ON_DEMAND") or "")
                     .split(",") if name.strip()]
        written = render(project, resolved, GENERATED_DIR,
                         api_base=compose_api_bases(resolved.replicas), others=others,
                         on_demand=on_demand)
        # A recreated engine (./runMe.sh switch) keeps the key the running proxy already holds.
        previous = key_path.read_text().strip() if key_path.is_file() else ""
        key = resolved.secrets.get("VLLM_API_KEY") or previous or serve.internal_api_key(resolved)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        print(f"[entrypoint] model {resolved.name}: rendered "
              f"{', '.join(str(p) for p in written.values())}", flush=True)
    else:
        # Replica 1 of the first model renders for all and writes the key they share.
        key = resolved.secrets.get("VLLM_API_KEY") or wait_for_key(key_path)
        print(f"[entrypoint] model {resolved.name}: " + (
            "served beside the first model" if environment.get("MMS_BESIDE")
            else f"replica {replica} of {resolved.replicas}"), flush=True)
    if role == "head":  # the Ray head node (./runMe.sh cluster head) serves for the cluster
        cluster.head_entrypoint(resolved, key)
    port = environment.get("MMS_ENGINE_PORT")
    argv = serve.engine_argv(resolved, host="0.0.0.0", port=port,
                              sharing=replicas.sharing(resolved), weights=served_weights(resolved),
                              utilization=environment.get("MMS_MEMORY_SHARE"))
    env = serve.engine_environment(resolved, key, dict(os.environ))
    print(f"[entrypoint] exec {json.dumps(argv)}", flush=True)
    os.execvpe(argv[0], argv, env)


def served_weights(resolved: Resolved) -> Optional[Path]:
    """A CPU model serves the checkpoint runMe.sh prepared on the host, mounted read-only by
    docker-compose.cpu.yml at MMS_SERVE_WEIGHTS (there is no hub to fetch it from)."""
    if not resolved.model.local_weights:
        return None
    mounted = environment.get("MMS_SERVE_WEIGHTS")
    if not mounted or not (Path(mounted) / "config.json").is_file():
        raise UserError(f"{resolved.name} serves a prepared checkpoint, and none is mounted at "
                        f"{mounted or 'MMS_SERVE_WEIGHTS'}: start it with ./runMe.sh "
                        f"{resolved.name} (it prepares the checkpoint and adds docker-compose.cpu.yml)")
    return Path(mounted)


def wait_for_key(key_path: Path, deadline_s: float = 120, clock: Clock = SYSTEM_CLOCK) -> str:
    """The engine key replica 1 writes for the others."""
    def written() -> bool:
        return key_path.is_file() and bool(key_path.read_text().strip())

    if not wait_until(written, deadline_s, f"[entrypoint] waiting for {key_path} from replica 1",
                      clock=clock):
        raise UserError(f"{key_path} did not appear within {deadline_s:.0f}s: replica 1 "
                        f"(the {ENGINE_SERVICE} service) has not started")
    return key_path.read_text().strip()


def proxy_entrypoint(project: Project) -> None:
    resolved = resolve(project, _model_name())
    workers = resolved.proxy_workers  # PROXY_WORKERS without Redis: refused before anything
    config_path = GENERATED_DIR / CONFIG_FILE
    key_path = GENERATED_DIR / ENGINE_KEY_FILE
    for path in (config_path, key_path):
        if not path.is_file():
            raise UserError(f"{path} is missing: the engine container has not rendered yet")
    port = os.environ.get("LITELLM_PORT_IN_CONTAINER", "4000")
    env = dict(os.environ)
    env.update(proxy_environment(resolved, key_path.read_text(),
                                 GENERATED_DIR / MODELS_FILE))
    env["USAGE_RETENTION_DAYS"] = str(resolved.settings.USAGE_RETENTION_DAYS)
    migrate_store()
    argv = ["python3", "-m", "vllm_mms.proxy.gateway", "--config", str(config_path), "--host", "0.0.0.0",
            "--port", port, "--workers", str(workers)]
    print(f"[proxy] exec {json.dumps(argv)}", flush=True)
    os.execvpe(argv[0], argv, env)


def migrate_store() -> None:
    """Create or upgrade the key/usage schema before the proxy serves (idempotent). A database
    that is not reachable yet is not fatal: the proxy migrates again before its first write."""
    from ..proxy.store import migrate_now

    try:
        migrate_now()
        print("[proxy] key/usage schema ready", file=sys.stderr, flush=True)
    except Exception as exc:  # noqa: BLE001
        print(f"[proxy] key/usage database not reachable yet ({type(exc).__name__}); "
              "usage rows will wait in memory", file=sys.stderr, flush=True)


def proxy_environment(resolved: Resolved, engine_key: str, models_file: Path) -> dict[str, str]:
    """What the LiteLLM process needs. DATABASE_URL is deliberately never set: it would make
    LiteLLM start its Prisma layer, which downloads engines and cannot run offline."""
    env = {
        "LITELLM_MASTER_KEY": resolved.settings.LITELLM_MASTER_KEY,
        "VLLM_API_KEY": engine_key,
        "MMS_MODELS_FILE": str(models_file),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",   # no internet lookup at start
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": os.environ.get("LITELLM_LOG", "INFO"),
    }
    if resolved.settings.PROXY_REDIS_URL:  # the config names it as os.environ/PROXY_REDIS_URL
        env["PROXY_REDIS_URL"] = resolved.settings.PROXY_REDIS_URL
    return env


def healthcheck() -> int:
    """Healthy = the config was rendered and the engine lists the served model."""
    port = environment.get("MMS_ENGINE_PORT")
    config_path = GENERATED_DIR / CONFIG_FILE
    key_path = GENERATED_DIR / ENGINE_KEY_FILE
    if not config_path.is_file() or not key_path.is_file():
        print("unhealthy: generated config missing", file=sys.stderr)
        return 1
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models",
        headers={"Authorization": f"Bearer {key_path.read_text().strip()}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            body = json.load(response)
    except (OSError, ValueError) as exc:
        print(f"unhealthy: engine not answering: {exc}", file=sys.stderr)
        return 1
    ids = [m.get("id") for m in body.get("data", [])]
    if SERVED_MODEL_NAME not in ids:
        print(f"unhealthy: engine serves {ids}, not {SERVED_MODEL_NAME}", file=sys.stderr)
        return 1
    return 0
