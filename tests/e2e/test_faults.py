"""kill -9 under load, on a stack of its own (started detached, so its supervisor is on
duty): in-flight requests fail fast instead of hanging, the stack reports the service down,
the supervisor brings it back, and requests succeed again. Then the same for the proxy."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import httpx
import pytest

from vllm_mms.stack.processes import alive
from vllm_mms.stack.state import Stack

from ..conftest import ROOT
from .conftest import start_stack, stop_stack


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory):
    running = start_stack(tmp_path_factory.mktemp("faults"))
    yield running
    stop_stack(running)


def pids(stack) -> dict[str, int]:
    """The supervisor's, the engine's and the proxy's pid, from the stack file."""
    state = Stack.load(stack.state_dir / "stack.json")
    assert state is not None
    return {"supervisor_pid": state.supervisor_pid, "engine_pid": state.engines[0].pid,
            "proxy_pid": state.proxy.pid}


def chat(stack, max_tokens: int = 4, timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=timeout,
                      headers={"Authorization": f"Bearer {stack.key}"},
                      json={"model": "smollm2-135m-cpu", "max_tokens": max_tokens,
                            "ignore_eos": True, "messages": [{"role": "user", "content": "Go"}]})


def wait_until_served(stack, deadline_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        try:
            if chat(stack, timeout=30).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"not served again within {deadline_s}s")


def status(stack) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "runMe.sh"), "status"], env=stack.env,
                          capture_output=True, text=True, timeout=60)


def test_supervisor_is_running(fault_stack):
    state = pids(fault_stack)
    assert state["supervisor_pid"] and alive(state["supervisor_pid"])


def test_engine_killed_mid_request(fault_stack):
    before = pids(fault_stack)
    outcome: dict = {}

    def long_request() -> None:
        try:
            outcome["status"] = chat(fault_stack, max_tokens=4000, timeout=600).status_code
        except httpx.HTTPError as exc:
            outcome["status"] = type(exc).__name__
        outcome["at"] = time.monotonic()

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(3)  # decoding by now
    os.kill(before["engine_pid"], signal.SIGKILL)
    killed = time.monotonic()
    worker.join(60)
    assert not worker.is_alive(), "the in-flight request hangs"
    failed_after = outcome["at"] - killed
    assert outcome["status"] != 200 and failed_after < 10, outcome
    down = status(fault_stack)
    assert down.returncode == 1 and "engine:   DOWN" in down.stdout, down.stdout
    recovered = wait_until_served(fault_stack, 240)
    after = pids(fault_stack)
    assert after["engine_pid"] != before["engine_pid"]
    assert after["proxy_pid"] == before["proxy_pid"]
    assert status(fault_stack).returncode == 0
    print(f"\n[faults] engine kill -9: in-flight request failed after {failed_after:.1f}s, "
          f"served again {recovered:.1f}s later")


def test_proxy_killed(fault_stack):
    before = pids(fault_stack)
    os.kill(before["proxy_pid"], signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(httpx.HTTPError):
        chat(fault_stack, timeout=10)
    recovered = wait_until_served(fault_stack, 120)
    after = pids(fault_stack)
    assert after["proxy_pid"] != before["proxy_pid"]
    assert after["engine_pid"] == before["engine_pid"]
    print(f"\n[faults] proxy kill -9: served again {time.monotonic() - killed:.1f}s later "
          f"({recovered:.1f}s of polling)")


def test_down_stops_the_supervisor_too(fault_stack):
    state = pids(fault_stack)
    stop_stack(fault_stack)
    assert not any(alive(state[k]) for k in ("supervisor_pid", "engine_pid", "proxy_pid"))
