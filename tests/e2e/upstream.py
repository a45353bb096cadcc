"""A recording stand-in for the engine: it answers like vLLM's OpenAI server and keeps the
JSON bodies the proxy forwarded, so a test can assert exactly what reached the engine.
Fakes are the point here: the real engine cannot tell us what it was sent, nor be slowed
down on demand. Behaviour per request, from the last user message:
  "sleep:N"  wait N seconds before answering;  "hold"  wait until released."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class RecordingUpstream:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.release = threading.Event()
        self.in_flight = 0
        self.model_id = "vllm_agent"
        self.model_entries: list[dict[str, Any]] = []
        self.down = False  # True: drop every connection without an answer (a crashed engine)
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                upstream.headers.append(dict(self.headers))
                if self.path.rstrip("/").endswith("/models") and upstream.model_entries:
                    self._send(200, {"object": "list", "data": upstream.model_entries})
                elif self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list",
                                     "data": [{"id": upstream.model_id, "object": "model"}]})
                else:
                    self._send(200, {})

            def do_POST(self) -> None:  # noqa: N802
                if upstream.down:
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with upstream._lock:
                    upstream.bodies.append(body)
                    upstream.headers.append(dict(self.headers))
                    upstream.in_flight += 1
                try:
                    last = ""
                    for message in body.get("messages", []):
                        if isinstance(message.get("content"), str):
                            last = message["content"]
                    if last.startswith("sleep:"):
                        time.sleep(float(last.split(":", 1)[1]))
                    elif last == "hold":
                        upstream.release.wait(30)
                    self._send(200, {
                        "id": "chatcmpl-rec", "object": "chat.completion", "created": int(time.time()),
                        "model": body.get("model", "vllm_agent"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": "recorded"}}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                    })
                finally:
                    with upstream._lock:
                        upstream.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "RecordingUpstream":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
