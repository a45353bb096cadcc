"""The proxy against the published API descriptions: Schemathesis generates requests from
OpenAI's own OpenAPI spec (its model-API operations, tests/specs/openai-model-api.yaml) and
from the Anthropic SDK's request types (tests/specs/anthropic-messages.yaml), valid and
invalid, and sends them to the real local stack (vLLM CPU + our proxy) with the master key.
Checks on every answer: never a 5xx, never a cooldown 429 (a client's request must not take
the engine away from everyone else), every 4xx a JSON error in the API's own format. Then a
plain request still answers 200.

Budget: MMS_FUZZ_SECONDS per spec (default 90; the same run, longer, is the thorough one:
MMS_FUZZ_SECONDS=900 ./runMe.sh test tests/e2e/test_spec_fuzz.py). Schemathesis runs in its
own environment (requirements/fuzz.txt), built by ./runMe.sh test.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from vllm_mms import bootstrap, environment

from ..conftest import ROOT
from .test_bad_requests import canary

SPECS = ROOT / "tests" / "specs"
SEED = 20261129  # fixed: the same requests in every run unless MMS_FUZZ_SECONDS grows


def fuzz_python() -> Path:
    path = environment.get("MMS_FUZZ_PYTHON") or bootstrap.python_of("fuzz")
    if not Path(path).exists():
        if os.environ.get("CI"):
            pytest.fail(f"the fuzz environment is missing ({path}); ./runMe.sh test builds it")
        pytest.skip("the fuzz environment is not built (./runMe.sh test builds it)")
    return Path(path)


# Two passes share the budget: the spec's examples and random generation first (it cycles
# through every operation), then the coverage phase's deterministic boundary cases (it works
# through the operations in order and may not reach the last ones within its half).
PASSES = ("examples,fuzzing", "coverage")


def fuzz(stack, spec: str, tmp_path: Path) -> list[dict]:
    """Run Schemathesis on one spec; the requests and answers it logged, one dict each."""
    log = tmp_path / f"{spec}.jsonl"
    seconds = max(2, environment.get("MMS_FUZZ_SECONDS") // len(PASSES))
    python = fuzz_python()
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.e2e.fuzz_hooks", "PYTHONPATH": str(ROOT),
           "MMS_FUZZ_MODEL": "smollm2-135m-cpu", "MMS_FUZZ_LOG": str(log)}
    outputs = []
    for phases in PASSES:
        cmd = [str(python.with_name("schemathesis")), "run", str(SPECS / spec),
               "--url", f"{stack.base_url}/v1", "-H", f"Authorization: Bearer {stack.key}",
               "--checks", "not_a_server_error,error_is_the_apis_json_error,no_cooldown",
               "--phases", phases, "--max-time", str(seconds), "--max-examples", "1000",
               "--seed", str(SEED), "--request-timeout", "60", "--no-shrink", "--workers", "2",
               "--suppress-health-check", "all", "--warnings", "off", "--no-color"]
        result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=seconds * 3 + 300)
        outputs.append(f"--- {phases} (exit {result.returncode})\n{result.stdout[-4000:]}"
                       f"{result.stderr[-2000:]}")
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    statuses = collections.Counter(c["status"] for c in calls)
    operations = sorted({(c["method"], c["path"]) for c in calls})
    print(f"\n[fuzz] {spec}: {len(calls)} requests over {len(operations)} operations, "
          f"statuses {dict(sorted(statuses.items()))}")
    # Judged from the log, not Schemathesis's exit code: that also counts its own internal
    # errors (its coverage phase fails on some schemas of the Anthropic SDK's types).
    failures = [c for c in calls if c["status"] >= 500 or c["status"] in (0, 429) or "format" in c]
    assert not failures, "\n".join(json.dumps(c)[:1500] for c in failures[:10])
    spec_paths = set(yaml.safe_load((SPECS / spec).read_text())["paths"])
    assert {c["path"] for c in calls} == spec_paths, "\n".join(outputs)
    return calls


def test_openai_spec_model_apis(stack, tmp_path):
    calls = fuzz(stack, "openai-model-api.yaml", tmp_path)
    assert any(c["status"] == 200 for c in calls if c["path"] == "/chat/completions"), \
        "no generated chat request reached the engine"
    canary(stack)


def test_anthropic_messages(stack, tmp_path):
    calls = fuzz(stack, "anthropic-messages.yaml", tmp_path)
    assert any(c["status"] == 200 for c in calls if c["path"] == "/messages"), \
        "no generated message reached the engine"
    canary(stack)


def test_the_rest_of_openais_api_is_not_served(stack):
    """The spec's other operations (files, batches, assistants, vector stores...), with the
    master key: 404 from the gate, never LiteLLM calling api.openai.com or failing (500)."""
    lines = (SPECS / "openai-other-operations.txt").read_text().splitlines()
    operations = [line.split() for line in lines if line and not line.startswith("#")]
    statuses = collections.Counter()
    with httpx.Client(base_url=stack.base_url, timeout=30,
                      headers={"Authorization": f"Bearer {stack.key}"}) as client:
        for method, template in operations:
            path = "/v1" + re.sub(r"\{[^}]+\}", "x1", template)
            response = client.request(method, path, json={} if method in ("POST", "PUT", "PATCH")
                                      else None)
            statuses[response.status_code] += 1
            assert response.status_code == 404, (method, path, response.text[:300])
            assert response.json()["error"]["message"].startswith(f"{path} is not served")
    print(f"\n[fuzz] {len(operations)} other operations: {dict(statuses)}")
    assert len(operations) > 200

