"""Per-key priorities: the proxy puts each key's priority on its requests when the engine
schedules by priority, and the real CPU engine (one sequence at a time, a queue) then serves a
high-priority key's request before lower ones that were queued earlier."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import httpx
import pytest

from ..conftest import ROOT
from .conftest import start_proxy, start_stack, stop_proxies, stop_stack
from .test_usage import FAST, create_key
from .upstream import RecordingUpstream

RECORDER = """\
description: recording test model, scheduled by priority
context_length: 4096
command: vllm serve test/recorder --max-model-len 4096 --scheduling-policy priority
env: {}
litellm:
  max_tokens: 64
"""


def chat(base_url: str, key: str, model: str, **fields) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", timeout=300,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}],
                            **fields})


def test_each_keys_priority_is_forwarded_and_a_clients_own_is_not(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'keys.db'}"
    urgent = create_key(url, "urgent", priority=-10)
    plain = create_key(url, "plain")
    started: list = []
    upstream = RecordingUpstream().__enter__()
    started.append(upstream)
    try:
        proxy = start_proxy(tmp_path_factory.mktemp("prio"), "recorder", upstream, started,
                            {"recorder": RECORDER}, env={"MMS_DATABASE_URL": url, **FAST})
        sent = []
        for key, own in ((urgent, None), (urgent, 50), (plain, None), (plain, -100),
                         (proxy.key, -100)):
            fields = {} if own is None else {"priority": own}
            response = chat(proxy.base_url, key, "recorder", **fields)
            assert response.status_code == 200, response.text
            sent.append(upstream.bodies[-1].get("priority"))
        assert sent == [-10, -10, 0, 0, 0]
    finally:
        stop_proxies(started)


# SmolLM2 scheduled by priority, one sequence at a time: every other request waits in the queue.
BASE = (ROOT / "models" / "smollm2-135m-cpu.yml").read_text()
QUEUED_MODEL = (BASE.replace('aliases: ["smollm2"]', "aliases: []")
                .replace("--max-num-seqs 8", "--max-num-seqs 1 --scheduling-policy priority")
                .replace("--gpu-memory-utilization 0.3", "--gpu-memory-utilization 0.1"))


@pytest.fixture(scope="module")
def queued_stack(tmp_path_factory):
    running = start_stack(tmp_path_factory.mktemp("priority"), "smollm2-queued",
                          {"smollm2-queued": QUEUED_MODEL})
    yield running
    stop_stack(running)


def new_key(stack, name: str, *args: str) -> str:
    done = subprocess.run([str(ROOT / "runMe.sh"), "keys", "create", name, *args],
                          env=stack.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[1]


def test_a_high_priority_request_overtakes_the_queue_on_the_real_engine(queued_stack):
    batch, urgent = new_key(queued_stack, "batch"), new_key(queued_stack, "urgent",
                                                            "--priority", "-10")
    # vLLM extras: a fixed length (no early end of sequence), the same for every request
    fields = {"max_tokens": 128, "ignore_eos": True, "temperature": 0, "stream": True,
              "stream_options": {"include_usage": True}}
    started: dict[str, float] = {}  # when each request's first chunk came: the engine ran it
    tokens: dict[str, int] = {}

    def run(label: str, key: str) -> None:
        with httpx.stream("POST", f"{queued_stack.base_url}/v1/chat/completions", timeout=300,
                          headers={"Authorization": f"Bearer {key}"},
                          json={"model": "smollm2-queued", **fields,
                                "messages": [{"role": "user", "content": "hi"}]}) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    started.setdefault(label, time.monotonic())
                    usage = json.loads(line[6:]).get("usage")
                    if usage:
                        tokens[label] = usage["completion_tokens"]

    threads = [threading.Thread(target=run, args=(f"batch-{i}", batch)) for i in range(4)]
    for thread in threads:  # the first runs, three wait in the engine's queue (one at a time)
        thread.start()
        time.sleep(0.2)
    deadline = time.monotonic() + 120
    while "batch-0" not in started and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    urgent_sent = time.monotonic()
    threads.append(threading.Thread(target=run, args=("urgent", urgent)))
    threads[-1].start()
    for thread in threads:
        thread.join(300)
    order = sorted(started, key=started.get)
    print(f"\n[priority] the engine started them in this order: {order}")
    assert tokens == {label: 128 for label in [f"batch-{i}" for i in range(4)] + ["urgent"]}
    # Those still queued when the urgent request came (the margin: its way through the proxy),
    # which first come, first served would run before it: it runs before every one of them.
    waiting = [label for label in order if started[label] > urgent_sent + 0.25
               and label != "urgent"]
    assert waiting, f"nothing was queued when the urgent request came: {order}"
    assert all(started["urgent"] < started[label] for label in waiting), order
