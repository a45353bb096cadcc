"""Two real CPU engine replicas behind one proxy (`./runMe.sh --local NAME --replicas 2 -d`):
the router splits traffic by the weights, a killed replica costs no client an error after
its cooldown, and it takes traffic again once the supervisor has restarted it. Which replica
served is read from each engine's own counter (vllm:request_success_total)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time

import httpx
import pytest

from vllm_mms.ops.status import engine_metrics
from vllm_mms.stack.processes import http_ok
from vllm_mms.stack.state import Stack

from ..conftest import ROOT
from .conftest import start_stack, stop_stack

BASE = (ROOT / "models" / "smollm2-135m-cpu.yml").read_text()
COOLDOWN_S = 5
# Same weights as the default model; 0.2 of the memory, 0.1 per replica (on the CPU build that
# share holds the weights too: 0.05 would leave no room for the KV cache).
REPLICATED = (BASE.replace('aliases: ["smollm2"]', "aliases: []")
              .replace("--gpu-memory-utilization 0.3", "--gpu-memory-utilization 0.2")
              .replace("litellm:\n", "litellm:\n  routing:\n    strategy: simple-shuffle\n"
                                     f"    weights: [3, 1]\n    cooldown_time: {COOLDOWN_S}\n", 1))
SERVED = "vllm:request_success_total"
REQUESTS = 200   # share of replica 1 expected 75 %; ±10 points is > 3 standard deviations


def served(port: int) -> float:
    """Requests the engine on `port` has finished (-1 when it does not answer)."""
    metrics = engine_metrics(port, [SERVED])
    return -1.0 if metrics is None else metrics.get(SERVED, 0.0)


def chat(stack) -> int:
    try:
        response = httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=60,
                              headers={"Authorization": f"Bearer {stack.key}"},
                              json={"model": "vllm_agent", "max_tokens": 1,
                                    "messages": [{"role": "user", "content": "Hi"}]})
        return response.status_code
    except httpx.HTTPError:
        return 0


def burst(stack, count: int) -> list[int]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda _: chat(stack), range(count)))


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    running = start_stack(tmp_path_factory.mktemp("replicas"), "smollm2-replicas",
                          {"smollm2-replicas": REPLICATED}, args=("--replicas", "2"))
    yield running
    stop_stack(running)


def stack_file(stack) -> Stack:
    state = Stack.load(stack.state_dir / "stack.json")
    assert state is not None
    return state


def test_two_replicas_share_traffic_by_weight_and_survive_a_kill(replicated):
    state = stack_file(replicated)
    assert [s.name for s in state.engines] == ["engine", "engine-2"]
    ports = [s.port for s in state.engines]
    argv = json.loads((replicated.log_dir / "engine-2.argv.json").read_text())
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.1"   # 0.2 split in two
    assert argv[argv.index("--port") + 1] == str(ports[1])

    # 1. The split follows the weights [3, 1].
    before = [served(p) for p in ports]
    statuses = burst(replicated, REQUESTS)
    after = [served(p) for p in ports]
    counts = [a - b for a, b in zip(after, before)]
    share = counts[0] / sum(counts)
    print(f"\n[e2e] {REQUESTS} requests over replicas weighted 3:1: {counts[0]:.0f} / "
          f"{counts[1]:.0f} (replica 1 share {share:.1%}, expected 75% ± 10 points)")
    assert statuses == [200] * REQUESTS
    assert sum(counts) == REQUESTS
    assert 0.65 <= share <= 0.85

    # 2. Replica 2 dies: the router retries on replica 1, then leaves replica 2 out.
    pid2 = state.engines[1].pid
    os.killpg(pid2, signal.SIGKILL)
    killed = time.monotonic()
    during = burst(replicated, 20)
    while time.monotonic() - killed < COOLDOWN_S:
        time.sleep(0.2)
    after_cooldown = burst(replicated, 40)
    print(f"[e2e] replica 2 killed: {during.count(200)}/20 ok right after, "
          f"{after_cooldown.count(200)}/40 ok after the {COOLDOWN_S}s cooldown")
    assert after_cooldown == [200] * 40
    assert during == [200] * 20  # the one retry (num_retries 1 with replicas) covers it

    # 3. The supervisor restarts it on the same port; it takes traffic again.
    deadline = time.monotonic() + 300
    while not http_ok(f"http://127.0.0.1:{ports[1]}/health"):
        assert time.monotonic() < deadline, "replica 2 was not restarted within 300s"
        time.sleep(1)
    back = time.monotonic() - killed
    assert stack_file(replicated).engines[1].pid != pid2
    # Restarted as one of two (the flag is in no environment: the stack file says two).
    argv = json.loads((replicated.log_dir / "engine-2.argv.json").read_text())
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.1"
    start = served(ports[1])
    deadline = time.monotonic() + 60
    rejoined = []
    while served(ports[1]) <= start:
        assert time.monotonic() < deadline, "replica 2 is healthy but gets no traffic"
        rejoined += burst(replicated, 8)
    print(f"[e2e] replica 2 back after {back:.1f}s, serving again after "
          f"{len(rejoined)} more requests (all {sorted(set(rejoined))})")
    assert set(rejoined) == {200}


def test_status_lists_every_replica(replicated):
    import subprocess

    result = subprocess.run([str(ROOT / "runMe.sh"), "status"], env=replicated.env,
                            capture_output=True, text=True, timeout=60)
    state = stack_file(replicated)
    assert f"engine-2: healthy  pid {state.engines[1].pid}  " \
           f"http://127.0.0.1:{state.engines[1].port}" in result.stdout, result.stdout
    assert result.stdout.count("healthy") == 3
