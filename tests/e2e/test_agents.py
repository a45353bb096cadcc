"""The real agent CLIs (pinned npm versions) run non-interactively through the launchers
against a local stack: each exits 0 with a non-empty answer, no API error in its output and
no 4xx/5xx for its requests in the proxy log.

The stack serves a variant of the embedded model tuned for these prompts: greedy decoding and
one paragraph (an enforced stop at a blank line). The 135M model otherwise wanders for
thousands of tokens under Claude Code's long system prompt."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from vllm_mms.ops.agents import install_clients

from ..conftest import ROOT
from .conftest import start_stack, stop_stack

AGENT_MODEL = """\
description: SmolLM2-135M for agent clients in the tests (greedy, one paragraph)
context_length: 8192
local_weights: smollm2-135m-instruct
command: >-
  vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-auto-tool-choice
  --tool-call-parser hermes --dtype bfloat16 --max-model-len 8192 --max-num-seqs 8
  --gpu-memory-utilization 0.3 --enforce-eager
env: {}
litellm:
  temperature: {value: 0.0, enforce: true}
  top_p: 0.9
  repetition_penalty: {value: 1.1, enforce: true}
  stop: {value: ["\\n\\n"], enforce: true}
  max_tokens: 2048
"""
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def agent_stack(tmp_path_factory):
    install_clients()
    running = start_stack(tmp_path_factory.mktemp("agents"), "smollm2-agents",
                          {"smollm2-agents": AGENT_MODEL})
    yield running
    stop_stack(running)


def proxy_statuses(log: Path, since: int) -> list[int]:
    """The HTTP statuses the proxy logged after offset `since` of its log."""
    text = log.read_text(errors="replace")[since:]
    return [int(code) for code in re.findall(r'"(?:POST|GET) [^"]*" (\d{3})', text)]


@pytest.mark.parametrize("client, args", [
    ("claude", ["-p", QUESTION]),
    ("codex", ["exec", "--skip-git-repo-check", QUESTION]),
    ("opencode", ["run", QUESTION]),
])
def test_agent_answers_through_the_proxy(agent_stack, client, args, tmp_path):
    log_offset = len((agent_stack.log_dir / "proxy.log").read_text(errors="replace"))
    # The model's 8192-token context is below what these clients need: --force.
    proc = subprocess.run([str(ROOT / "runMe.sh"), "launch", client, "--force", *args],
                          env=agent_stack.env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    answer = proc.stdout.strip()
    assert answer, output
    assert "API Error" not in output and "error:" not in output.lower().replace(
        "error_reporting", ""), output
    statuses = proxy_statuses(agent_stack.log_dir / "proxy.log", log_offset)
    assert statuses and all(code < 400 for code in statuses), statuses
    assert not list(tmp_path.glob(".claude*")) and not list(tmp_path.glob(".codex*"))


def test_small_context_is_refused_without_force(agent_stack):
    proc = subprocess.run([str(ROOT / "runMe.sh"), "launch", "claude", "-p", QUESTION],
                          env=agent_stack.env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: smollm2-agents has a 8192-token context; claude needs at least 32768 (its "
        "prompt and tools alone are large). Use a model with a longer context, or --force to "
        "try anyway")
