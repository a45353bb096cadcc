"""A fast OpenAI-compatible stub engine for the benchmark: answers at once, so what remains of
a proxied request's time is the proxy's own cost. Streams CHUNKS content chunks.

    python bench/stub_upstream.py PORT
"""

from __future__ import annotations

import json
import sys
import time

CHUNKS = 16


def completion(model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()),
        "model": model, "choices": [{"index": 0, "finish_reason": "length",
                                     "message": {"role": "assistant", "content": "tok " * CHUNKS}}],
        "usage": {"prompt_tokens": 8, "completion_tokens": CHUNKS,
                  "total_tokens": 8 + CHUNKS}}).encode()


def chunk(model: str, content: str, finish: str | None = None) -> bytes:
    data = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "delta": {"content": content} if content else {},
                                         "finish_reason": finish}]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


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
        payload = json.dumps({"object": "list", "data": [{"id": "vllm_agent", "object": "model"}]})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload.encode()})
        return
    request = json.loads(body or b"{}")
    model = request.get("model", "vllm_agent")
    if not request.get("stream"):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": completion(model)})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    for _ in range(CHUNKS):
        await send({"type": "http.response.body", "body": chunk(model, "tok "), "more_body": True})
    await send({"type": "http.response.body", "more_body": True,
                "body": chunk(model, "", "length") + b"data: [DONE]\n\n"})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)
