"""The proxy starts and serves with no network at all (only loopback): no cost-map download,
no telemetry, nothing that waits on the internet. Run in a fresh network namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from ..conftest import ROOT

SCRIPT = r"""
import json, subprocess, sys, time, urllib.request
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.e2e.conftest import MASTER_KEY, RECORDING_MODEL, copy_project, free_port, wait_for
from tests.e2e.upstream import RecordingUpstream
from vllm_mms.stack import local, processes
from vllm_mms.stack.render import render
from vllm_mms.config.resolve import Project, resolve

base = Path({base!r})
project = copy_project(base / "project")
(project / "models" / "recorder.yml").write_text(RECORDING_MODEL % "  max_tokens: 16\n")
with RecordingUpstream() as upstream:
    resolved = resolve(Project(project), "recorder", environ={{"LITELLM_MASTER_KEY": MASTER_KEY}})
    render(Project(project), resolved, base / "generated", api_base=f"http://127.0.0.1:{{upstream.port}}/v1")
    port = free_port()
    started = time.monotonic()
    proc = local.proxy_process(resolved, base / "generated", "sk-upstream", base / "logs", port,
                               {{"MMS_STATE_DIR": str(base / "state")}})
    try:
        wait_for(f"http://127.0.0.1:{{port}}/health/liveliness", 120, proc)
        ready = time.monotonic() - started
        request = urllib.request.Request(
            f"http://127.0.0.1:{{port}}/v1/chat/completions", method="POST",
            data=json.dumps({{"model": "recorder", "messages": [{{"role": "user", "content": "hi"}}]}}).encode(),
            headers={{"Authorization": f"Bearer {{MASTER_KEY}}", "Content-Type": "application/json"}})
        with urllib.request.urlopen(request, timeout=60) as response:
            status = response.status
    finally:
        processes.terminate([proc.pid], grace=5)
print(json.dumps({{"ready_s": ready, "status": status, "forwarded": len(upstream.bodies)}}))
"""


def test_proxy_starts_and_serves_without_any_network(tmp_path):
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True) if shutil.which(
        "unshare") else None
    if probe is None or probe.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("unshare -n is not available: the offline check cannot run")
        pytest.skip("unshare -n needs root (or user namespaces): the offline check is skipped")
    script = tmp_path / "offline.py"
    script.write_text(SCRIPT.format(root=str(ROOT), base=str(tmp_path / "run")))
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    proc = subprocess.run(["unshare", "-n", "sh", "-c", f'ip link set lo up && exec "{sys.executable}" "{script}"'],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["status"], result["forwarded"]) == (200, 1)
    print(f"\n[offline] proxy ready in {result['ready_s']:.1f}s with no network")
    log = (tmp_path / "run" / "logs" / "proxy.log").read_text(errors="replace")
    for sign in ("Network is unreachable", "Failed to fetch", "Temporary failure in name resolution",
                 "ConnectError", "Max retries exceeded"):
        assert sign not in log, sign
