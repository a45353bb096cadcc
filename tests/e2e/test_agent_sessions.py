"""The real agent CLIs (pinned) through the real proxy against each reasoning catalog model,
as vLLM 0.16 (the GPU image's version) would answer: a scripted engine in its exact wire
format (scripted_engine.py). A two-step task: turn 1 answers with reasoning and a call of the
client's file-reading tool; the client runs it; turn 2 must bring the tool's result and the
turn-1 reasoning back in `reasoning`, the field vLLM 0.16 reads; the client then prints turn
2's answer and exits 0, with no 4xx/5xx in the proxy log.

Also: each effort/thinking setting of the three APIs reaches the engine as a value vLLM 0.16
accepts (the scripted engine answers others with 0.16's 400), and a context overflow comes
back in each API's own terms."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from vllm_mms.ops.agents import install_clients

from ..conftest import REAL_CACHE, ROOT
from .agent_readiness import CLIENTS, MODELS
from .conftest import start_proxy, stop_proxies
from .scripted_engine import ScriptedEngine, Turn
from .test_agents import proxy_statuses

SECRET = "kumquat-4471"
ANSWER = f"The launch code is {SECRET}."
THOUGHT = "The user wants the launch code, so I should read notes.txt first."
QUESTION = "What is the launch code written in notes.txt? Read the file, then answer."


def reads(path: Path, tools: list[dict]) -> tuple[str, str] | None:
    """A call of the client's own file-reading tool, by the names the CLIs give them."""
    names = {t.get("function", {}).get("name") or t.get("name")  # chat's or Responses' shape
             for t in tools if isinstance(t, dict)}
    calls = {"Read": {"file_path": str(path)},                       # Claude Code
             "read": {"filePath": str(path)},                        # OpenCode
             "exec_command": {"cmd": f"cat {path}"},                 # Codex
             "shell_command": {"command": f"cat {path}"},
             "shell": {"command": ["cat", str(path)]}}
    name = next((n for n in calls if n in names), None)
    return (name, json.dumps(calls[name])) if name else None


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return json.dumps(content)


def tool_results(body: dict) -> list[str]:
    return [text_of(m.get("content")) for m in body.get("messages") or []
            if isinstance(m, dict) and m.get("role") == "tool"]


def two_steps(engine: ScriptedEngine, path: Path, reasoning: bool):
    """The engine's answers: the result read → the answer; tools offered → read the file;
    anything else (titles, summaries, quota probes) → a short text."""
    def respond(body: dict) -> Turn:
        if any(SECRET in result for result in tool_results(body)):
            return Turn("The file holds it." if reasoning else None, ANSWER)
        call = reads(path, body.get("tools") or [])
        if call:
            return Turn(THOUGHT if reasoning else None, None, [call])
        return Turn(None, "Notes")
    return respond


@pytest.fixture(scope="module", params=MODELS)
def scripted(request, tmp_path_factory):
    """A proxy rendered for the catalog model, in front of a scripted vLLM 0.16 engine."""
    install_clients()
    started: list = []
    engine = ScriptedEngine(request.param).__enter__()
    started.append(engine)
    proxy = start_proxy(tmp_path_factory.mktemp(request.param), request.param, engine, started, {})
    yield request.param, engine, proxy
    stop_proxies(started)


def run_client(proxy, model: str, client: str, args: list[str], cwd: Path,
               home: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(home),  # node and python3 as installed
           "MMS_CACHE_DIR": str(REAL_CACHE), "MMS_PROXY_URL": proxy.base_url,
           "MMS_PROXY_KEY": proxy.key}
    return subprocess.run([str(ROOT / "runMe.sh"), "launch", client, "--model", model, *args],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


CLIENT_ARGS = {
    "claude": ["-p", QUESTION, "--allowedTools", "Read"],
    "codex": ["exec", "--skip-git-repo-check", QUESTION],
    "opencode": ["run", QUESTION],
}


@pytest.mark.parametrize("client", CLIENTS)
def test_two_step_task_with_reasoning_replayed(scripted, client, tmp_path):
    model, engine, proxy = scripted
    reasoning = engine.dialect["reasoning"] is not None
    work = tmp_path / "repo"
    work.mkdir()
    notes = work / "notes.txt"
    notes.write_text(f"The launch code is {SECRET}.\n")
    engine.respond = two_steps(engine, notes, reasoning)
    first = len(engine.bodies)
    offset = len(proxy.log.read_text(errors="replace")) if proxy.log.exists() else 0
    proc = run_client(proxy, model, client, CLIENT_ARGS[client], work, tmp_path / "home")
    output = proc.stdout + proc.stderr
    bodies = [b for b in engine.bodies[first:] if "messages" in b or "input" in b]
    assert proc.returncode == 0, output[-3000:]
    assert ANSWER in proc.stdout, output[-3000:]
    second = [b for b in bodies if any(SECRET in r for r in tool_results(b))]
    assert second, f"no request brought the tool's result: {json.dumps(bodies)[:3000]}"
    replayed = [m for m in second[0]["messages"]
                if m.get("role") == "assistant" and m.get("tool_calls")]
    assert replayed, second[0]["messages"]
    assert "reasoning_content" not in replayed[-1]
    if reasoning:
        assert replayed[-1].get("reasoning") == THOUGHT, replayed[-1]
    statuses = proxy_statuses(proxy.log, offset)
    assert statuses and all(code < 400 for code in statuses), (statuses, output[-2000:])


def post(proxy, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{proxy.base_url}{path}", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {proxy.key}"})


HI = [{"role": "user", "content": "hi"}]
THINKING_OFF = {"chat_template_kwargs": {"enable_thinking": False}}
# (path, request fields, what the engine must receive: reasoning_effort and template kwargs)
EFFORTS = [
    # Claude Code: thinking off, and budgets (LiteLLM buckets them into efforts)
    ("/v1/messages", {"thinking": {"type": "disabled"}}, THINKING_OFF),
    ("/v1/messages", {"thinking": {"type": "enabled", "budget_tokens": 1024}},
     {"reasoning_effort": "low"}),
    ("/v1/messages", {"thinking": {"type": "enabled", "budget_tokens": 10000}},
     {"reasoning_effort": "high"}),
    # OpenAI chat (OpenCode, any SDK)
    *[("/v1/chat/completions", {"reasoning_effort": sent}, expected) for sent, expected in (
        ("none", THINKING_OFF), ("minimal", {"reasoning_effort": "low"}),
        ("low", {"reasoning_effort": "low"}), ("medium", {"reasoning_effort": "medium"}),
        ("high", {"reasoning_effort": "high"}), ("xhigh", {"reasoning_effort": "high"}))],
    # Responses (Codex: model_reasoning_effort)
    *[("/v1/responses", {"reasoning": {"effort": sent}}, expected) for sent, expected in (
        ("none", THINKING_OFF), ("minimal", {"reasoning_effort": "low"}),
        ("xhigh", {"reasoning_effort": "high"}))],
]


@pytest.mark.parametrize("path, fields, expected", EFFORTS,
                         ids=[f"{p.rsplit('/', 1)[1]}-{json.dumps(f)}" for p, f, _ in EFFORTS])
def test_effort_and_thinking_reach_the_engine_as_vllm_016_accepts(scripted, path, fields,
                                                                   expected):
    model, engine, proxy = scripted
    engine.respond = lambda body: Turn(None, "ok")
    first = len(engine.bodies)
    shape = {"input": "hi"} if path == "/v1/responses" else {"messages": HI}
    response = post(proxy, path, {"model": model, "max_tokens": 16000, **shape, **fields})
    assert response.status_code == 200, response.text  # vLLM 0.16 would answer others 400
    sent = [b for b in engine.bodies[first:] if "messages" in b][-1]
    assert {k: sent[k] for k in ("reasoning_effort", "chat_template_kwargs") if k in sent} \
        == expected


def test_overflow_is_answered_in_each_apis_terms(scripted):
    """vLLM 0.16's overflow text names neither "prompt is too long" (what Claude Code compacts
    on) nor "maximum context length": each API gets it in its own terms."""
    model, engine, proxy = scripted
    engine.respond = lambda body: Turn(None, "ok")
    limit = engine.max_model_len
    for stream in (False, True):
        engine.overflow_next = True
        response = post(proxy, "/v1/messages", {"model": model, "max_tokens": 100,
                                                "messages": HI, "stream": stream})
        assert (response.status_code, response.json()) == (400, {"type": "error", "error": {
            "type": "invalid_request_error",
            "message": f"prompt is too long: {limit - 99} tokens > {limit - 100} maximum"}})
    for path, shape in (("/v1/chat/completions", {"messages": HI, "max_tokens": 100}),
                        ("/v1/responses", {"input": "hi", "max_output_tokens": 100})):
        engine.overflow_next = True
        response = post(proxy, path, {"model": model, **shape})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["type"]) == ("context_length_exceeded",
                                                  "invalid_request_error")
        assert error["message"] == (
            f"This model's maximum context length is {limit} tokens. However, your messages "
            f"resulted in {limit - 99} tokens, more than the {limit - 100} the requested "
            f"completion leaves. Please reduce the length of the messages or completion.")


def test_the_answer_names_the_alias_the_client_asked_for(scripted):
    model, engine, proxy = scripted
    engine.respond = lambda body: Turn(None, "ok")
    import yaml

    alias = yaml.safe_load((ROOT / "models" / f"{model}.yml").read_text())["aliases"][0]
    body = {"model": alias, "max_tokens": 32, "messages": HI}
    assert post(proxy, "/v1/messages", body).json()["model"] == alias
    with httpx.stream("POST", f"{proxy.base_url}/v1/messages", json={**body, "stream": True},
                      headers={"Authorization": f"Bearer {proxy.key}"}, timeout=60) as response:
        events = [json.loads(line[5:]) for line in response.iter_lines()
                  if line.startswith("data:")]
    assert events[0]["type"] == "message_start"
    assert events[0]["message"]["model"] == alias


def test_claude_code_compacts_on_an_overflow_and_carries_on(scripted, tmp_path):
    """The turn that brings the tool's result overflows the context once: Claude Code must
    recognise the error (it does on "prompt is too long", not on vLLM 0.16's own text),
    summarise the conversation, and finish the task."""
    model, engine, proxy = scripted
    work = tmp_path / "repo"
    work.mkdir()
    notes = work / "notes.txt"
    notes.write_text(f"The launch code is {SECRET}.\n")
    engine.respond = two_steps(engine, notes, engine.dialect["reasoning"] is not None)
    overflowed: list[dict] = []

    def once_with_the_result(body: dict) -> bool:
        if overflowed or not any(SECRET in r for r in tool_results(body)):
            return False
        overflowed.append(body)
        return True

    engine.overflows = once_with_the_result
    first = len(engine.bodies)
    try:
        proc = run_client(proxy, model, "claude", CLIENT_ARGS["claude"], work, tmp_path / "home")
    finally:
        engine.overflows = None
    output = proc.stdout + proc.stderr
    assert overflowed, "no request brought the tool's result"
    assert proc.returncode == 0, output[-3000:]
    assert ANSWER in proc.stdout, output[-3000:]
    later = engine.bodies[engine.bodies.index(overflowed[0]) + 1:]
    summaries = [b for b in later if "<summary>" in json.dumps(b.get("messages"))]
    assert summaries, f"Claude Code did not compact: {json.dumps(engine.bodies[first:])[-2000:]}"


PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello from the model\n*** End Patch\n"
APPLY_PATCH = {"type": "custom", "name": "apply_patch",  # as Codex declares it (freeform)
               "description": "Use the `apply_patch` tool to edit files.",
               "format": {"type": "grammar", "syntax": "lark",
                          "definition": "start: begin_patch hunk+ end_patch"}}


def test_a_custom_tool_round_trips_through_the_chat_bridge(scripted):
    """Codex's freeform apply_patch: LiteLLM's bridge offers it to the engine as a function
    with one string parameter; the model's call comes back to the client as a
    custom_tool_call whose input is the patch itself, and the client's output goes back."""
    model, engine, proxy = scripted

    def respond(body: dict) -> Turn:
        if tool_results(body):
            return Turn(None, "Created hello.txt.")
        schema = body["tools"][0]["function"]["parameters"]
        (argument,) = schema["required"]
        return Turn(None, None, [("apply_patch", json.dumps({argument: PATCH}))])

    engine.respond = respond
    first = post(proxy, "/v1/responses", {"model": model, "input": "add hello.txt",
                                          "tools": [APPLY_PATCH]})
    assert first.status_code == 200, first.text
    offered = engine.bodies[-1]["tools"]
    assert [(t["type"], t["function"]["name"]) for t in offered] == [("function", "apply_patch")]
    calls = [o for o in first.json()["output"] if o["type"] == "custom_tool_call"]
    assert [(c["name"], c["input"]) for c in calls] == [("apply_patch", PATCH)]
    output = {"type": "custom_tool_call_output", "call_id": calls[0]["call_id"],
              "output": "Success. Updated the following files:\nA hello.txt"}
    second = post(proxy, "/v1/responses", {"model": model, "tools": [APPLY_PATCH], "input": [
        {"role": "user", "content": "add hello.txt"}, calls[0], output]})
    assert second.status_code == 200, second.text
    assert second.json()["output"][-1]["content"][0]["text"] == "Created hello.txt."
    messages = engine.bodies[-1]["messages"]
    (replayed,) = [m for m in messages if m.get("tool_calls")]
    assert json.loads(replayed["tool_calls"][0]["function"]["arguments"]) == {"content": PATCH}
    assert messages[-1] == {"role": "tool", "content": output["output"],
                            "tool_call_id": calls[0]["call_id"]}


def streamed(proxy, path: str, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{proxy.base_url}{path}", json={**body, "stream": True},
                      timeout=60, headers={"Authorization": f"Bearer {proxy.key}"}) as response:
        assert response.status_code == 200, response.read()
        return [json.loads(line[5:]) for line in response.iter_lines()
                if line.startswith("data:") and line[5:].strip() != "[DONE]"]


def test_streamed_reasoning_reaches_each_api_as_its_clients_show_it(scripted):
    """vLLM 0.16's `delta.reasoning` as OpenAI chat's `reasoning_content` (OpenCode shows it),
    Anthropic's thinking_delta (Claude Code) and Responses' reasoning summary (Codex)."""
    model, engine, proxy = scripted
    # a model without a reasoning parser shows none (its turns have none to show)
    thought = THOUGHT if engine.dialect["reasoning"] else ""
    engine.respond = lambda body: Turn(thought or None, "Paris.")
    chat = streamed(proxy, "/v1/chat/completions", {"model": model, "messages": HI})
    assert "".join(c["choices"][0]["delta"].get("reasoning_content") or ""
                   for c in chat if c.get("choices")) == thought
    assert "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in chat if c.get("choices")).strip() == "Paris."
    messages = streamed(proxy, "/v1/messages", {"model": model, "messages": HI,
                                                "max_tokens": 256})
    assert "".join(e["delta"].get("thinking", "") for e in messages
                   if e["type"] == "content_block_delta") == thought
    responses = streamed(proxy, "/v1/responses", {"model": model, "input": "hi"})
    assert "".join(e.get("delta", "") for e in responses
                   if e["type"] == "response.reasoning_summary_text.delta") == thought
