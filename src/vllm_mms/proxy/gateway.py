"""The proxy process: LiteLLM's app behind a default-deny route gate, served by uvicorn.

LiteLLM exposes about a thousand routes; dozens answer without any key (its UI config,
public model hub, OAuth discovery, event logging) and many more answer any valid key (router
settings, callbacks, debug tasks). This gate lets through only:
- liveness/readiness, to anyone (health checks);
- the model APIs (OpenAI, Anthropic, Responses), where LiteLLM then checks the key through
  our custom_auth; their bodies must be JSON objects that do not name an upstream or its
  credentials (400 otherwise: LiteLLM would answer some of these with a 500);
- everything else only with the master key: no key → 401, another key → 403.

Run as `python -m vllm_mms.proxy.gateway --config CONFIG --host H --port P` (what LiteLLM's own CLI
does for one worker: the config path in CONFIG_FILE_PATH, then uvicorn on its app).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any, Awaitable, Callable

from .. import environment
from .store import same_key

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

OPEN_ROUTES = re.compile(r"^/health/(liveliness|liveness|readiness)$")
MODEL_API_ROUTES = re.compile(
    r"^/(v1/)?(chat/completions|completions|embeddings|models(/[^/:]+)?|"
    r"messages|messages/count_tokens|responses(/.*)?)$")
KEY_HEADERS = (b"authorization", b"x-api-key", b"api-key", b"x-litellm-api-key")
# Request fields that would redirect the call or replace its credentials (SSRF, key override).
CLIENT_FORBIDDEN = ("api_base", "base_url", "api_key", "api_version", "extra_headers",
                    "custom_llm_provider", "organization", "user_config", "mock_response",
                    "litellm_params", "aws_access_key_id", "aws_secret_access_key",
                    "vertex_credentials", "azure_ad_token")


def presented_keys(scope: Scope) -> list[str]:
    keys = []
    for name, value in scope.get("headers", []):
        if name.lower() in KEY_HEADERS:
            text = value.decode("latin-1").strip()
            if text.lower() == "bearer" or text.lower().startswith("bearer "):
                text = text[6:].strip()
            if text:
                keys.append(text)
    return keys


class RouteGate:
    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan (start-up) and websockets
            return
        path = scope.get("path", "")
        if OPEN_ROUTES.match(path):
            await self.app(scope, receive, send)
            return
        if MODEL_API_ROUTES.match(path):
            if scope.get("method") != "POST":
                await self.app(scope, receive, send)
                return
            body = await read_body(receive)
            problem = body_problem(body)
            if problem:
                await respond(send, 400, problem, "invalid_request_error")
                return
            await self.app(scope, replay(body, receive), send)
            return
        keys = presented_keys(scope)
        master = os.environ.get("LITELLM_MASTER_KEY", "")
        if master and any(same_key(k, master) for k in keys):
            await self.app(scope, receive, send)
            return
        status, message = ((403, "this route needs the master key") if keys else
                           (401, "Authentication Error: no API key given"))
        await respond(send, status, message, "auth_error")


async def respond(send: Send, status: int, message: str, kind: str) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "code": str(status)}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """The body once, then the real channel: a streaming response listens on it for the
    client's disconnect, which must stay the client's."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def body_problem(body: bytes) -> str:
    """Checks LiteLLM would turn into a 500: the body must be a JSON object, and it may not
    name where the request goes or with which credentials (the proxy decides that). Cheap on
    the common path: a first-byte check and a few substring scans; JSON only when needed."""
    stripped = body.lstrip()
    if not stripped:
        return ""  # LiteLLM answers an empty body itself (400)
    if stripped[:1] != b"{":
        return "the request body must be a JSON object"
    # An escaped key ("api\u005fbase") would slip past the substring scan: parse then too.
    if b"\\u" not in body and not any(b'"' + field.encode() + b'"' in body
                                      for field in CLIENT_FORBIDDEN):
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return ""  # LiteLLM reports malformed JSON (400)
    named = sorted(set(data) & set(CLIENT_FORBIDDEN)) if isinstance(data, dict) else []
    if named:
        return (f"{', '.join(named)} cannot be set by a client: the proxy decides where "
                f"requests go and with which credentials")
    return ""


def build_app() -> RouteGate:
    from litellm.proxy.proxy_server import app as litellm_app

    return RouteGate(litellm_app)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vllm_mms.proxy.gateway")
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4000)
    args = parser.parse_args(argv)
    os.environ["CONFIG_FILE_PATH"] = args.config
    # No interactive API docs: they describe the admin surface to anyone who asks.
    for name in ("NO_DOCS", "NO_REDOC", "NO_OPENAPI"):
        os.environ.setdefault(name, "True")
    import uvicorn

    uvicorn.run("vllm_mms.proxy.gateway:build_app", factory=True, host=args.host, port=args.port,
                server_header=False, log_level=environment.get("MMS_PROXY_LOG_LEVEL"))


if __name__ == "__main__":
    main()
