"""The route gate in front of LiteLLM, on its own: which paths pass, and with which key."""

from __future__ import annotations

import asyncio
import json

import pytest

from vllm_mms.proxy.gateway import RouteGate, error_body


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


ADMIN = ["/routes", "/metrics", "/metrics/", "/health", "/health/services", "/model/info",
         "/v1/model/info", "/model_group/info"]
NOT_SERVED = ["/", "/key/generate", "/config/update", "/public/model_hub",
              "/.well-known/openid-configuration", "/api/event_logging/batch",
              "/v1/chat/completions/../../routes", "/v1/messages/x/y", "/debug/asyncio-tasks",
              "/ui/", "/register", "/models/x:countTokens", "/v1beta/models/x:countTokens",
              "/v1/files", "/v1/batches", "/v1/assistants", "/v1/vector_stores/x",
              "/v1/containers", "/v1/fine_tuning/jobs"]


@pytest.mark.parametrize("path", ADMIN + NOT_SERVED)
def test_everything_else_needs_the_master_key(path, monkeypatch):
    assert call(path, {}, monkeypatch) == (401, {"error": {
        "message": "Authentication Error: no API key given", "type": "auth_error", "code": "401"}})
    assert call(path, {"Authorization": "Bearer sk-mms-a-database-key"}, monkeypatch) == (403, {
        "error": {"message": "this route needs the master key", "type": "auth_error",
                  "code": "403"}})


@pytest.mark.parametrize("path", ADMIN)
def test_the_master_key_reaches_the_operational_routes(path, monkeypatch):
    for header in ("Authorization", "x-api-key", "api-key", "X-LiteLLM-Api-Key"):
        value = "Bearer sk-master" if header == "Authorization" else "sk-master"
        assert call(path, {header: value}, monkeypatch)[0] == 200, header


@pytest.mark.parametrize("path", NOT_SERVED)
def test_nothing_else_is_served_even_with_the_master_key(path, monkeypatch):
    # LiteLLM would forward files/batches/vector stores... to api.openai.com or fail (500).
    assert call(path, {"Authorization": "Bearer sk-master"}, monkeypatch) == (404, {"error": {
        "message": f"{path} is not served by this proxy: it serves the model APIs "
                   "(/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, "
                   "/v1/responses, /v1/messages) and, with the master key, /health, /metrics "
                   "and /model/info",
        "type": "not_found_error", "code": "404"}})


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
    # LiteLLM read it before any hook: "WebSearchOptions() argument after ** must be a
    # mapping, not list" (500)
    (b'{"model": "m", "web_search_options": [null, null]}', 400,
     "web_search_options must be an object or null, not array"),
    (b'{"model": "m", "web\\u005fsearch_options": "x"}', 400,
     "web_search_options must be an object or null, not string"),
    (b'{"model": "m", "web_search_options": {}, "n": 9}', 200, None),  # n: the hook's (per model)
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


def test_embedding_inputs_litellm_would_crash_on_are_refused(monkeypatch):
    # `input: [[]]` made LiteLLM's endpoint answer 500 "list index out of range" (found by
    # the spec fuzzing) before any hook runs: the gate refuses it.
    async def post(body: bytes, path: str = "/v1/embeddings") -> tuple[int, bytes]:
        monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-master")

        async def inner(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        async def receive():
            return {"type": "http.request", "body": body}

        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": path, "method": "POST", "headers": []}
        await RouteGate(inner)(scope, receive, send)
        return sent[0]["status"], sent[1]["body"]

    # count_tokens: LiteLLM counts without our pre-call hook, and failed on unknown blocks
    status, answer = asyncio.run(post(b'{"model": "m", "messages": [{"role": "wizard", '
                                      b'"content": "x"}]}', "/v1/messages/count_tokens"))
    assert (status, json.loads(answer)) == (400, {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "messages[0].role must be one of user, assistant, system, not 'wizard'"}})
    # found by the spec fuzzer: LiteLLM's count answered 500 "'float' object is not subscriptable"
    status, answer = asyncio.run(post(b'{"model": "m", "system": [-1.4e-45], "messages": '
                                      b'[{"role": "user", "content": "x"}]}',
                                      "/v1/messages/count_tokens"))
    assert (status, json.loads(answer)) == (400, {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "system[0] must be a content block (an object with a type), not number"}})
    # LiteLLM's counter reads deeper than the shape table (found by the spec fuzzer: a
    # document's title as a number; the others read the same way): the gate counts first
    for blocks_or_tools, reason in [
        (b'"messages": [{"role": "user", "content": [{"type": "document", "title": 1.5, '
         b'"source": {"type": "text", "data": "d"}}]}]',
         "Error getting number of tokens from content list: object of type 'float' has no "
         "len()"),
        (b'"messages": [{"role": "user", "content": [{"type": "document", '
         b'"source": {"type": "url", "url": 2.5}}]}]',
         "Error getting number of tokens from content list: 'float' object has no attribute "
         "'startswith'"),
        (b'"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]',
         "Error getting number of tokens from content list: 'type'"),
        (b'"messages": [{"role": "user", "content": "x"}], "tools": [{"name": "t", '
         b'"input_schema": {"properties": {"a": 1}}}]', "'int' object has no attribute 'get'"),
    ]:
        status, answer = asyncio.run(post(b'{"model": "m", ' + blocks_or_tools + b'}',
                                          "/v1/messages/count_tokens"))
        assert (status, json.loads(answer)) == (400, {"type": "error", "error": {
            "type": "invalid_request_error",
            "message": f"the request's content cannot be counted: {reason}"}})
    assert asyncio.run(post(b'{"model": "m", "system": "s", "messages": [{"role": "user", '
                            b'"content": [{"type": "document", "title": "t", "source": '
                            b'{"type": "text", "data": "d"}}]}], "tools": [{"name": "t", '
                            b'"input_schema": {"properties": {"a": {"type": "string"}}}}]}',
                            "/v1/messages/count_tokens"))[0] == 200
    status, answer = asyncio.run(post(b'{"model": "m", "input": [[]]}'))
    assert (status, json.loads(answer)) == (400, {"error": {
        "message": "input must be a string, a list of strings, a list of token ids or a list "
                   "of token-id lists, with nothing empty",
        "type": "invalid_request_error", "code": "400"}})
    assert asyncio.run(post(b'{"model": "m", "input": [[1, 2], [3]]}'))[0] == 200


async def _answer(path: str, status: int, body: bytes, chunks: int = 1) -> tuple[int, bytes, list]:
    """What the client gets through the gate when LiteLLM answers `status` with `body`."""
    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain"),
                                (b"content-length", str(len(body)).encode()),
                                (b"x-litellm-call-id", b"abc")]})
        step = max(1, len(body) // chunks)
        pieces = [body[i:i + step] for i in range(0, len(body), step)] or [b""]
        for i, piece in enumerate(pieces):
            await send({"type": "http.response.body", "body": piece,
                        "more_body": i < len(pieces) - 1})

    async def receive():
        return {"type": "http.request", "body": b""}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "GET", "headers": []}
    await RouteGate(inner)(scope, receive, send)
    return (sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]),
            sent[0]["headers"])


@pytest.mark.parametrize("path, status, body, expected", [
    # Starlette's 405 and LiteLLM's model lookup answer {"detail": ...}
    ("/v1/chat/completions", 405, b'{"detail":"Method Not Allowed"}',
     {"error": {"message": "Method Not Allowed", "type": "invalid_request_error",
                "param": None, "code": "405"}}),
    ("/v1/models/gpt-4o", 404, b'{"detail":"The model `gpt-4o` does not exist"}',
     {"error": {"message": "The model `gpt-4o` does not exist", "type": "not_found_error",
                "param": None, "code": "404"}}),
    ("/v1/responses/x", 500, b"Internal Server Error",
     {"error": {"message": "Internal Server Error", "type": "server_error", "param": None,
                "code": "500"}}),
    ("/v1/embeddings", 400, b'{"error": "input is wrong"}',
     {"error": {"message": "input is wrong", "type": "invalid_request_error", "param": None,
                "code": "400"}}),
    # our custom_auth answers in OpenAI's shape on every route: Anthropic's on /v1/messages
    ("/v1/messages", 401,
     b'{"error":{"message":"Authentication Error: invalid API key","type":"auth_error",'
     b'"param":"api_key","code":"401"}}',
     {"type": "error", "error": {"type": "authentication_error",
                                 "message": "Authentication Error: invalid API key"}}),
    ("/v1/messages/count_tokens", 429, b'{"detail": {"limit": 3}}',
     {"type": "error", "error": {"type": "rate_limit_error", "message": '{"limit": 3}'}}),
    ("/v1/messages", 503, b"",
     {"type": "error", "error": {"type": "api_error", "message": "Service Unavailable"}}),
])
def test_errors_come_in_the_apis_own_format(path, status, body, expected, monkeypatch):
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-master")
    code, answer, headers = asyncio.run(_answer(path, status, body, chunks=2))
    assert code == status and json.loads(answer) == expected
    assert (b"content-length", str(len(answer)).encode()) in headers
    assert (b"content-type", b"application/json") in headers
    assert (b"x-litellm-call-id", b"abc") in headers


@pytest.mark.parametrize("path, status, body", [
    ("/v1/chat/completions", 400,
     b'{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":"400"}}'),
    ("/v1/messages", 400, b'{"type":"error","error":{"type":"invalid_request_error",'
                          b'"message":"bad"}}'),
    ("/v1/chat/completions", 200, b'data: {"a": 1}\n\ndata: [DONE]\n\n'),
    ("/v1/messages", 200, b"not json at all"),
])
def test_well_formed_errors_and_successes_pass_unchanged(path, status, body, monkeypatch):
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-master")
    code, answer, headers = asyncio.run(_answer(path, status, body, chunks=3))
    assert (code, answer) == (status, body)
    assert (b"content-type", b"text/plain") in headers  # untouched


def test_the_gates_own_refusals_on_anthropic_routes_are_anthropic_errors(monkeypatch):
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-master")

    async def post() -> tuple[int, bytes]:
        async def receive():
            return {"type": "http.request", "body": b"[1]"}

        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": "/v1/messages", "method": "POST", "headers": []}
        await RouteGate(None)(scope, receive, send)  # type: ignore[arg-type]
        return sent[0]["status"], sent[1]["body"]

    status, answer = asyncio.run(post())
    assert (status, json.loads(answer)) == (400, {"type": "error", "error": {
        "type": "invalid_request_error", "message": "the request body must be a JSON object"}})


def _raising(exc: BaseException, after_start: bool = False):
    async def inner(scope, receive, send):
        if after_start:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise exc
    return inner


def _run(inner, path="/v1/chat/completions") -> tuple[int, dict]:
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b'{"model": "m"}'}

    scope = {"type": "http", "path": path, "method": "POST", "headers": []}
    asyncio.run(RouteGate(inner)(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


def _litellm_rejection() -> BaseException:
    """What LiteLLM 1.106.12 lets escape for a body with `workspace_id` (found by the spec
    fuzzing): its auth check's ValueError, then its error handler's failed prisma import."""
    try:
        try:
            raise ValueError("Rejected Request: workspace_id is not allowed in request body. "
                             "Clientside passthrough requires explicit admin opt-in\nmore")
        except ValueError:
            raise ModuleNotFoundError("No module named 'prisma'")
    except ModuleNotFoundError as exc:
        return exc


def test_a_request_litellm_refuses_by_raising_is_a_400(monkeypatch):
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-master")
    assert _run(_raising(_litellm_rejection())) == (400, {"error": {
        "message": "Rejected Request: workspace_id is not allowed in request body. Clientside "
                   "passthrough requires explicit admin opt-in",
        "type": "invalid_request_error", "code": "400"}})
    assert _run(_raising(_litellm_rejection()), "/v1/messages") == (400, {
        "type": "error", "error": {
            "type": "invalid_request_error",
            "message": "Rejected Request: workspace_id is not allowed in request body. "
                       "Clientside passthrough requires explicit admin opt-in"}})


def test_any_other_escape_is_a_json_500_and_an_answered_one_is_reraised(monkeypatch):
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-master")
    assert _run(_raising(RuntimeError("boom"))) == (500, {"error": {
        "message": "the proxy failed on this request (RuntimeError); its log has the details",
        "type": "server_error", "code": "500"}})
    with pytest.raises(RuntimeError):
        _run(_raising(RuntimeError("late"), after_start=True))


def litellm_wrapped(vllm_message: str, anthropic: bool) -> bytes:
    """A vLLM 400 as LiteLLM 1.106.12 answers it (ContextWindowExceededError), recorded."""
    inner = json.dumps({"error": {"message": vllm_message, "type": "BadRequestError",
                                  "param": None, "code": 400}})
    message = (f"litellm.ContextWindowExceededError: litellm.BadRequestError: "
               f"ContextWindowExceededError: Hosted_vllmException - {inner}\nmodel=glm47-flash. "
               f"context_window_fallbacks=None. fallbacks=None.")
    if anthropic:
        return json.dumps({"type": "error", "error": {"type": "invalid_request_error",
                                                      "message": message}}).encode()
    return json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "param": None, "code": "400"}}).encode()


# vLLM 0.16.0's chat path, vllm/renderers/params.py (_token_len_check); LiteLLM does not take
# it for a context overflow, so it comes wrapped as a BadRequestError
CHAT_PROMPT_TOO_LONG_016 = ("You passed 99073 input tokens and requested 32000 output tokens. "
                            "However, the model's context length is only 131072 tokens, "
                            "resulting in a maximum input length of 99072 tokens. Please reduce "
                            "the length of the input prompt. (parameter=input_tokens, "
                            "value=99073)")
CHAT_CHARACTERS_016 = ("You passed 9999999 input characters and requested 32000 output tokens. "
                       "However, the model's context length is only 131072 tokens, resulting in "
                       "a maximum input length of 99072 tokens (at most 1981440 characters). "
                       "Please reduce the length of the input prompt.")
# vLLM 0.16.0, vllm/entrypoints/openai/engine/serving.py (_validate_input)
PROMPT_TOO_LONG_016 = ("This model's maximum context length is 131072 tokens. However, your "
                       "request has 140000 input tokens. Please reduce the length of the input "
                       "messages.")
OUTPUT_TOO_LONG_016 = ("'max_tokens' or 'max_completion_tokens' is too large: 32000. This "
                       "model's maximum context length is 131072 tokens and your request has "
                       "120000 input tokens (32000 > 131072 - 120000).")
# the CPU build (vllm/renderers/params.py)
PROMPT_TOO_LONG_CPU = ("This model's maximum context length is 8192 tokens. However, your prompt "
                       "contains at least 8193 input tokens, which exceeds this limit even "
                       "without any output tokens. Please reduce the length of the input prompt.")
CHARACTERS_CPU = ("This model's maximum context length is 8192 tokens. However, your prompt "
                  "contains 99999 characters (more than 98304 characters, which is the upper "
                  "bound for 8192 input tokens). Please reduce the length of the input prompt.")


@pytest.mark.parametrize("vllm_message, anthropic, expected", [
    (CHAT_PROMPT_TOO_LONG_016, True, {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "prompt is too long: 99073 tokens > 99072 maximum"}}),
    (CHAT_CHARACTERS_016, True, {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "prompt is too long for the model's 131072-token context"}}),
    (CHAT_PROMPT_TOO_LONG_016, False, {"error": {
        "message": "This model's maximum context length is 131072 tokens. However, your messages "
                   "resulted in 99073 tokens, more than the 99072 the requested completion "
                   "leaves. Please reduce the length of the messages or completion.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
    (PROMPT_TOO_LONG_016, True, {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "prompt is too long: 140000 tokens > 131072 maximum"}}),
    (OUTPUT_TOO_LONG_016, True, {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "input length and `max_tokens` exceed context limit: 120000 + 32000 > 131072, "
                   "decrease input length or `max_tokens` and try again"}}),
    (PROMPT_TOO_LONG_CPU, True, {"type": "error", "error": {
        "type": "invalid_request_error", "message": "prompt is too long: 8193 tokens > 8192 maximum"}}),
    (CHARACTERS_CPU, True, {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "prompt is too long for the model's 8192-token context"}}),
    (PROMPT_TOO_LONG_016, False, {"error": {
        "message": "This model's maximum context length is 131072 tokens. However, your messages "
                   "resulted in 140000 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
    (OUTPUT_TOO_LONG_016, False, {"error": {
        "message": "This model's maximum context length is 131072 tokens. However, you requested "
                   "152000 tokens (120000 in the messages, 32000 in the completion). Please "
                   "reduce the length of the messages or completion.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
    (CHARACTERS_CPU, False, {"error": {
        "message": "This model's maximum context length is 8192 tokens. Please reduce the length "
                   "of the messages.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}),
])
def test_a_context_overflow_is_answered_in_each_apis_own_terms(vllm_message, anthropic, expected):
    body = litellm_wrapped(vllm_message, anthropic)
    assert json.loads(error_body(400, body, anthropic)) == expected


def test_other_errors_that_mention_no_context_limit_pass_unchanged():
    body = litellm_wrapped("max_tokens must be at least 1, got 0.", anthropic=False)
    assert error_body(400, body, False) is body
    # a 500 that quotes the limit is not a client's overflow
    assert json.loads(error_body(500, litellm_wrapped(PROMPT_TOO_LONG_016, True), True))[
        "error"]["message"].startswith("litellm.ContextWindowExceededError")


def test_the_model_list_says_each_models_state(tmp_path, monkeypatch):
    """GET /v1/models: each id also says its catalog model, whether it loads on demand, and
    its state (a resident one ready, an on-demand one as the load board says)."""
    import yaml

    from vllm_mms.proxy import board

    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-master")
    monkeypatch.setenv("MMS_LOAD_BOARD", str(tmp_path / "loads"))
    models = tmp_path / "models.yml"
    models.write_text(yaml.safe_dump({
        "model": "a", "model_names": ["a", "vllm_agent"],
        "also_served": [{"model": "b", "model_names": ["b"], "on_demand": True},
                        {"model": "c", "model_names": ["c", "c2"], "on_demand": True}]}))
    monkeypatch.setenv("MMS_MODELS_FILE", str(models))
    board.save_states({"b": board.ModelState("ready", 1.0)})
    listing = {"object": "list", "data": [{"id": i, "object": "model"}
                                          for i in ("a", "vllm_agent", "b", "c2", "x")]}

    async def inner(scope, receive, send):
        body = json.dumps(listing).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body[:10], "more_body": True})
        await send({"type": "http.response.body", "body": body[10:]})

    async def run():
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b""}

        await RouteGate(inner)({"type": "http", "path": "/v1/models", "method": "GET",
                                "headers": []}, receive, send)
        return sent

    start, body = asyncio.run(run())
    answer = json.loads(body["body"])
    assert [(m["id"], m.get("catalog"), m.get("on_demand"), m.get("state"))
            for m in answer["data"]] == [("a", "a", False, "ready"),
                                         ("vllm_agent", "a", False, "ready"),
                                         ("b", "b", True, "ready"), ("c2", "c", True, "unloaded"),
                                         ("x", None, None, None)]
    assert (b"content-length", str(len(body["body"])).encode()) in start["headers"]
