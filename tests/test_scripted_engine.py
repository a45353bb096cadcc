"""The scripted vLLM 0.16 engine, driven with the openai SDK: its raw SSE lines and JSON bodies
equal what vLLM 0.16.0's own serving code sends for the same tokens (vllm016_golden.json, made
by tests/e2e/vllm016_golden.py), the SDK reads them, and its 400s are 0.16's, byte for byte.
No proxy: this is the engine alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.scripted_engine import DIALECTS, VLLM_DIR, ScriptedEngine, Turn
from tests.e2e.vllm016_golden import READ, SCENARIOS, TOOLS

GOLDEN = json.loads((Path(__file__).parent / "e2e" / "vllm016_golden.json").read_text())
HI = [{"role": "user", "content": "hi"}]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normal(text: str) -> str:
    """Only what is random or the clock differs between two runs."""
    text = re.sub(r'"created(_at)?":\d+', r'"created\1":0', text)
    text = re.sub(r"chatcmpl-tool-[0-9a-f]{16}", "chatcmpl-tool-ID", text)
    return UUID.sub("UUID", re.sub(r"call_[0-9a-f]{24}", "call_ID", text))


@pytest.fixture(scope="module")
def engines():
    started = {model: ScriptedEngine(model).__enter__() for model in DIALECTS}
    yield started
    for engine in started.values():
        engine.__exit__()


@pytest.fixture
def client():
    return lambda engine: openai.OpenAI(base_url=engine.base_url, api_key="sk-none", max_retries=0)


def scripted(engines, model: str, *turns: Turn) -> ScriptedEngine:
    engine = engines[model]
    engine.script, engine.bodies = list(turns), []
    engine.max_model_len = DIALECTS[model]["max_model_len"]
    return engine


def request(model: str, fields: dict, stream: bool) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def sdk_args(body: dict) -> dict:
    """The SDK's own keywords, the rest (chat_template_kwargs) as extra_body."""
    known = {"model", "messages", "tools", "stream_options", "reasoning_effort", "max_tokens"}
    return {**{k: v for k, v in body.items() if k in known},
            "extra_body": {k: v for k, v in body.items() if k not in known},
            "extra_headers": {"X-Request-Id": "X"}}


CASES = [(model, name) for model in DIALECTS for name in SCENARIOS]


@pytest.mark.parametrize(("model", "name"), CASES)
def test_streamed_chunks_are_vllm_016s_raw_sse_lines(engines, client, model, name):
    turn, fields = SCENARIOS[name]
    engine = scripted(engines, model, turn)
    body = request(model, fields, stream=True)
    with client(engine).chat.completions.with_streaming_response.create(
            stream=True, **sdk_args(body)) as response:
        lines = [line for line in response.iter_lines() if line]
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    golden = GOLDEN[f"{model}/{name}/stream"]
    expected = [line for chunk in golden for line in chunk.split("\n") if line]
    assert [normal(line) for line in lines] == [normal(line) for line in expected]
    assert engine.bodies == [{**body, "stream": True}]


@pytest.mark.parametrize(("model", "name"), CASES)
def test_whole_answers_are_vllm_016s_json(engines, client, model, name):
    turn, fields = SCENARIOS[name]
    engine = scripted(engines, model, turn)
    chat = client(engine).chat.completions
    raw = chat.with_raw_response.create(**sdk_args(request(model, fields, False)))
    assert normal(raw.http_response.text) == normal(json.dumps(
        GOLDEN[f"{model}/{name}/full"], ensure_ascii=False, separators=(",", ":")))
    raw.parse()  # the SDK takes it


@pytest.mark.parametrize("model", DIALECTS)
def test_the_sdk_reassembles_reasoning_text_and_tool_calls(engines, client, model):
    engine = scripted(engines, model, Turn("Two files.", "Reading.", [
        ("read", '{"path": "x.py", "limit": 10}'), ("read", '{"path": "y \\"q\\".py"}')]))
    reasoning, content, calls, finish = "", "", {}, None
    for chunk in client(engine).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], tools=TOOLS, stream=True):
        for choice in chunk.choices:
            delta = choice.delta
            reasoning += (delta.model_extra or {}).get("reasoning") or ""
            content += delta.content or ""
            for call in delta.tool_calls or []:
                got = calls.setdefault(call.index, {"name": "", "arguments": ""})
                got["name"] += (call.function and call.function.name) or ""
                got["arguments"] += (call.function and call.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert reasoning == ("" if model == "qwen3-next-coder" else "Two files.")
    assert content == "Reading." and finish == "tool_calls"
    assert [json.loads(c["arguments"]) for c in calls.values()] == [
        {"path": "x.py", "limit": 10}, {"path": 'y "q".py'}]
    assert [c["name"] for c in calls.values()] == ["read", "read"]


@pytest.mark.parametrize("model", DIALECTS)
@pytest.mark.parametrize("kind", ["responses", "responses_text"])
def test_responses_stream_is_vllm_016s_event_walk(engines, client, model, kind):
    turn = SCENARIOS["plain"][0] if kind == "responses" else Turn(None, "Just text.")
    engine = scripted(engines, model, turn)
    with client(engine).responses.with_streaming_response.create(
            model=model, input="hi", stream=True) as response:
        lines = [line for line in response.iter_lines() if line]
    kinds = [line.removeprefix("event: ") for line in lines[0::2]]
    events = [json.loads(line.removeprefix("data: ")) for line in lines[1::2]]
    assert kinds == [event["type"] for event in events]
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    def unnumbered(events: list[dict]) -> str:
        return normal(json.dumps([{k: v for k, v in e.items() if k != "sequence_number"}
                                  for e in events], sort_keys=True))

    assert unnumbered(events[2:-1]) == unnumbered(GOLDEN[f"{model}/{kind}"])
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["output"][-1]["content"][0]["text"] == turn.content
    engine.script = [turn]  # and the SDK's typed stream reads every event
    typed = client(engine).responses.create(model=model, input="hi", stream=True)
    assert [event.type for event in typed] == kinds


def test_a_reasoning_effort_0_16_does_not_know_is_a_400_with_its_body(engines, client):
    engine = scripted(engines, "glm47-flash")
    for effort in ("none", "minimal", "xhigh"):
        with pytest.raises(openai.BadRequestError) as caught:
            client(engine).chat.completions.create(model="glm47-flash", messages=HI,
                                                   reasoning_effort=effort)
        err = ("{'type': 'literal_error', 'loc': ('body', 'reasoning_effort'), 'msg': \"Input "
               f"should be 'low', 'medium' or 'high'\", 'input': '{effort}', 'ctx': "
               "{'expected': \"'low', 'medium' or 'high'\"}}")
        assert caught.value.response.json() == {"error": {
            "message": f"1 validation error:\n  {err}\n\n  File \"{VLLM_DIR}/entrypoints/"
                       "utils.py\", line 34, in create_chat_completion\n    POST "
                       f"/v1/chat/completions [{err}]",
            "type": "Bad Request", "param": None, "code": 400}}
    answer = client(engine).chat.completions.create(model="glm47-flash", messages=HI,
                                                    reasoning_effort="high")
    assert answer.choices[0].message.content == "done"


def test_a_prompt_over_the_context_is_0_16s_400(engines, client):
    engine = scripted(engines, "step-3.5-flash")
    engine.max_model_len = 1000
    long = [{"role": "user", "content": "word " * 1000}]
    chat = client(engine).chat.completions
    with pytest.raises(openai.BadRequestError) as caught:
        chat.create(model="step-3.5-flash", messages=long, max_tokens=256)
    # The prompt is cut at max_input + 1 tokens before the check, so that is the count it names.
    assert caught.value.response.json() == {"error": {
        "message": "You passed 745 input tokens and requested 256 output tokens. However, the "
                   "model's context length is only 1000 tokens, resulting in a maximum input "
                   "length of 744 tokens. Please reduce the length of the input prompt. "
                   "(parameter=input_tokens, value=745)",
        "type": "BadRequestError", "param": "input_tokens", "code": 400}}
    with pytest.raises(openai.BadRequestError) as caught:
        chat.create(model="step-3.5-flash", messages=HI, max_tokens=5000)
    assert caught.value.response.json()["error"]["message"] == (
        "max_tokens=5000cannot be greater than max_model_len=max_total_tokens=1000. Please request "
        "fewer output tokens. (parameter=max_tokens, value=5000)")
    engine.overflow_next = True  # a short prompt, failed on demand; the next one passes
    with pytest.raises(openai.BadRequestError, match="maximum input length of 1000 tokens"):
        chat.create(model="step-3.5-flash", messages=HI, stream=True)
    answer = chat.create(model="step-3.5-flash", messages=HI)
    assert answer.choices[0].message.content == "done"


def test_models_health_and_tokenize_answer_like_0_16(engines):
    engine = scripted(engines, "qwen3-next-coder")
    models = httpx.get(f"{engine.base_url}/models").json()
    card = models["data"][0]
    assert models["object"] == "list" and list(card) == [
        "id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"]
    assert (card["id"], card["owned_by"], card["root"], card["max_model_len"]) == (
        "qwen3-next-coder", "vllm", "Qwen/Qwen3-Coder-Next-FP8", 204800)
    assert card["permission"][0]["id"].startswith("modelperm-")
    root = engine.base_url.removesuffix("/v1")
    health = httpx.get(f"{root}/health")
    assert (health.status_code, health.content) == (200, b"")
    counted = httpx.post(f"{root}/tokenize", json={"model": "qwen3-next-coder", "messages": [
        {"role": "user", "content": "x" * 400}], "add_generation_prompt": True}).json()
    assert list(counted) == ["count", "max_model_len", "tokens", "token_strs"]
    assert counted["count"] > 100 and len(counted["tokens"]) == counted["count"]
    assert counted["token_strs"] is None and counted["max_model_len"] == 204800


def test_the_script_runs_in_order_then_answers_done_and_every_body_is_kept(engines, client):
    engine = scripted(engines, "glm47-flash", Turn("Read it.", None, [READ]),
                      Turn(None, "It says hi."))
    chat = client(engine).chat.completions
    ask = [{"role": "user", "content": "read a"}]
    first = chat.create(model="glm47-flash", messages=ask, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "read"
    assert json.loads(call.function.arguments) == {"path": "src/a b.py"}
    assert re.fullmatch(r"chatcmpl-tool-[0-9a-f]{16}", call.id)
    replay = [*ask, {"role": "assistant", "content": "", "reasoning": "Read it.",
                     "tool_calls": [call.model_dump()]},
              {"role": "tool", "tool_call_id": call.id, "content": "hi"}]
    second = chat.create(model="glm47-flash", messages=replay, tools=TOOLS)
    third = chat.create(model="glm47-flash", messages=replay, tools=TOOLS)
    answers = [second.choices[0].message.content, third.choices[0].message.content]
    assert answers == ["It says hi.", "done"]
    assert [len(body["messages"]) for body in engine.bodies] == [1, 3, 3]
    assert engine.bodies[1]["messages"][1]["reasoning"] == "Read it."
