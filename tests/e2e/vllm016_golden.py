"""Writes tests/e2e/vllm016_golden.json: what vLLM 0.16.0's own chat and responses code sends
for the scripted engine's token pieces, per catalog model and scenario. Not a test: it needs
vLLM 0.16's Python source and an interpreter with its dependencies (torch, transformers,
fastapi), and runs no engine: the serving generators get RequestOutputs made here.

  pip download --no-deps vllm==0.16.0 -d /tmp/v && unzip -q /tmp/v/*.whl 'vllm/*' -d /tmp/v/src
  PYTHONPATH=. ~/.cache/vllm-mms/venvs/engine-*/bin/python tests/e2e/vllm016_golden.py /tmp/v/src
"""

from __future__ import annotations

import asyncio
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

from tests.e2e import scripted_engine as se
from tests.e2e import vllm016_dialects as dialects

GOLDEN = Path(__file__).with_name("vllm016_golden.json")
TOOLS = [{"type": "function", "function": {
    "name": "read", "description": "read a file", "parameters": {"type": "object", "properties": {
        "path": {"type": "string"}, "limit": {"type": "integer"}}}}}]
SPECIAL = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<arg_key>", "</arg_key>",
           "<arg_value>", "</arg_value>", "<function=", "</function>", "<parameter=",
           "</parameter>"]
READ = ("read", '{"path": "src/a b.py"}')
SCENARIOS = {  # name: (turn, request fields)
    "plain": (se.Turn("Let me think.", "Paris is the capital."), {}),
    "tools_text": (se.Turn("Let me think.", "Paris."), {"tools": TOOLS}),
    "call": (se.Turn("I will read it.", "Reading.", [READ]), {"tools": TOOLS}),
    "two_calls": (se.Turn("Two files.", None, [("read", '{"path": "x.py", "limit": 10}'),
                                                ("read", '{"path": "y.py"}')]), {"tools": TOOLS}),
    "escapes": (se.Turn("Odd path.", None, [("read", '{"path": "a \\"q\\" \\\\d é.py"}')]),
                {"tools": TOOLS}),
    "no_args": (se.Turn("No args.", None, [("read", "{}")]), {"tools": TOOLS}),
    "no_reasoning": (se.Turn(None, "Just text."), {"tools": TOOLS}),
    "markup_without_tools": (se.Turn("Hm.", "Text.", [READ]), {}),
    "thinking_off": (se.Turn(None, "Reading.", [READ]),
                     {"tools": TOOLS, "chat_template_kwargs": {"enable_thinking": False}}),
    "thinking_off_text": (se.Turn(None, "Plain."),
                          {"chat_template_kwargs": {"enable_thinking": False}}),
    "replayed_reasoning": (se.Turn("Now answer.", "It says hi.", []), {"tools": TOOLS, "messages": [
        {"role": "user", "content": "read a"},
        {"role": "assistant", "content": None, "reasoning": "I will read it.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "hi"}]}),
}


def load_vllm(src: str):
    sys.path.insert(0, src)
    sys.modules.setdefault("diskcache", types.SimpleNamespace(Cache=object))  # unused import
    from vllm.entrypoints.openai.chat_completion import serving, protocol
    from vllm.entrypoints.openai.responses import serving as rserving
    from vllm import outputs, reasoning, tool_parsers
    return SimpleNamespace(serving=serving, protocol=protocol, rserving=rserving, outputs=outputs,
                           reasoning=reasoning.ReasoningParserManager,
                           tools=tool_parsers.ToolParserManager)


class Tok:
    """Only the vocabulary the parsers look up; the text comes with each RequestOutput."""

    def get_vocab(self) -> dict[str, int]:
        return {tok: 9000 + n for n, tok in enumerate(SPECIAL)}


def request_outputs(v, pieces: list[str], stop: int | None, stream: bool, prompt: list[int]):
    vocab = Tok().get_vocab()
    ids = [vocab.get(p, 100 + n) for n, p in enumerate(pieces)]
    stop_id = stop or 7
    out = v.outputs
    if not stream:  # one final output with the whole text (RequestOutputKind.FINAL_ONLY)
        yield out.RequestOutput("r", None, prompt, None, [out.CompletionOutput(
            index=0, text="".join(pieces), token_ids=ids + [stop_id], cumulative_logprob=None,
            logprobs=None, finish_reason="stop", stop_reason=stop)], True)
        return
    for piece, tid in zip(pieces, ids):
        yield out.RequestOutput("r", None, prompt, None, [out.CompletionOutput(
            index=0, text=piece, token_ids=[tid], cumulative_logprob=None, logprobs=None)], False)
    yield out.RequestOutput("r", None, prompt, None, [out.CompletionOutput(  # the stop token
        index=0, text="", token_ids=[stop_id], cumulative_logprob=None, logprobs=None,
        finish_reason="stop", stop_reason=stop)], True)


async def _aiter(items):
    for item in items:
        yield item


def chat(v, model: str, turn: se.Turn, fields: dict, stream: bool) -> list[str] | dict:
    d = se.DIALECTS[model]
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream,
            **fields}
    if stream:
        body["stream_options"] = {"include_usage": True}
    engine = se.ScriptedEngine(model)
    steps, _, _, stop, _ = engine.plan(body, turn)
    engine.server.server_close()  # only its plan is wanted
    server = object.__new__(v.serving.OpenAIServingChat)
    server.__dict__.update(use_harmony=False, tool_call_id_type="random", enable_auto_tools=True,
                           tool_parser=v.tools.get_tool_parser(d["tools"]),
                           enable_force_include_usage=False, enable_log_outputs=False,
                           request_logger=None, response_role="assistant",
                           enable_prompt_tokens_details=False, log_error_stack=False)
    request = v.protocol.ChatCompletionRequest(**body)
    parser = None
    # The prompt as the chat template ends it: <think> opens reasoning, </think> when it is off.
    prompt = [1] * (se.count_tokens(body) - 1)
    prompt.append(Tok().get_vocab()["</think>" if engine.think_end_in_prompt(body) else "<think>"])
    if d["reasoning"]:
        parser = v.reasoning.get_reasoning_parser(d["reasoning"])(
            Tok(), chat_template_kwargs=dict(request.chat_template_kwargs or {}))
        parser.is_reasoning_end(prompt)  # create_chat_completion asks once (serving.py:449-454)
    outputs = _aiter(request_outputs(v, [p for p, _ in steps], stop, stream, prompt))
    meta = SimpleNamespace(final_usage_info=None)
    if stream:
        async def collect():
            return [chunk async for chunk in server.chat_completion_stream_generator(
                request, outputs, "chatcmpl-X", model, [], Tok(), meta, parser)]
        return asyncio.run(collect())
    full = asyncio.run(server.chat_completion_full_generator(
        request, outputs, "chatcmpl-X", model, [], Tok(), meta, parser))
    return json.loads(json.dumps(full.model_dump(), ensure_ascii=False))


def responses(v, model: str, turn: se.Turn) -> list[dict]:
    """The events between response.in_progress and response.completed."""
    d = se.DIALECTS[model]
    pieces = [p for p, _ in dialects.EMITTERS[d["tools"]](turn, {}, False, False)]
    server = object.__new__(v.rserving.OpenAIServingResponses)
    reasoning_cls = v.reasoning.get_reasoning_parser(d["reasoning"]) if d["reasoning"] else None
    server.parser = SimpleNamespace(reasoning_parser_cls=reasoning_cls) if reasoning_cls else None
    outputs = request_outputs(v, pieces, d["stop"], True, [1])
    contexts = [SimpleNamespace(last_output=o) for o in outputs]
    request = SimpleNamespace(request_id="resp_X", top_logprobs=0,
                              is_include_output_logprobs=lambda: False)

    async def collect():
        gen = server._process_simple_streaming_events(
            request, None, _aiter(contexts), None, model, Tok(), None, 0, lambda e: e)
        return [json.loads(e.model_dump_json()) async for e in gen]

    v.rserving.SimpleContext = SimpleNamespace  # the isinstance check in the loop
    return asyncio.run(collect())


def main(src: str) -> None:
    v = load_vllm(src)
    golden: dict = {}
    for model in se.DIALECTS:
        for name, (turn, fields) in SCENARIOS.items():
            golden[f"{model}/{name}/stream"] = chat(v, model, turn, fields, True)
            golden[f"{model}/{name}/full"] = chat(v, model, turn, fields, False)
        golden[f"{model}/responses"] = responses(v, model, SCENARIOS["plain"][0])
        golden[f"{model}/responses_text"] = responses(v, model, se.Turn(None, "Just text."))
    GOLDEN.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(golden)} cases to {GOLDEN}")


if __name__ == "__main__":
    main(sys.argv[1])
