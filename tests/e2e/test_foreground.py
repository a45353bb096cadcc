"""Foreground local mode: ready banner, then Ctrl-C stops engine and proxy cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from vllm_mms.stack.processes import alive, http_ok, port_free
from vllm_mms.stack.state import Stack

from ..conftest import REAL_CACHE, ROOT, SETTING_NAMES
from .conftest import copy_project, free_port


def test_foreground_start_prints_endpoints_and_ctrl_c_stops_everything(tmp_path):
    project = copy_project(tmp_path / "project")
    proxy_port, engine_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update({"HOME": str(tmp_path / "home"), "MMS_CACHE_DIR": str(REAL_CACHE),
                "MMS_STATE_DIR": str(tmp_path / "state"), "MMS_PROJECT_DIR": str(project),
                "LITELLM_PORT": str(proxy_port), "VLLM_PORT": str(engine_port)})
    proc = subprocess.Popen([str(ROOT / "runMe.sh"), "--local"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 600
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("serving in the foreground") or time.monotonic() > deadline:
                break
        assert lines[-1] == ("serving in the foreground (a service that dies is restarted); "
                             "Ctrl-C stops everything"), "\n".join(lines)
        assert lines[0] == ("ready: smollm2-135m-cpu (model ids: smollm2-135m-cpu, vllm_agent, "
                            "smollm2)")
        assert lines[1] == (f"  proxy (OpenAI + Anthropic API): http://127.0.0.1:{proxy_port}/v1"
                            "    key: sk-FAKE")
        assert lines[5].startswith(f"  curl http://127.0.0.1:{proxy_port}/v1/chat/completions "
                                   "-H 'Authorization: Bearer sk-FAKE'")
        stack = Stack.load(tmp_path / "state" / "stack.json")
        assert stack is not None and len(stack.pids) == 2
        assert http_ok(f"http://127.0.0.1:{proxy_port}/health/liveliness")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the foreground process
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            # The engine and proxy lead their own sessions: stop them through the stack file.
            subprocess.run([str(ROOT / "runMe.sh"), "down"], env=env, capture_output=True,
                           timeout=120)
    for pid in stack.pids:
        assert not alive(pid), pid
    assert not (tmp_path / "state" / "stack.json").exists()
    assert port_free(proxy_port) and port_free(engine_port)
    assert "stopped" in proc.stderr.read()
