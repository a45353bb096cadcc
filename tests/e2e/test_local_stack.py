"""The real local stack (vLLM CPU build + SmolLM2 + LiteLLM with our hooks), driven with the
OpenAI and Anthropic Python SDKs, plus the local-mode CLI's own behaviour."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import anthropic
import httpx
import openai
import pytest

from ..conftest import ROOT

MODEL = "smollm2-135m-cpu"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def oai(stack):
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.key, max_retries=0)


@pytest.fixture(scope="module")
def claude(stack):
    return anthropic.Anthropic(base_url=stack.base_url, api_key=stack.key, max_retries=0)


def test_chat_completion(oai):
    # Greedy decoding: the tiny model answers this one correctly and deterministically.
    response = oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=30,
                                           temperature=0)
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content.strip()
    assert response.usage.completion_tokens > 0
    assert "paris" in response.choices[0].message.content.lower()


def test_chat_completion_streaming(oai):
    stream = oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=20,
                                         stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 1
    assert "".join(pieces).strip()


def test_alias_ids_reach_the_same_engine(oai):
    for model_id in ("vllm_agent", "smollm2"):
        response = oai.chat.completions.create(model=model_id, messages=QUESTION, max_tokens=5)
        assert response.choices[0].message.content is not None


def test_models_lists_the_catalog_name_and_aliases(oai):
    ids = sorted(m.id for m in oai.models.list().data)
    assert ids == ["smollm2", "smollm2-135m-cpu", "vllm_agent"]


def test_anthropic_messages(claude):
    message = claude.messages.create(model=MODEL, max_tokens=20, messages=QUESTION)
    assert message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.usage.output_tokens > 0


def test_anthropic_messages_streaming(claude):
    with claude.messages.stream(model=MODEL, max_tokens=20, messages=QUESTION) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip()
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_claude_code_sized_max_tokens_is_clamped_not_rejected(claude, oai):
    # Claude Code streams, asking for 32000 output tokens; the context is 8192.
    with claude.messages.stream(model=MODEL, max_tokens=32000, messages=QUESTION) as stream:
        assert "".join(stream.text_stream).strip()
    response = oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=32000)
    assert response.choices[0].message.content.strip()


def test_tools_with_auto_tool_choice_are_accepted(oai):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    response = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=tools, tool_choice="auto", max_tokens=60)
    choice = response.choices[0]
    assert choice.finish_reason in ("stop", "tool_calls", "length")
    if choice.message.tool_calls:
        call = choice.message.tool_calls[0]
        assert call.type == "function" and call.function.name
        json.loads(call.function.arguments)
    else:
        assert choice.message.content is not None


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-FAKE-wrong"},
                                     {"x-api-key": "nope"}])
def test_wrong_or_missing_key_is_401_on_the_real_stack(stack, headers):
    for path, body in (("/v1/chat/completions", {"model": MODEL, "messages": QUESTION}),
                       ("/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": QUESTION})):
        response = httpx.post(stack.base_url + path, json=body, headers=headers, timeout=30)
        assert response.status_code == 401, (path, response.text)
    assert httpx.get(stack.base_url + "/v1/models", headers=headers).status_code == 401


def test_engine_is_on_loopback_and_requires_the_internal_key(stack):
    response = httpx.get(f"{stack.engine_url}/v1/models", headers={"Authorization": f"Bearer {stack.key}"})
    assert response.status_code == 401  # the proxy key is not the engine key
    argv = json.loads((stack.log_dir / "engine.argv.json").read_text())
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--api-key" not in argv


def test_no_key_in_process_list_or_logs(stack):
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert stack.key not in listing
    assert "sk-engine-" not in listing
    for log in stack.log_dir.glob("*.log"):
        text = log.read_text(errors="replace")
        assert stack.key not in text, log.name
        assert "sk-engine-" not in text, log.name


def test_second_start_is_refused_while_running(stack):
    proc = subprocess.run([str(ROOT / "runMe.sh"), "--local", "-d"], env=stack.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: a local stack is already running (smollm2-135m-cpu, proxy on port ")


def test_port_in_use_is_one_clear_line_and_starts_nothing(tmp_path, stack):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**stack.env, "MMS_STATE_DIR": str(tmp_path / "state"), "LITELLM_PORT": str(port),
               "VLLM_PORT": str(port + 1 if port < 65535 else port - 1)}
        proc = subprocess.run([str(ROOT / "runMe.sh"), "--local", "-d"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == (f"error: port {port} (LITELLM_PORT) is already in use on 127.0.0.1; "
                           f"choose another, e.g. LITELLM_PORT={port + 1} ./runMe.sh --local\n")
    assert not (tmp_path / "state" / "stack.json").exists()
    assert not (tmp_path / "state" / "logs").exists()


def test_status_reports_health_queue_and_recent_requests(stack, oai):
    oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=5)
    deadline = time.monotonic() + 15  # usage rows are written in batches, once a second
    while True:
        proc = subprocess.run([str(ROOT / "runMe.sh"), "status"], env=stack.env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        if lines[8].split()[-1] not in ("0", "?") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert lines[0] == "mode:     local"
    assert lines[1] == "model:    smollm2-135m-cpu"
    assert lines[3].startswith("engine:   healthy  pid ")
    assert lines[4].startswith("proxy:    healthy  pid ")
    assert lines[5] == "requests running: 0"
    assert lines[6] == "requests waiting: 0"
    assert lines[7].startswith("KV-cache use:     ") and lines[7].endswith("%")
    recent = int(lines[8].split()[-1])
    assert recent >= 1  # at least the request above, from the usage table
    assert lines[9] == f"logs:     {stack.log_dir}"


def test_logs_show_the_service_log(stack):
    marker = httpx.get(f"{stack.base_url}/v1/models?logs-test=1",
                       headers={"Authorization": f"Bearer {stack.key}"})
    assert marker.status_code == 200
    proc = subprocess.run([str(ROOT / "runMe.sh"), "logs", "proxy"], env=stack.env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert '"GET /v1/models?logs-test=1 HTTP/1.1" 200' in proc.stdout
    assert stack.key not in proc.stdout


def test_doctor_passes_on_a_healthy_local_stack(stack):
    proc = subprocess.run([str(ROOT / "runMe.sh"), "doctor"], env=stack.env, capture_output=True,
                          text=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines[0] == "doctor (local mode)"
    port = stack.engine_url.rsplit(":", 1)[1]
    assert f"ok    engine: healthy at http://127.0.0.1:{port}" in lines
    assert any(line.startswith("ok    proxy: healthy at http://127.0.0.1:") for line in lines)
    assert any(line.startswith("ok    generated config: ") for line in lines)
    assert lines[-1] == "all checks passed"
    assert stack.key not in proc.stdout
