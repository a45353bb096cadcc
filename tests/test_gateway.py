"""The route gate in front of LiteLLM, on its own: which paths pass, and with which key."""

from __future__ import annotations

import asyncio
import json

import pytest

from vllm_mms.proxy.gateway import RouteGate


def call(path: str, headers: dict[str, str], monkeypatch, master: str = "sk-master") -> tuple[int, dict]:
    monkeypatch.setenv("LITELLM_MASTER_KEY", master)
    reached = []

    async def inner(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": path, "method": "GET",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(RouteGate(inner)(scope, receive, send))
    body = json.loads(sent[1]["body"] or b"{}")
    assert bool(reached) == (sent[0]["status"] == 200)
    return sent[0]["status"], body


@pytest.mark.parametrize("path", [
    "/health/liveliness", "/health/readiness", "/v1/chat/completions", "/chat/completions",
    "/v1/messages", "/v1/messages/count_tokens", "/v1/models", "/models", "/v1/models/x",
    "/v1/responses", "/v1/responses/resp_1", "/v1/completions", "/v1/embeddings"])
def test_open_and_model_routes_reach_litellm_without_the_gate_judging_the_key(path, monkeypatch):
    assert call(path, {}, monkeypatch)[0] == 200  # LiteLLM + custom_auth check the key there


@pytest.mark.parametrize("path", [
    "/", "/routes", "/key/generate", "/config/update", "/metrics", "/metrics/", "/health",
    "/public/model_hub", "/.well-known/openid-configuration", "/api/event_logging/batch",
    "/v1/chat/completions/../../routes", "/v1/messages/x/y", "/debug/asyncio-tasks",
    "/ui/", "/register", "/models/x:countTokens", "/v1beta/models/x:countTokens"])
def test_everything_else_needs_the_master_key(path, monkeypatch):
    assert call(path, {}, monkeypatch) == (401, {"error": {
        "message": "Authentication Error: no API key given", "type": "auth_error", "code": "401"}})
    assert call(path, {"Authorization": "Bearer sk-mms-a-database-key"}, monkeypatch) == (403, {
        "error": {"message": "this route needs the master key", "type": "auth_error",
                  "code": "403"}})
    for header in ("Authorization", "x-api-key", "api-key", "X-LiteLLM-Api-Key"):
        value = "Bearer sk-master" if header == "Authorization" else "sk-master"
        assert call(path, {header: value}, monkeypatch)[0] == 200, header


def test_no_master_key_configured_lets_nothing_through(monkeypatch):
    assert call("/routes", {"Authorization": "Bearer "}, monkeypatch, master="")[0] == 401
    assert call("/routes", {"x-api-key": "anything"}, monkeypatch, master="")[0] == 403


async def _post(body: bytes, monkeypatch) -> tuple[int, bytes, list[bytes]]:
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-master")
    seen: list[bytes] = []

    async def inner(scope, receive, send):
        seen.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    chunks = [body[:3], body[3:]]

    async def receive():
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": "/v1/chat/completions", "method": "POST", "headers": []}
    await RouteGate(inner)(scope, receive, send)
    return sent[0]["status"], sent[1]["body"], seen


@pytest.mark.parametrize("body, status, message", [
    (b'{"model": "m", "messages": []}', 200, None),
    (b'  {"model": "m", "note": "api_base in a value is fine"}', 200, None),
    (b'[1, 2]', 400, "the request body must be a JSON object"),
    (b'"text"', 400, "the request body must be a JSON object"),
    (b'{"model": "m", "api_base": "http://169.254.169.254/"}', 400,
     "api_base cannot be set by a client: the proxy decides where requests go and with which "
     "credentials"),
    (b'{"model": "m", "api\\u005fbase": "http://169.254.169.254/"}', 400,
     "api_base cannot be set by a client: the proxy decides where requests go and with which "
     "credentials"),
    (b'{"model": "m", "note": "caf\\u00e9"}', 200, None),
    (b'{"base_url": "http://x", "api_key": "k"}', 400,
     "api_key, base_url cannot be set by a client: the proxy decides where requests go and "
     "with which credentials"),
])
def test_model_api_bodies_are_checked_and_replayed_whole(body, status, message, monkeypatch):
    code, answer, seen = asyncio.run(_post(body, monkeypatch))
    assert code == status
    if message is None:
        assert seen == [body]  # LiteLLM gets the whole body, in one piece
    else:
        assert seen == [] and json.loads(answer)["error"]["message"] == message
