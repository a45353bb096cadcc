"""The proxy process: LiteLLM's app behind a default-deny route gate, served by uvicorn.

LiteLLM exposes about a thousand routes; dozens answer without any key (its UI config,
public model hub, OAuth discovery, event logging) and many more answer any valid key (router
settings, callbacks, debug tasks). This gate lets through only:
- liveness/readiness, to anyone (health checks);
- the model APIs (OpenAI, Anthropic, Responses), where LiteLLM then checks the key through
  our custom_auth; their bodies must be JSON objects that do not name an upstream or its
  credentials (400 otherwise: LiteLLM would answer some of these with a 500);
- LiteLLM's read-only operational routes (health, metrics, model info) only with the master
  key: no key → 401, another key → 403;
- nothing else, whatever the key: 404. LiteLLM would answer OpenAI's files, batches,
  assistants, vector stores, evals... by calling api.openai.com or failing with a 500, and its
  key/config management works on a database this project does not give it.
Error answers on the model APIs come in the API's own format, whoever wrote them (LiteLLM,
Starlette's 405, this gate): OpenAI's {"error": {...}}, Anthropic's {"type": "error", ...}.

Run as `python -m vllm_mms.proxy.gateway --config CONFIG --host H --port P [--workers N]` (what
LiteLLM's own CLI does: the config path in CONFIG_FILE_PATH, then uvicorn on its app; with
several workers, uvicorn imports build_app in each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import tempfile
from http import HTTPStatus
from typing import Any, Awaitable, Callable

from .. import environment
from . import shapes
from .store import same_key

log = logging.getLogger("vllm_mms.proxy.gateway")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

OPEN_ROUTES = re.compile(r"^/health/(liveliness|liveness|readiness)$")
MODEL_API_ROUTES = re.compile(
    r"^/(v1/)?(chat/completions|completions|embeddings|models(/[^/:]+)?|"
    r"messages|messages/count_tokens|responses(/.*)?)$")
ANTHROPIC_ROUTES = re.compile(r"^/(v1/)?messages(/count_tokens)?$")
MODEL_LIST_ROUTE = re.compile(r"^/(v1/)?models$")
ADMIN_ROUTES = re.compile(r"^/(health|health/[a-z_]+|metrics/?|(v1/)?model/info|"
                          r"(v1/)?model_group/info|routes)$")
# Routes whose whole body shape (shapes.py) the gate checks: LiteLLM handles them without
# calling our pre-call hook, and fails on some bodies with a 500.
CHECKED_HERE = {"/embeddings": "embeddings", "/messages/count_tokens": "messages"}
# Fields LiteLLM reads before our pre-call hook runs (its logging set-up turns
# `web_search_options` into WebSearchOptions(**value): a 500 for a list): checked here too.
READ_BEFORE_HOOKS = ("web_search_options",)
# LiteLLM's count_tokens route counts with its token counter, which reads every block and tool
# schema without checking them (a document's title, a source's url, a tool's properties...)
# and answers what it cannot read with a 500: the gate runs that count first (`uncountable`).
COUNTED_HERE = "/messages/count_tokens"
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
            send = in_api_error_format(send, anthropic=bool(ANTHROPIC_ROUTES.match(path)))
            if scope.get("method") == "GET" and MODEL_LIST_ROUTE.match(path):
                send = with_model_states(send)
            if scope.get("method") != "POST":
                await answer_errors_too(self.app, scope, receive, send)
                return
            body = await read_body(receive)
            problem = body_problem(body, shape=next(
                (kind for route, kind in CHECKED_HERE.items() if path.endswith(route)), None))
            if not problem and path.endswith(COUNTED_HERE):
                problem = await asyncio.to_thread(uncountable, body)
            if problem:
                await respond(send, 400, problem, "invalid_request_error")
                return
            await answer_errors_too(self.app, scope, replay(body, receive), send)
            return
        keys = presented_keys(scope)
        master = os.environ.get("LITELLM_MASTER_KEY", "")
        if not (master and any(same_key(k, master) for k in keys)):
            status, message = ((403, "this route needs the master key") if keys else
                               (401, "Authentication Error: no API key given"))
            await respond(send, status, message, "auth_error")
        elif ADMIN_ROUTES.match(path):
            await self.app(scope, receive, send)
        else:
            await respond(send, 404, f"{path} is not served by this proxy: it serves the model "
                          f"APIs (/v1/chat/completions, /v1/completions, /v1/embeddings, "
                          f"/v1/models, /v1/responses, /v1/messages) and, with the master key, "
                          f"/health, /metrics and /model/info", "not_found_error")


def exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return chain


async def answer_errors_too(app: Callable[..., Awaitable[None]], scope: Scope, receive: Receive,
                            send: Send) -> None:
    """Run the app; if it raises before answering, answer in the API's format rather than
    leave the client uvicorn's plain-text 500. LiteLLM refuses some request fields by raising
    a ValueError from its auth checks ("Rejected Request: workspace_id is not allowed in
    request body", and values naming a secret, "os.environ/..."), which its own error handler
    then fails on (it imports prisma): that is the client's request, so 400."""
    started = False

    async def tracking_send(message: dict[str, Any]) -> None:
        nonlocal started
        started = True
        await send(message)

    try:
        await app(scope, receive, tracking_send)
    except Exception as exc:  # noqa: BLE001 - answered below, logged with its traceback
        if started:
            raise
        log.exception("mms: %s %s failed before answering", scope.get("method"), scope.get("path"))
        refused = next((e for e in exception_chain(exc) if isinstance(e, ValueError)), None)
        if refused is not None:
            await respond(send, 400, str(refused).splitlines()[0][:1000], "invalid_request_error")
        else:
            await respond(send, 500, f"the proxy failed on this request ({type(exc).__name__}); "
                          f"its log has the details", "server_error")


async def respond(send: Send, status: int, message: str, kind: str) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "code": str(status)}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# Anthropic's error types by status (docs.anthropic.com, "Errors"); other statuses: by class.
ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                         403: "permission_error", 404: "not_found_error",
                         413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                         529: "overloaded_error"}
OPENAI_ERROR_TYPES = {401: "auth_error", 403: "auth_error", 404: "not_found_error",
                      429: "rate_limit_error"}


def error_message(data: Any, body: bytes, status: int) -> str:
    """The message an error body carries, whatever its shape."""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        for value in (error, data.get("detail"), data.get("message")):
            if isinstance(value, str) and value:
                return value
            if value is not None:
                return json.dumps(value)
    text = body.decode("utf-8", "replace").strip()[:2000]
    return text or HTTPStatus(status).phrase


# vLLM's context-overflow messages, as LiteLLM passes them on (wrapped in its own text):
# - 0.16's chat path (vllm/renderers/params.py:338): "You passed N input tokens and requested
#   M output tokens. However, the model's context length is only L tokens, resulting in a
#   maximum input length of K tokens." (N is capped at K + 1 by the tokenizer's truncation);
# - 0.16's other paths (vllm/entrypoints/openai/engine/serving.py:900-921): "This model's
#   maximum context length is L tokens. However, your request has N input tokens" and
#   "'max_tokens' or 'max_completion_tokens' is too large: M. ...";
# - the CPU build (vllm/renderers/params.py): "... your prompt contains [at least] N input
#   tokens"; by characters, before counting tokens: no N.
CONTEXT_LIMIT = re.compile(r"(?:maximum context length is|context length is only) (\d+) tokens")
INPUT_LIMIT = re.compile(r"maximum input length of (\d+) tokens")
PROMPT_TOKENS = re.compile(r"(?:You passed|your request has|your prompt contains(?: at least)?|"
                           r"you requested) (\d+) (?:input tokens|tokens in the input)")
OUTPUT_TOKENS = re.compile(r"'max_tokens' or 'max_completion_tokens' is too large: (\d+)")


def _number(pattern: re.Pattern[str], text: str) -> int | None:
    found = pattern.search(text)
    return int(found.group(1)) if found else None


def context_overflow(status: int, body: bytes, anthropic: bool) -> bytes | None:
    """A context overflow in the terms each API's clients act on, with the numbers: Anthropic's
    "prompt is too long: N tokens > L maximum" (Claude Code compacts on it and reads the gap
    from it; it does not recognise vLLM 0.16's own text) or its `max_tokens` overflow message;
    OpenAI's code "context_length_exceeded" (Codex compacts on it). None if `body` is not one."""
    text = body.decode("utf-8", "replace")
    context = _number(CONTEXT_LIMIT, text) if status == 400 else None
    if context is None:
        return None
    prompt, output = _number(PROMPT_TOKENS, text), _number(OUTPUT_TOKENS, text)
    # what the prompt may take: the context, or what the requested output leaves of it
    limit = _number(INPUT_LIMIT, text) or context
    if anthropic:
        if output is not None and prompt is not None:
            message = (f"input length and `max_tokens` exceed context limit: {prompt} + "
                       f"{output} > {context}, decrease input length or `max_tokens` and try "
                       f"again")
        elif prompt is not None:
            message = f"prompt is too long: {prompt} tokens > {limit} maximum"
        else:
            message = f"prompt is too long for the model's {context}-token context"
        return json.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                      "message": message}}).encode()
    message = f"This model's maximum context length is {context} tokens. "
    if output is not None and prompt is not None:
        message += (f"However, you requested {prompt + output} tokens ({prompt} in the "
                    f"messages, {output} in the completion). Please reduce the length of the "
                    f"messages or completion.")
    elif prompt is not None and limit != context:
        message += (f"However, your messages resulted in {prompt} tokens, more than the {limit} "
                    f"the requested completion leaves. Please reduce the length of the "
                    f"messages or completion.")
    elif prompt is not None:
        message += (f"However, your messages resulted in {prompt} tokens. Please reduce the "
                    f"length of the messages.")
    else:
        message += "Please reduce the length of the messages."
    return json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "param": "messages", "code": "context_length_exceeded"}}).encode()


def error_body(status: int, body: bytes, anthropic: bool) -> bytes:
    """`body` if it is already an error in the API's format, else the same message in it; a
    context overflow in the API's own terms (context_overflow)."""
    overflow = context_overflow(status, body, anthropic)
    if overflow is not None:
        return overflow
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    well_formed = isinstance(error, dict) and isinstance(error.get("message"), str)
    if anthropic:
        if well_formed and data.get("type") == "error" and isinstance(error.get("type"), str):
            return body
        kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else
                                         "invalid_request_error")
        shaped = {"type": "error", "error": {"type": kind,
                                             "message": error_message(data, body, status)}}
    else:
        if well_formed:
            return body
        kind = OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else
                                      "invalid_request_error")
        shaped = {"error": {"message": error_message(data, body, status), "type": kind,
                            "param": None, "code": str(status)}}
    return json.dumps(shaped).encode()


def holding_body(send: Send, holds: Callable[[int], bool],
                 rewrite: Callable[[int, bytes], bytes]) -> Send:
    """`send`, with the body of each answer whose status `holds` held until complete and
    passed on as `rewrite(status, body)` (JSON when rewritten: its length and type set anew).
    Other answers, streams included, pass untouched."""
    held: dict[str, Any] | None = None
    chunks: list[bytes] = []

    async def holding_send(message: dict[str, Any]) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and holds(message["status"]):
            held = message
            return
        if held is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        original = b"".join(chunks)
        body = rewrite(held["status"], original)
        start = held
        if body is not original:
            headers = [(k, v) for k, v in held.get("headers", [])
                       if k.lower() not in (b"content-length", b"content-type")]
            start = {**held, "headers": headers + [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode())]}
        await send(start)
        await send({"type": "http.response.body", "body": body})

    return holding_send


def in_api_error_format(send: Send, anthropic: bool) -> Send:
    """`send`, with error answers (status >= 400) rewritten by error_body (an error body is
    small: held until complete)."""
    return holding_body(send, lambda status: status >= 400,
                        lambda status, body: error_body(status, body, anthropic))


def model_states() -> dict[str, dict[str, Any]]:
    """Each served model id → {"catalog": its catalog model, "on_demand": bool, "state":
    ready for a resident model, the load board's state for an on-demand one (unloaded until
    first loaded)}, from models.yml and the board."""
    import yaml

    from . import board

    try:
        first = yaml.safe_load(environment.get("MMS_MODELS_FILE").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    told = board.states()
    out: dict[str, dict[str, Any]] = {}
    for doc in (first, *(first.get("also_served") or [])):
        on_demand = bool(doc.get("on_demand"))
        known = told.get(str(doc.get("model")))
        state = (known.state if known else "unloaded") if on_demand else "ready"
        for name in doc.get("model_names") or []:
            out.setdefault(name, {"catalog": doc.get("model"), "on_demand": on_demand,
                                  "state": state})
    return out


def with_model_states(send: Send) -> Send:
    """`send` for GET /v1/models: each listed model also says its state (model_states)."""
    return holding_body(send, lambda status: status == 200, listing_with_states)


def listing_with_states(status: int, body: bytes) -> bytes:
    try:
        listing = json.loads(body)
        states = model_states()
        for entry in listing.get("data", []):
            entry.update(states.get(entry.get("id"), {}))
    except (ValueError, AttributeError, TypeError):
        return body  # not the listing we know: passed on as it came
    return json.dumps(listing).encode()


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


def body_problem(body: bytes, shape: str | None = None) -> str:
    """Checks LiteLLM would turn into a 500: the body must be a JSON object, and it may not
    name where the request goes or with which credentials (the proxy decides that); on the
    CHECKED_HERE routes it must have the shape of its API (`shape`, see shapes.py), elsewhere
    the READ_BEFORE_HOOKS fields theirs.
    Cheap on the common path: a first-byte check and a few substring scans; JSON only when
    needed."""
    stripped = body.lstrip()
    if not stripped:
        return ""  # LiteLLM answers an empty body itself (400)
    if stripped[:1] != b"{":
        return "the request body must be a JSON object"
    # An escaped key ("api\u005fbase") would slip past the substring scan: parse then too.
    if shape is None and b"\\u" not in body and not any(
            b'"' + field.encode() + b'"' in body for field in CLIENT_FORBIDDEN + READ_BEFORE_HOOKS):
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return ""  # LiteLLM reports malformed JSON (400)
    if not isinstance(data, dict):
        return ""
    named = sorted(set(data) & set(CLIENT_FORBIDDEN))
    if named:
        return (f"{', '.join(named)} cannot be set by a client: the proxy decides where "
                f"requests go and with which credentials")
    if shape:
        found = shapes.problem(shape, data)
    else:  # an escaped name ("web\u005fsearch_options") is caught by parsing too
        found = shapes.problem("chat", {f: data[f] for f in READ_BEFORE_HOOKS if f in data})
    return found[0] if found else ""


def uncountable(body: bytes) -> str:
    """Why LiteLLM's token counter cannot count this count_tokens body, or "". Counts what
    its endpoint counts (proxy_server.count_request_tokens: the system prompt as a first
    message, the messages, the tools), with its default tokenizer: what fails depends on the
    body, not on the tokenizer. Images are not fetched."""
    from litellm import token_counter

    try:
        data = json.loads(body)
    except ValueError:
        return ""  # LiteLLM reports malformed JSON (400)
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        return ""  # LiteLLM answers these itself (400)
    system = data.get("system")
    messages = data["messages"]
    if isinstance(system, (str, list)) and system:
        messages = [{"role": "system", "content": system}, *messages]
    tools = data.get("tools")
    try:
        token_counter(messages=messages, tools=tools if isinstance(tools, list) else None,
                      use_default_image_token_count=True)
    except Exception as exc:  # whatever the counter raises on: the body's content
        reason = str(exc).replace(", default_token_count=None", "")
        return f"the request's content cannot be counted: {reason}"
    return ""


def build_app() -> RouteGate:
    from litellm.proxy.proxy_server import app as litellm_app

    return RouteGate(litellm_app)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vllm_mms.proxy.gateway")
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (uvicorn imports build_app in each)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    os.environ["CONFIG_FILE_PATH"] = args.config
    # No interactive API docs: they describe the admin surface to anyone who asks.
    for name in ("NO_DOCS", "NO_REDOC", "NO_OPENAPI"):
        os.environ.setdefault(name, "True")
    if args.workers > 1:
        # What LiteLLM's own CLI does for several workers: tells the ones that ask (its
        # in-memory counters) that they are not alone, and lets /metrics, answered by any one
        # worker, add up the Prometheus samples of all (a fresh directory per start).
        os.environ["NUM_WORKERS"] = str(args.workers)
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mms-prometheus-")
    import uvicorn

    uvicorn.run("vllm_mms.proxy.gateway:build_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, server_header=False,
                log_level=environment.get("MMS_PROXY_LOG_LEVEL"))


if __name__ == "__main__":
    main()
