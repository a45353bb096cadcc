"""A fast OpenAI-compatible stub engine for the benchmark: answers at once, so what remains of
a proxied request's time is the proxy's own cost. Streams CHUNKS content chunks and, as vLLM
does, one last chunk with `usage` (and no choices) when the request sets
`stream_options.include_usage`. Every answer carries `usage` with PROMPT_TOKENS prompt tokens.

    python bench/stub_upstream.py PORT
"""

from __future__ import annotations

import json
import sys
import time

CHUNKS = 16
PROMPT_TOKENS = 8


def usage() -> dict:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": CHUNKS,
            "total_tokens": PROMPT_TOKENS + CHUNKS}


def completion(model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()),
        "model": model, "choices": [{"index": 0, "finish_reason": "length",
                                     "message": {"role": "assistant", "content": "tok " * CHUNKS}}],
        "usage": usage()}).encode()


def chunk(model: str, content: str, finish: str | None = None) -> bytes:
    data = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "delta": {"content": content} if content else {},
                                         "finish_reason": finish}]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def usage_chunk(model: str) -> bytes:
    """vLLM's last chunk under include_usage: empty choices, the whole request's usage."""
    data = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [], "usage": usage()}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def wants_usage(request: dict) -> bool:
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def stream_body(request: dict) -> list[bytes]:
    """The SSE messages of one streamed answer, in order."""
    model = request.get("model", "vllm_agent")
    parts = [chunk(model, "tok ") for _ in range(CHUNKS)]
    parts.append(chunk(model, "", "length"))
    if wants_usage(request):
        parts.append(usage_chunk(model))
    parts.append(b"data: [DONE]\n\n")
    return parts


# Requests seen with and without include_usage (GET /stats): the benchmark checks what the
# proxy asked the engine for.
STATS = {"streamed": 0, "streamed_with_usage": 0, "plain": 0}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "GET":
        if scope["path"] == "/stats":
            payload = json.dumps(STATS)
        else:
            payload = json.dumps({"object": "list",
                                  "data": [{"id": "vllm_agent", "object": "model"}]})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload.encode()})
        return
    request = json.loads(body or b"{}")
    if not request.get("stream"):
        STATS["plain"] += 1
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body",
                    "body": completion(request.get("model", "vllm_agent"))})
        return
    STATS["streamed"] += 1
    STATS["streamed_with_usage"] += wants_usage(request)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    parts = stream_body(request)
    for part in parts[:-1]:
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": parts[-1]})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)
