"""Bad HTTP requests against the running stack: each gets a clear 4xx (never a 5xx, never a
hang), nothing is forwarded to an address the client names, and a canary request right after
each one still succeeds. (Bad model files, vars.env, secrets and CLI arguments: test_bad_input.)"""

from __future__ import annotations

import json

import httpx
import pytest

from .upstream import RecordingUpstream

CHAT = "/v1/chat/completions"
MODEL = "smollm2-135m-cpu"


def ok_body(**extra):
    return {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}],
            **extra}


# (id, method, path, body: dict|bytes|None, the status it gets)
CASES = [
    ("invalid-json", "POST", CHAT, b'{"model": "x", "messages": [', 400),
    ("empty-body", "POST", CHAT, b"", 400),
    ("json-array-body", "POST", CHAT, b"[1, 2, 3]", 400),
    ("json-string-body", "POST", CHAT, b'"hello"', 400),
    ("messages-not-a-list", "POST", CHAT, {"model": MODEL, "messages": "hi"}, 400),
    ("messages-empty", "POST", CHAT, {"model": MODEL, "messages": []}, 400),
    # As OpenAI answers them (vllm_mms.proxy.shapes; the engine would take them at face value)
    ("message-without-role", "POST", CHAT, {"model": MODEL, "messages": [{"content": "x"}]}, 400),
    ("message-role-unknown", "POST", CHAT,
     {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400),
    ("user-content-null", "POST", CHAT,
     {"model": MODEL, "messages": [{"role": "user", "content": None}]}, 400),
    ("n-above-the-models-cap", "POST", CHAT, ok_body(n=1000), 400),
    # LiteLLM answered these with a 500 (found by tests/e2e/test_spec_fuzz.py)
    ("web-search-options-a-list", "POST", CHAT, ok_body(web_search_options=[None, None]), 400),
    ("assistant-text-part-an-object", "POST", CHAT,
     {**ok_body(), "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [
         {"type": "text", "text": {}, "prompt_cache_breakpoint": {"mode": "explicit"}}]}]}, 400),
    ("user-part-a-string", "POST", CHAT,
     {**ok_body(), "messages": [{"role": "user", "content": ["Hi"]}]}, 400),
    ("completions-prompt-null", "POST", "/v1/completions",
     {"model": MODEL, "prompt": None, "max_tokens": 2}, 400),
    ("embeddings-input-empty-list", "POST", "/v1/embeddings",
     {"model": "text-embedding-3-small", "input": [[]]}, 400),
    # An engine 404 must not cool the engine down (the canary after it must get through)
    ("stored-response-unknown", "GET", "/v1/responses/resp_unknown", None, 400),
    # (the hook refuses it now: "... is a chat model, it makes no embeddings")
    ("embeddings-on-a-chat-model", "POST", "/v1/embeddings", {"model": MODEL, "input": "x"}, 400),
    ("files-not-served", "GET", "/v1/files", None, 404),
    # Answered where the engine has a sensible reading (the
    # Anthropic route fills in max_tokens; an unknown forced tool is answered in text).
    ("unknown-model", "POST", CHAT, {**ok_body(), "model": "no-such-model"}, 400),
    ("model-not-a-string", "POST", CHAT, {**ok_body(), "model": 42}, 400),
    ("path-trick-model", "POST", CHAT, {**ok_body(), "model": "../../etc/passwd"}, 400),
    ("max-tokens-negative", "POST", CHAT, ok_body(max_tokens=-5), 400),
    ("max-tokens-zero", "POST", CHAT, ok_body(max_tokens=0), 400),
    ("max-tokens-not-a-number", "POST", CHAT, ok_body(max_tokens="many"), 400),
    ("temperature-negative", "POST", CHAT, ok_body(temperature=-1), 400),
    ("temperature-huge", "POST", CHAT, ok_body(temperature=1e308), 400),
    ("temperature-string", "POST", CHAT, ok_body(temperature="hot"), 400),
    ("top-p-above-one", "POST", CHAT, ok_body(top_p=7), 400),
    ("n-huge", "POST", CHAT, ok_body(n=100000), 400),
    ("tools-not-a-list", "POST", CHAT, ok_body(tools="x"), 400),
    ("tool-choice-unknown-function", "POST", CHAT,
     ok_body(tool_choice={"type": "function", "function": {"name": "nope"}}), 200),
    ("prompt-beyond-context", "POST", CHAT,
     {**ok_body(), "messages": [{"role": "user", "content": "word " * 40000}]}, 400),
    ("oversized-body", "POST", CHAT,
     {**ok_body(), "messages": [{"role": "user", "content": "x" * 12_000_000}]}, 400),
    ("deeply-nested-json", "POST", CHAT, b'{"model": ' + b"[" * 100000 + b"]" * 100000 + b"}",
     400),
    ("wrong-method", "GET", CHAT, None, 405),
    ("messages-api-no-max-tokens", "POST", "/v1/messages",
     {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}, 200),
    ("messages-api-invalid-json", "POST", "/v1/messages", b"{", 400),
    ("responses-api-bad-input", "POST", "/v1/responses", {"model": MODEL, "input": 17}, 400),
    # found by the spec fuzzer: LiteLLM's token count answered both with a 500
    ("count-tokens-system-numbers", "POST", "/v1/messages/count_tokens",
     {"model": MODEL, "system": [-1.4e-45], "messages": [{"role": "user", "content": "Hi"}]}, 400),
    ("count-tokens-model-number", "POST", "/v1/messages/count_tokens",
     {"model": -2.00001, "messages": [{"role": "user", "content": "Hi"}]}, 400),
    ("count-tokens-citations-numbers", "POST", "/v1/messages/count_tokens",
     {"model": MODEL, "system": [{"type": "text", "text": "s", "citations": [1.5]}],
      "messages": [{"role": "user", "content": "Hi"}]}, 400),
    ("messages-tool-type-an-object", "POST", "/v1/messages",
     {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}],
      "tools": [{"name": "tool_search_tool_regex", "type": {}}]}, 400),
    ("count-tokens-document-title-number", "POST", "/v1/messages/count_tokens",
     {"model": MODEL, "messages": [{"role": "user", "content": [
         {"type": "document", "title": 1.5, "source": {"type": "text", "data": "d"}}]}]}, 400),
    ("count-tokens-tool-property-number", "POST", "/v1/messages/count_tokens",
     {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
      "tools": [{"name": "t", "input_schema": {"type": "object", "properties": {"a": 1}}}]}, 400),
]


@pytest.fixture(scope="module")
def attacker():
    """An address a client might try to make the proxy call: it must receive nothing."""
    with RecordingUpstream() as upstream:
        yield upstream


def send(stack, method: str, path: str, body) -> httpx.Response:
    headers = {"Authorization": f"Bearer {stack.key}", "Content-Type": "application/json"}
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return httpx.request(method, stack.base_url + path, headers=headers, content=content,
                         timeout=120)


def canary(stack) -> None:
    response = send(stack, "POST", CHAT, ok_body())
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_a_clear_error_and_the_service_keeps_serving(stack, case):
    _, method, path, body, expected = case
    response = send(stack, method, path, body)
    assert response.status_code == expected, (response.status_code, response.text[:300])
    if response.status_code not in (200, 405):
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
        assert message and "Traceback" not in str(message)
    canary(stack)


@pytest.mark.parametrize("field", ["api_base", "base_url", "api_key", "extra_headers"])
def test_client_supplied_upstream_is_never_followed(stack, attacker, field):
    value = {"api_base": f"http://127.0.0.1:{attacker.port}/v1",
             "base_url": f"http://127.0.0.1:{attacker.port}/v1",
             "api_key": "sk-attacker", "extra_headers": {"Host": f"127.0.0.1:{attacker.port}"}}[field]
    response = send(stack, "POST", CHAT, ok_body(**{field: value}))
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["message"] == (
        f"{field} cannot be set by a client: the proxy decides where requests go and with "
        f"which credentials")
    assert attacker.bodies == [] and attacker.headers == []
    canary(stack)
