"""A scripted stand-in for vLLM 0.16.0, the version in the GPU image, which cannot run here:
it answers from a script of turns in the exact wire format 0.16 sends for each catalog model's
parsers (vllm016_dialects.py) and keeps every request body it was sent. Citations are paths in
the vllm-0.16.0 wheel with line numbers; CHAT is vllm/entrypoints/openai/chat_completion/serving.py.
  with ScriptedEngine("step-3.5-flash") as engine:
      engine.script = [Turn("I will read it.", None, [("read", '{"path": "a.py"}')])]
      ... point the proxy at engine.base_url; then look at engine.bodies"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

from .vllm016_dialects import (DIALECTS, EMITTERS, Turn, final_delta, hex16, message,
                               response_events)

__all__ = ["DIALECTS", "ScriptedEngine", "Turn", "count_tokens"]


def _dumps(obj: Any) -> str:  # pydantic's model_dump_json and Starlette's JSONResponse: compact
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


EFFORTS = ("low", "medium", "high")  # chat_completion/protocol.py:183, a Literal
# FastAPI >= 0.121 puts the endpoint into str(RequestValidationError) (server_utils.py:333-339);
# where the image installs vllm is an assumption.
VLLM_DIR = "/usr/local/lib/python3.12/dist-packages/vllm"


def count_tokens(body: dict) -> int:
    """A rough prompt size: the JSON of what the chat template would render, 4 chars a token."""
    parts = body.get("messages") or body.get("input") or body.get("prompt") or ""
    return max(1, len(json.dumps([parts, body.get("tools") or []])) // 4)


class ScriptedEngine:
    def __init__(self, model: str = "glm47-flash", served_name: str | None = None) -> None:
        self.dialect = DIALECTS[model]
        self.model_id = served_name or model
        self.max_model_len: int = self.dialect["max_model_len"]
        self.script: list[Turn] = []
        self.bodies: list[dict[str, Any]] = []
        # body -> Turn: answers by what was asked (an agent's turns among its background
        # calls) instead of in script order
        self.respond: Callable[[dict], Turn] | None = None
        self.overflow_next = False  # the next chat request fails as an over-long prompt would
        self.overflows: Callable[[dict], bool] | None = None  # or those this says are too long
        self.think_end = None  # does the prompt hold </think>? None: guess (think_end_in_prompt)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedEngine":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def next_turn(self, body: dict) -> Turn:
        if self.respond is not None:
            return self.respond(body)
        with self._lock:
            return self.script.pop(0) if self.script else Turn(content="done")

    def think_end_in_prompt(self, body: dict) -> bool:
        """Whether the rendered prompt holds </think>: GLM's template ends it so when thinking is
        off; that Step's renders replayed `reasoning` (the field 0.16 reads, chat_utils.py:1453,
        1476-1481) inside <think>...</think> is an assumption: its template was not at hand."""
        if self.think_end is not None:
            return self.think_end
        if (body.get("chat_template_kwargs") or {}).get("enable_thinking") is False:
            return True
        return self.dialect["reasoning"] == "step3p5" and any(
            m.get("role") == "assistant" and m.get("reasoning") for m in body.get("messages") or [])

    # -- answers ---------------------------------------------------------------------------
    def models(self) -> dict:  # models/serving.py:101-122, engine/protocol.py:69-97
        now = int(time.time())
        perm = {"id": f"modelperm-{hex16()}", "object": "model_permission", "created": now,
                "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                "organization": "*", "group": None, "is_blocking": False}
        return {"object": "list", "data": [{
            "id": self.model_id, "object": "model", "created": now, "owned_by": "vllm",
            "root": self.dialect["root"], "parent": None, "max_model_len": self.max_model_len,
            "permission": [perm]}]}

    def check(self, body: dict) -> dict | None:
        """The 400 body vLLM 0.16 answers before generating, or None."""
        effort = body.get("reasoning_effort")
        if effort is not None and effort not in EFFORTS:
            err = {"type": "literal_error", "loc": ("body", "reasoning_effort"),
                   "msg": "Input should be 'low', 'medium' or 'high'", "input": effort,
                   "ctx": {"expected": "'low', 'medium' or 'high'"}}
            text = (f"1 validation error:\n  {err}\n\n  File \"{VLLM_DIR}/entrypoints/utils.py\", "
                    f"line 34, in create_chat_completion\n    POST /v1/chat/completions [{err}]")
            return _error(text, "Bad Request", None)  # server_utils.py:323-349
        # TokenizeParams (renderers/params.py:132-150, 227-241, 330-346) from
        # chat_completion/protocol.py:372-388; raised as VLLMValidationError (exceptions.py:29-35)
        param = "max_completion_tokens"
        if body.get(param) is None:
            param = "max_tokens"
        out = body.get(param) or 0
        total = self.max_model_len
        if out > total:
            return _error(f"{param}={out}cannot be greater than max_model_len=max_total_tokens="
                          f"{total}. Please request fewer output tokens. (parameter={param}, "
                          f"value={out})", "BadRequestError", param)
        prompt = count_tokens(body)
        if self.overflow_next or prompt > total - out or (self.overflows and self.overflows(body)):
            self.overflow_next = False
            passed = total - out + 1  # the prompt is cut at max_input + 1 tokens before the check
            return _error(f"You passed {passed} input tokens and requested {out} output tokens. "
                          f"However, the model's context length is only {total} tokens, resulting "
                          f"in a maximum input length of {total - out} tokens. Please reduce the "
                          f"length of the input prompt. (parameter=input_tokens, value={passed})",
                          "BadRequestError", "input_tokens")
        return None

    def plan(self, body: dict, turn: Turn) -> tuple[list, dict, str, int | None, bool]:
        d = self.dialect
        # Tools go through the tool parser only with tool_choice auto (CHAT:1875-1889)
        tools_on = bool(body.get("tools")) and body.get("tool_choice") in ("auto", None)
        steps = list(EMITTERS[d["tools"]](turn, body, tools_on, self.think_end_in_prompt(body)))
        if not tools_on and d["reasoning"] is None:
            steps = [(p, {"content": p}) for p, _ in steps]  # plain content path (CHAT:1143-1144)
        finish = "tool_calls" if turn.tool_calls and tools_on else "stop"  # CHAT:1284-1293
        stop = d["tool_stop"] if turn.tool_calls else d["stop"]
        return steps, final_delta(d, turn, body, tools_on), finish, stop, tools_on

    def chat_stream(self, body: dict, turn: Turn, rid: str) -> Iterator[str]:
        steps, last, finish, stop, _ = self.plan(body, turn)
        head = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.model_id}
        # The first chunk: role and content "", prompt_token_ids set to None (CHAT:752-786)
        yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                    "logprobs": None, "finish_reason": None}], "prompt_token_ids": None})
        for _, delta in steps:  # None: no chunk for that token (CHAT:1164-1172)
            if delta is not None:  # exclude_unset keeps the Nones passed in (CHAT:1205-1215, 1327)
                yield _sse({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                            "finish_reason": None, "token_ids": None}]})
        yield _sse({**head, "choices": [{"index": 0, "delta": last, "logprobs": None,
                    "finish_reason": finish, "stop_reason": stop, "token_ids": None}]})  # CHAT:1294
        options = body.get("stream_options")  # {} still means include_usage=True (utils.py:226-236)
        if isinstance(options, dict) and options.get("include_usage", True):
            yield _sse({**head, "choices": [], "usage": self.usage(body, steps)})  # CHAT:1332-1355
        yield "data: [DONE]\n\n"  # CHAT:1390

    def usage(self, body: dict, steps: list) -> dict:  # UsageInfo, engine/protocol.py:104-108
        prompt, done = count_tokens(body), len(steps) + 1  # + the stop token
        return {"prompt_tokens": prompt, "total_tokens": prompt + done, "completion_tokens": done}

    def chat_full(self, body: dict, turn: Turn, rid: str) -> dict:  # CHAT:1392-1785
        steps, _, finish, stop, tools_on = self.plan(body, turn)
        usage = {**self.usage(body, steps), "prompt_tokens_details": None}
        choice = {"index": 0, "message": message(self.dialect, turn, body, tools_on),
                  "logprobs": None, "finish_reason": finish, "stop_reason": stop, "token_ids": None}
        return {"id": rid, "object": "chat.completion", "created": int(time.time()),
                "model": self.model_id, "choices": [choice], "service_tier": None,
                "system_fingerprint": None, "usage": usage, "prompt_logprobs": None,
                "prompt_token_ids": None, "kv_transfer_params": None}

    def responses(self, body: dict, turn: Turn) -> Iterator[tuple[str, dict]]:
        """/v1/responses streaming, text only (responses/serving.py:1272-1576, 2426-2530): only
        the reasoning parser runs, so tool-call markup would come out as text (vllm #36435)."""
        d, now = self.dialect, int(time.time())
        pieces = [(p, delta) for p, delta in EMITTERS[d["tools"]](turn, {}, False, False)]
        if d["reasoning"] is None:
            pieces = [(p, {"content": p}) for p, _ in pieces]
        if d["reasoning"] != "step3p5":  # the stop token's "" is a content delta too
            pieces.append(("", {"content": ""}))
        base = self._response(body, now, [], "in_progress", None)
        yield "response.created", {"response": base}
        yield "response.in_progress", {"response": base}
        yield from response_events([delta for _, delta in pieces if delta])
        output = []
        if turn.reasoning and d["reasoning"]:
            output.append({"id": f"rs_{hex16()}", "summary": [], "type": "reasoning",
                           "content": [{"text": turn.reasoning, "type": "reasoning_text"}],
                           "encrypted_content": None, "status": None})
        if turn.content:
            output.append({"id": f"msg_{hex16()}", "content": [{
                "annotations": [], "text": turn.content, "type": "output_text", "logprobs": None}],
                "role": "assistant", "status": "completed", "type": "message"})
        prompt = count_tokens(body)
        usage = {"input_tokens": prompt, "input_tokens_details": {
            "cached_tokens": 0, "input_tokens_per_turn": [], "cached_tokens_per_turn": []},
            "output_tokens": len(pieces) + 1, "output_tokens_details": {
            "reasoning_tokens": 0, "tool_output_tokens": 0, "output_tokens_per_turn": [],
            "tool_output_tokens_per_turn": []}, "total_tokens": prompt + len(pieces) + 1}
        done = self._response(body, now, output, "completed", usage)
        yield "response.completed", {"response": done}

    def _response(self, body: dict, now: int, output: list, status: str, usage: Any) -> dict:
        # ResponsesResponse.from_request (responses/protocol.py:439-546)
        max_out = body.get("max_output_tokens") or self.max_model_len - count_tokens(body)
        return {"id": body.setdefault("request_id", f"resp_{hex16()}"), "created_at": now,
                "incomplete_details": None, "instructions": body.get("instructions"),
                "metadata": body.get("metadata"), "model": self.model_id, "object": "response",
                "output": output, "parallel_tool_calls": body.get("parallel_tool_calls", True),
                "temperature": body.get("temperature", 1.0),
                "tool_choice": body.get("tool_choice", "auto"),
                "tools": body.get("tools", []), "top_p": body.get("top_p", 1.0),
                "background": body.get("background", False), "max_output_tokens": max_out,
                "max_tool_calls": None, "previous_response_id": None, "prompt": None,
                "reasoning": body.get("reasoning"), "service_tier": "auto", "status": status,
                "text": body.get("text"), "top_logprobs": None, "truncation": "disabled",
                "usage": usage, "user": None, "input_messages": None, "output_messages": None}

    # -- HTTP --------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any, kind: str = "application/json") -> None:
                data = (payload if isinstance(payload, str) else _dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0].rstrip("/")
                if path == "/v1/models":
                    self._send(200, engine.models())
                else:  # /health: 200 with an empty body (serve/instrumentator/health.py:22-27)
                    self._send(200 if path == "/health" else 404, "")

            def do_POST(self) -> None:  # noqa: N802
                size = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(size) or b"{}")
                with engine._lock:
                    engine.bodies.append(body)
                path = self.path.split("?")[0].rstrip("/")
                if path == "/tokenize":  # serve/tokenize/protocol.py:150-154
                    count = count_tokens(body)
                    self._send(200, {"count": count, "max_model_len": engine.max_model_len,
                                     "tokens": list(range(count)), "token_strs": None})
                elif path == "/v1/chat/completions":
                    self._chat(body)
                elif path == "/v1/responses":
                    self._responses(body)
                else:
                    self._send(404, {"detail": "Not Found"})

            def _chat(self, body: dict) -> None:
                error = engine.check(body)
                if error:
                    self._send(400, error)
                    return
                # "chatcmpl-" + X-Request-Id or a random id (CHAT:356, engine/serving.py:1211-1220)
                rid = f"chatcmpl-{self.headers.get('X-Request-Id') or hex16()}"
                turn = engine.next_turn(body)
                if body.get("stream"):
                    self._stream(engine.chat_stream(body, turn, rid))
                else:
                    self._send(200, engine.chat_full(body, turn, rid))

            def _responses(self, body: dict) -> None:
                events = list(engine.responses(body, engine.next_turn(body)))
                for n, (_, event) in enumerate(events):
                    event["sequence_number"] = n  # responses/serving.py:2444-2452
                if not body.get("stream"):
                    self._send(200, events[-1][1]["response"])
                    return  # responses/api_router.py:34-44: "event:" line, then "data:"
                self._stream(f"event: {kind}\ndata: {_dumps({'type': kind, **event})}\n\n"
                             for kind, event in events)

            def _stream(self, chunks: Iterator[str]) -> None:  # chunked, as uvicorn sends it
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream; charset=utf-8")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in chunks:
                    data = chunk.encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

        return Handler


def _sse(chunk: dict) -> str:
    return f"data: {_dumps(chunk)}\n\n"


def _error(message: str, kind: str, param: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": 400}}  # ErrorInfo

