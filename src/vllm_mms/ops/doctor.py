"""`./runMe.sh doctor`: the troubleshooting flow as a command.

One line per check — ok / warn / fail — and for each non-ok the fix. Works whatever the state
of the machine: every check catches its own errors. Exit 1 when any check fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import yaml

from .. import environment, paths
from ..config import schema
from ..config.resolve import Project, global_settings, resolve
from ..errors import UserError
from ..stack.processes import alive, http_ok
from ..stack.render import CONFIG_FILE
from ..stack.state import Stack


@dataclass
class Check:
    status: str  # ok | warn | fail
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name}: {self.detail}"
        return text + (f"\n      fix: {self.fix}" if self.fix and self.status != "ok" else "")


def _docker(*args: str, timeout: float = 20) -> Optional[subprocess.CompletedProcess]:
    try:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def check_python() -> Check:
    version = sys.version.split()[0]
    if sys.version_info < (3, 10):
        return Check("fail", "python", version, "install Python 3.10 or newer")
    return Check("ok", "python", version)


def check_model_files(project: Project) -> list[Check]:
    checks = []
    for name in schema.available_models(project.models_dir):
        try:
            resolve(project, name, environ={})
            checks.append(Check("ok", f"model {name}", "valid"))
        except UserError as exc:
            checks.append(Check("fail", f"model {name}", exc.message,
                                f"edit models/{name}.yml (fields: CONFIGURATION.md)"))
    if not checks:
        checks.append(Check("fail", "models", "no model files in models/", "restore models/"))
    return checks


def check_settings(project: Project) -> Check:
    try:
        settings = global_settings(project)
    except UserError as exc:
        return Check("fail", "settings", exc.message, "fix vars.env or the file in secrets/ named above")
    if settings.LITELLM_MASTER_KEY == "sk-FAKE":
        return Check("warn", "settings", "vars.env, secrets/ and environment valid; the proxy key "
                     "is the default sk-FAKE",
                     "printf '%s' 'sk-long-random' > secrets/LITELLM_MASTER_KEY before exposing it")
    return Check("ok", "settings", "vars.env, secrets/ and environment valid")


def check_docker(local_mode: bool) -> list[Check]:
    if not shutil.which("docker"):
        status = "ok" if local_mode else "fail"
        return [Check(status, "docker", "not installed" + (" (not needed in local mode)"
                                                            if local_mode else ""),
                      "install Docker and the compose plugin, or use ./runMe.sh --local")]
    checks = []
    version = _docker("compose", "version")
    if version and version.returncode == 0:
        checks.append(Check("ok", "docker compose", version.stdout.strip()))
    elif shutil.which("docker-compose"):
        checks.append(Check("ok", "docker compose", "docker-compose (standalone)"))
    else:
        checks.append(Check("ok" if local_mode else "fail", "docker compose", "not available"
                            + (" (not needed in local mode)" if local_mode else ""),
                            "install the docker compose plugin"))
    info = _docker("info", "--format", "{{json .Runtimes}}")
    if info is None or info.returncode != 0:
        checks.append(Check("ok" if local_mode else "fail", "docker engine",
                            "not reachable" + (" (not needed in local mode)" if local_mode else ""),
                            "start Docker: sudo systemctl start docker"))
        return checks
    checks.append(Check("ok", "docker engine", "reachable"))
    if "nvidia" in info.stdout:
        checks.append(Check("ok", "gpu runtime", "nvidia runtime registered with Docker"))
    else:
        checks.append(Check("warn" if local_mode else "fail", "gpu runtime",
                            "no nvidia runtime in `docker info`",
                            "install the NVIDIA Container Toolkit and restart Docker"))
    return checks


def check_local_stack() -> list[Check]:
    stack = Stack.load()
    if stack is None:
        return [Check("warn", "local stack", "not running", "./runMe.sh --local")]
    checks = []
    for service in stack.services:
        label, url = service.name, service.health_url()
        if not alive(service.pid):
            checks.append(Check("fail", label, f"process {service.pid} is gone",
                                f"see {stack.log_dir}/{label}.log, then ./runMe.sh down && "
                                "./runMe.sh --local"))
        elif not http_ok(url):
            checks.append(Check("fail", label, f"running but {url} does not answer",
                                f"see {stack.log_dir}/{label}.log"))
        else:
            checks.append(Check("ok", label, f"healthy at {url.rsplit('/', 1)[0]}"))
    checks.append(_check_generated(paths.generated_dir() / CONFIG_FILE))
    return checks


def _check_generated(path: Path) -> Check:
    try:
        data = yaml.safe_load(path.read_text())
        names = [m["model_name"] for m in data["model_list"]]
        if "{{" in path.read_text() or "vllm_agent" not in names:
            raise ValueError("incomplete")
        return Check("ok", "generated config", f"{path} ({len(names)} model ids)")
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        return Check("fail", "generated config", f"{path}: {type(exc).__name__}",
                     "./runMe.sh render NAME shows what goes wrong")


def check_disk(project: Project) -> Check:
    cache = Path(os.environ.get("HF_CACHE_DIR") or Path.home() / ".cache" / "huggingface")
    probe = cache if cache.exists() else Path.home()
    free_gb = shutil.disk_usage(probe).free / 1e9
    model = environment.get("MODEL")
    need = _weights_gb(project, model) if model else None
    if need is None:
        return Check("ok", "disk", f"{free_gb:.0f} GB free for {probe}")
    if free_gb < need * 1.1:
        return Check("fail", "disk", f"{free_gb:.0f} GB free for {probe}, {model} needs ~{need:.0f} GB",
                     "free space, or point HF_CACHE_DIR at a larger disk")
    return Check("ok", "disk", f"{free_gb:.0f} GB free for {probe} ({model}: ~{need:.0f} GB)")


def check_fit(project: Project, local_mode: bool) -> Check:
    """Would the model that starts next fit? (Not run against a stack already serving it.)"""
    from ..config.resolve import resolve
    from ..engine import fit

    if local_mode and Stack.load() is not None:
        return Check("ok", "memory fit", "a local stack is running (./runMe.sh fit NAME checks another)")
    name = environment.get("MODEL") or (environment.DEFAULT_LOCAL_MODEL if local_mode
                                        else environment.DEFAULT_COMPOSE_MODEL)
    try:
        verdict = fit.check(resolve(project, name))
    except UserError as exc:
        return Check("warn", "memory fit", f"{name}: not checked ({exc.message.splitlines()[0]})")
    if verdict.fits:
        return Check("ok", "memory fit", f"{name}: {verdict.summary}")
    return Check("fail", "memory fit", f"{name}: {verdict.summary}",
                 f"./runMe.sh fit {name} shows the numbers and the changes that would fit")


def _weights_gb(project: Project, name: str) -> Optional[float]:
    try:
        return schema.load_model_file(project.models_dir / f"{name}.yml").weights_gb
    except UserError:
        return None


def check_database() -> Check:
    from ..proxy.store import migrate_now

    try:
        return Check("ok", "database", migrate_now())
    except Exception as exc:  # noqa: BLE001 - any driver error
        return Check("fail", "database", f"unreachable ({type(exc).__name__})",
                     "check MMS_DATABASE_URL, or that the compose database is healthy")


def check_redis(project: Project) -> Optional[Check]:
    """Only when PROXY_REDIS_URL is set. Shown as host:port: the URL may hold a password."""
    import urllib.parse

    try:
        url = global_settings(project).PROXY_REDIS_URL
    except UserError:
        return None  # the settings check reports it
    if not url:
        return None
    parsed = urllib.parse.urlparse(url)
    where = f"{parsed.hostname}:{parsed.port or 6379}"
    try:
        import redis

        redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001 - any connection or auth error
        return Check("warn", "shared limits (Redis)", f"{where} unreachable ({type(exc).__name__}); "
                     "each proxy counts its own limits until it is back",
                     "start Redis or fix PROXY_REDIS_URL (secrets/PROXY_REDIS_URL)")
    return Check("ok", "shared limits (Redis)", f"{where} answers")


def check_compose(compose: list[str]) -> list[Check]:
    """Services' state and health, the rendered config inside the engine, and the network
    from the proxy container to the engine."""
    from ..stack.compose import (
        ENGINE_CONTAINER,
        ENGINE_SERVICE,
        PROXY_CONTAINER,
        SERVICE_ORDER,
        SERVICES,
        containers,
        model_service,
    )
    from ..stack.compose_ondemand import ComposeStack
    from ..stack.processes import alive

    found = {c.service: c for c in containers(compose)}
    if not found:
        return [Check("warn", "compose stack", "nothing is running",
                      "start it: MODEL=NAME ./runMe.sh -d")]
    checks = []
    supervised = ComposeStack.load()
    on_demand = {model_service(o.model) for o in supervised.on_demand} if supervised else set()
    if supervised:
        checks.append(Check("ok", "on-demand supervisor", f"pid {supervised.supervisor_pid}")
                      if supervised.supervisor_pid and alive(supervised.supervisor_pid) else
                      Check("fail", "on-demand supervisor", "not running: on-demand models "
                            "will not load", "start the set again: ./runMe.sh NAME "
                            "--on-demand a,b -d"))
    for service in (*SERVICE_ORDER, *sorted(set(found) - set(SERVICE_ORDER))):
        c = found.get(service)
        if service in on_demand and (c is None or c.state != "running"):
            checks.append(Check("ok", f"service {service}", "not loaded (on demand)"))
            continue
        logs = {compose_name: f"./runMe.sh logs {name}" for name, compose_name in SERVICES.items()}
        hint = ("the engine loads for minutes after start; watch ./runMe.sh logs engine"
                if service.startswith(ENGINE_SERVICE) else logs.get(service, f"docker logs {service}"))
        shown = "missing" if c is None else c.state + (f" ({c.health})" if c.health else "")
        checks.append(Check("ok" if c is not None and c.good else "fail", f"service {service}",
                            shown, hint))
    rendered = _docker("exec", ENGINE_CONTAINER, "test", "-s",
                       str(paths.CONTAINER_GENERATED_DIR / CONFIG_FILE))
    checks.append(Check("ok", "generated config", "present in the engine container")
                  if rendered and rendered.returncode == 0 else
                  Check("fail", "generated config", "missing in the engine container",
                        "./runMe.sh render NAME shows the error without Docker"))
    engine = f"{ENGINE_SERVICE}:8000"  # the engine's port inside the compose network
    network = _docker("exec", PROXY_CONTAINER, "python3", "-c",
                      "import urllib.request; urllib.request.urlopen("
                      f"'http://{engine}/health', timeout=5)")
    checks.append(Check("ok", "proxy → engine", f"http://{engine}/health answers")
                  if network and network.returncode == 0 else
                  Check("fail", "proxy → engine", f"the proxy container cannot reach {engine}",
                        "both services must be on the compose network; docker compose up -d"))
    return checks


def run_doctor(project: Project, local_mode: Optional[bool] = None,
               compose: Optional[list[str]] = None) -> int:
    if local_mode is None:
        local_mode = Stack.load() is not None or not shutil.which("docker")
    print(f"doctor ({'local' if local_mode else 'compose'} mode)")
    steps: list[Callable[[], object]] = [
        check_python, lambda: check_settings(project), lambda: check_model_files(project),
        lambda: check_docker(local_mode), lambda: check_disk(project),
        lambda: check_fit(project, local_mode), lambda: check_redis(project),
    ]
    if local_mode:
        steps += [check_local_stack, check_database]
    elif compose:
        steps.append(lambda: check_compose(compose))
    failed = 0
    for step in steps:
        try:
            result = step()
        except Exception as exc:  # noqa: BLE001 - a check must never crash the doctor
            result = Check("fail", getattr(step, "__name__", "check"), f"{type(exc).__name__}: {exc}")
        for check in result if isinstance(result, list) else [result] if result else []:
            print(check.line())
            failed += check.status == "fail"
    print(f"{failed} check{'s' if failed != 1 else ''} failed" if failed else "all checks passed")
    return 1 if failed else 0

