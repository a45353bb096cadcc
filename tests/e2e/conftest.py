"""End-to-end fixtures: the real local stack (vLLM CPU + LiteLLM, started once per session
through ./runMe.sh on free ports), and LiteLLM proxies in front of a recording upstream."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

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
                extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> Stack:
    """./runMe.sh --local -d [args] on free ports, in its own state directory and project copy."""
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
    proc = subprocess.run([str(ROOT / "runMe.sh"), "--local", model, "-d", *args], env=env,
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
    upstream: RecordingUpstream
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


@pytest.fixture(scope="session")
def recording_proxy_factory(tmp_path_factory):
    """Start a real LiteLLM proxy (our config + hooks) in front of a recording upstream."""
    started: list[tuple[subprocess.Popen, RecordingUpstream]] = []

    def start(litellm_section: str, vars_env: str = "", env: dict[str, str] | None = None,
              master_key: str = MASTER_KEY) -> RecordingProxy:
        base = tmp_path_factory.mktemp("recording")
        project = copy_project(base / "project")
        (project / "models" / "recorder.yml").write_text(RECORDING_MODEL % litellm_section)
        (project / "vars.env").write_text(vars_env)
        upstream = RecordingUpstream().__enter__()
        resolved = resolve(Project(project), "recorder", environ={"LITELLM_MASTER_KEY": master_key})
        generated = base / "generated"
        render(Project(project), resolved, generated,
               api_base=f"http://127.0.0.1:{upstream.port}/v1")
        port = free_port()
        env = {"MMS_STATE_DIR": str(base / "state"), **(env or {})}
        proc = local.proxy_process(resolved, generated, "sk-upstream-key", base / "logs", port, env)
        started.append((proc, upstream))
        wait_for(f"http://127.0.0.1:{port}/health/liveliness", 120, proc)
        return RecordingProxy(f"http://127.0.0.1:{port}", upstream, master_key,
                              base / "logs" / "proxy.log", proc)

    yield start
    for proc, upstream in started:
        processes.terminate([proc.pid], grace=5)
        upstream.__exit__(None, None, None)
