"""`./runMe.sh switch` in local mode, for real, on the session stack: a failing model leaves
the old engine serving (rollback); a good one takes over behind the same proxy port without a
proxy restart; then back to the default, so the tests that follow see the stack they expect."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import httpx

from vllm_mms.stack.processes import alive
from vllm_mms.stack.state import Stack

from ..conftest import ROOT

BASE = (ROOT / "models" / "smollm2-135m-cpu.yml").read_text()
# Same weights, other settings; a small KV reservation so two engines fit beside each other.
SWITCH_MODEL = (BASE.replace('aliases: ["smollm2"]', "aliases: []")
                .replace("--gpu-memory-utilization 0.3", "--gpu-memory-utilization 0.1")
                .replace("description: \"SmolLM2-135M-Instruct on CPU", "description: \"Switch"))
# 9000 > the 8192 positions SmolLM2 has: vLLM refuses to start it.
BROKEN_MODEL = (SWITCH_MODEL.replace("--max-model-len 8192", "--max-model-len 9000")
                .replace("context_length: 8192", "context_length: 9000"))


def switch(stack, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "runMe.sh"), "switch", name], env=stack.env,
                          capture_output=True, text=True, timeout=900)


def stack_file(stack) -> Stack:
    state = Stack.load(stack.state_dir / "stack.json")
    assert state is not None
    return state


def chat(stack, model: str) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {stack.key}"},
                      json={"model": model, "max_tokens": 8,
                            "messages": [{"role": "user", "content": "Say hi."}]})


def model_ids(stack) -> set[str]:
    response = httpx.get(f"{stack.base_url}/v1/models",
                         headers={"Authorization": f"Bearer {stack.key}"})
    return {m["id"] for m in response.json()["data"]}


def engines_with(argument: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if argument in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_switch_rolls_back_on_failure_then_moves_the_proxy(stack):
    project = Path(stack.env["MMS_PROJECT_DIR"])
    (project / "models" / "smollm2-switch.yml").write_text(SWITCH_MODEL)
    (project / "models" / "smollm2-broken.yml").write_text(BROKEN_MODEL)
    before = stack_file(stack)
    proxy_pid = before.proxy.pid

    failed = switch(stack, "smollm2-broken")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    last = failed.stderr.strip().splitlines()
    assert re.search(
        r"^error: switch to smollm2-broken failed, smollm2-135m-cpu keeps serving \(rolled "
        r"back\): the new engine exited \(code \d+\) while loading; last lines of ",
        failed.stderr, re.M), failed.stderr
    assert any("max_model_len" in line for line in last)  # vLLM's own reason is shown
    assert stack_file(stack) == before
    assert alive(before.engines[0].pid)
    assert engines_with("--max-model-len 9000") == []
    assert chat(stack, "smollm2-135m-cpu").status_code == 200

    try:
        # Clients keep calling the stable id while the model changes under it: none may fail.
        statuses: list[int] = []
        done = threading.Event()

        def keep_calling() -> None:
            # One request every 2 s: on 2 cores, a CPU engine under constant load starves the
            # new one while it loads (a GPU box has no such contention).
            while not done.wait(2.0):
                statuses.append(chat(stack, "vllm_agent").status_code)

        caller = threading.Thread(target=keep_calling)
        caller.start()
        started = time.monotonic()
        try:
            moved = switch(stack, "smollm2-switch")
        finally:
            done.set()
            caller.join()
        print(f"\n[e2e] switch took {time.monotonic() - started:.1f}s; {len(statuses)} requests "
              f"during it, statuses {sorted(set(statuses))}")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert len(statuses) >= 3 and set(statuses) == {200}, statuses
        assert re.fullmatch(
            rf"switched: smollm2-135m-cpu -> smollm2-switch; the proxy on port "
            rf"{before.proxy_port} serves smollm2-switch, vllm_agent \(old engine drained in "
            rf"\d+\.\ds and stopped\)", moved.stdout.strip().splitlines()[-1]), moved.stdout
        after = stack_file(stack)
        assert (after.model, after.proxy.pid) == ("smollm2-switch", proxy_pid)
        assert after.engines[0].port != before.engines[0].port
        assert not alive(before.engines[0].pid)
        assert model_ids(stack) == {"smollm2-switch", "vllm_agent"}
        for model in ("smollm2-switch", "vllm_agent"):
            response = chat(stack, model)
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"]
        gone = chat(stack, "smollm2-135m-cpu")  # the old id left the proxy with its engine
        assert gone.status_code == 400, gone.text
        assert gone.json()["error"]["message"].startswith(
            "/chat/completions: Invalid model name passed in model=smollm2-135m-cpu.")
        status = subprocess.run([str(ROOT / "runMe.sh"), "status"], env=stack.env,
                                capture_output=True, text=True, timeout=120)
        assert "model:    smollm2-switch" in status.stdout.splitlines()
    finally:
        back = switch(stack, "smollm2-135m-cpu")
        assert back.returncode == 0, back.stdout + back.stderr
        stack.engine_url = f"http://127.0.0.1:{stack_file(stack).engines[0].port}"
    assert model_ids(stack) == {"smollm2-135m-cpu", "smollm2", "vllm_agent"}
    assert chat(stack, "smollm2").status_code == 200
