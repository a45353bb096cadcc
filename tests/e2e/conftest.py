"""End-to-end fixtures: the real local stack (vLLM CPU + LiteLLM, started once per session
through ./runMe.sh on free ports), and LiteLLM proxies in front of a recording upstream."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from vllm_mms import environment
from vllm_mms.config.resolve import Project, resolve
from vllm_mms.stack import local, processes
from vllm_mms.stack.render import render

from ..conftest import REAL_CACHE, ROOT, SETTING_NAMES
from .upstream import RecordingUpstream

MASTER_KEY = "sk-e2e-master-key-7f3a"
# Secrets the stacks carry: none of them may show up in logs, generated files, the usage
# table or a command line (test_secret_canaries.py).
ENGINE_KEY_CANARY = "sk-canary-engine-5d1e9b"
HF_TOKEN_CANARY = "hf_canaryToken4c7a2f"


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


free_port = processes.free_port


def copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True)
    shutil.copytree(ROOT / "models", dest / "models")
    shutil.copy(ROOT / "vars.env", dest / "vars.env")
    shutil.copy(ROOT / "litellm_config.template.yaml", dest / "litellm_config.template.yaml")
    (dest / "secrets").mkdir()
    return dest


def wait_for(url: str, deadline_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was up")
        if processes.http_ok(url):
            return
        time.sleep(0.3)
    raise TimeoutError(url)


@dataclass
class Stack:
    base_url: str
    engine_url: str
    key: str
    env: dict[str, str]
    state_dir: Path
    cold_start_s: float

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"


def start_stack(base: Path, model: str = "smollm2-135m-cpu",
                extra_models: dict[str, str] | None = None,
                extra_env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                beside: tuple[str, ...] = ()) -> Stack:
    """./runMe.sh --local MODEL [BESIDE ...] -d [args] on free ports, in its own state
    directory and project copy."""
    project = copy_project(base / "project")
    for name, text in (extra_models or {}).items():
        (project / "models" / f"{name}.yml").write_text(text)
    (project / "secrets" / "LITELLM_MASTER_KEY").write_text(MASTER_KEY + "\n")
    (project / "secrets" / "VLLM_API_KEY").write_text(ENGINE_KEY_CANARY + "\n")
    (project / "secrets" / "HF_TOKEN").write_text(HF_TOKEN_CANARY + "\n")
    proxy_port, engine_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update({"HOME": str(base / "home"), "MMS_CACHE_DIR": str(REAL_CACHE),
                "MMS_STATE_DIR": str(base / "state"), "MMS_PROJECT_DIR": str(project),
                "LITELLM_PORT": str(proxy_port), "VLLM_PORT": str(engine_port),
                **(extra_env or {})})
    started = time.monotonic()
    proc = subprocess.run([str(ROOT / "runMe.sh"), "--local", model, *beside, "-d", *args], env=env,
                          capture_output=True, text=True, timeout=900)
    cold = time.monotonic() - started
    if proc.returncode != 0:
        logs = base / "state" / "logs"
        detail = "\n".join(f"--- {p.name}\n{processes.tail(p, 40)}" for p in sorted(logs.glob("*.log")))
        pytest.fail(f"./runMe.sh --local failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{detail}")
    print(f"\n[e2e] local stack ({model}) ready in {cold:.1f}s (proxy :{proxy_port}, engine :{engine_port})")
    return Stack(base_url=f"http://127.0.0.1:{proxy_port}", engine_url=f"http://127.0.0.1:{engine_port}",
                 key=MASTER_KEY, env=env, state_dir=base / "state", cold_start_s=cold)


def stop_stack(stack: Stack) -> None:
    subprocess.run([str(ROOT / "runMe.sh"), "down"], env=stack.env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("stack"))
    yield running
    stop_stack(running)


@dataclass
class RecordingProxy:
    base_url: str
    upstream: Any  # RecordingUpstream, ScriptedEngine
    key: str
    log: Path
    proc: subprocess.Popen | None = None

    def chat(self, content: str = "hi") -> httpx.Response:
        """One chat request to the recorder model with the proxy's key."""
        return httpx.post(f"{self.base_url}/v1/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {self.key}"},
                          json={"model": "recorder",
                                "messages": [{"role": "user", "content": content}]})

    def stop(self) -> None:
        """Free its memory early (the factory stops any left at the end of the session)."""
        if self.proc is not None and self.proc.poll() is None:
            processes.terminate([self.proc.pid], grace=5)


RECORDING_MODEL = """\
description: recording test model
context_length: 4096
command: vllm serve test/recorder --max-model-len 4096
env: {}
litellm:
%s
"""


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def redis_url() -> str:
    """The test Redis (MMS_TEST_REDIS_URL); required under CI=true, else a skip."""
    url = environment.get("MMS_TEST_REDIS_URL")
    if not redis_reachable(url):
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI and unreachable at {url}")
        pytest.skip(f"Redis unreachable at {url} (set MMS_TEST_REDIS_URL)")
    return url


def several_workers(vars_env: str, workers: int, redis_url: str) -> str:
    """MMS_TEST_PROXY_WORKERS > 1: the proxy runs that many workers, which need a shared
    Redis for their limits; one without PROXY_REDIS_URL gets the test Redis, in a database
    of its own (a fresh one per proxy: counters of one test never meet another's)."""
    if workers <= 1:
        return vars_env
    if "PROXY_REDIS_URL=" not in vars_env:
        vars_env += f"PROXY_REDIS_URL={fresh_redis_db(redis_url)}\n"
    return vars_env + f"PROXY_WORKERS={workers}\n"


_redis_dbs = itertools.cycle(range(1, 16))


def fresh_redis_db(url: str) -> str:
    """The test Redis URL on the next database number (1-15, in turn), flushed: proxies
    started one after the other never share counters."""
    import redis

    base = url.rsplit("/", 1)[0] if url.count("/") > 2 else url
    db_url = f"{base}/{next(_redis_dbs)}"
    redis.Redis.from_url(db_url).flushdb()
    return db_url


@pytest.fixture(scope="session")
def recording_proxy_factory(tmp_path_factory):
    """Start a real LiteLLM proxy (our config + hooks) in front of a recording upstream;
    with MMS_TEST_PROXY_WORKERS > 1, several workers sharing their limits through Redis."""
    started: list[tuple[subprocess.Popen, RecordingUpstream]] = []
    redis_url = environment.get("MMS_TEST_REDIS_URL")
    workers = environment.get("MMS_TEST_PROXY_WORKERS")

    def start(litellm_section: str, vars_env: str = "", env: dict[str, str] | None = None,
              master_key: str = MASTER_KEY) -> RecordingProxy:
        vars_env = several_workers(vars_env, workers, redis_url)
        upstream = RecordingUpstream().__enter__()
        started.append(upstream)
        return start_proxy(tmp_path_factory.mktemp("recording"), "recorder", upstream, started,
                           {"recorder": RECORDING_MODEL % litellm_section}, vars_env, env,
                           master_key)

    yield start
    stop_proxies(started)


def start_proxy(base: Path, model: str, upstream, started: list, model_files: dict[str, str],
                vars_env: str = "", env: dict[str, str] | None = None,
                master_key: str = MASTER_KEY) -> RecordingProxy:
    """A real LiteLLM proxy (our config and hooks, rendered for catalog model `model`, or one
    in `model_files`) in front of `upstream` (anything with a `port`)."""
    project = copy_project(base / "project")
    for name, text in model_files.items():
        (project / "models" / f"{name}.yml").write_text(text)
    (project / "vars.env").write_text(vars_env)
    resolved = resolve(Project(project), model, environ={"LITELLM_MASTER_KEY": master_key})
    generated = base / "generated"
    render(Project(project), resolved, generated, api_base=f"http://127.0.0.1:{upstream.port}/v1")
    port = free_port()
    env = {"MMS_STATE_DIR": str(base / "state"), **(env or {})}
    proc = local.proxy_process(resolved, generated, "sk-upstream-key", base / "logs", port, env)
    started.append(proc)
    wait_for(f"http://127.0.0.1:{port}/health/liveliness", 120, proc)
    return RecordingProxy(f"http://127.0.0.1:{port}", upstream, master_key,
                          base / "logs" / "proxy.log", proc)


def stop_proxies(started: list) -> None:
    """Stop what start_proxy started: proxy processes and upstreams (context managers)."""
    for item in started:
        if isinstance(item, subprocess.Popen):
            processes.terminate([item.pid], grace=5)
        else:
            item.__exit__(None, None, None)
