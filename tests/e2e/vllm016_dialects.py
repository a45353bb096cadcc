"""How vLLM 0.16.0 streams each catalog model's output: per dialect, the token pieces the model
generates for a scripted turn and the delta 0.16's parsers send for each (None: no chunk).
Citations are paths inside the vllm-0.16.0 wheel with line numbers; CHAT is
vllm/entrypoints/openai/chat_completion/serving.py. Checked against 0.16's own serving and
parser code fed the same pieces (vllm016_golden.py writes vllm016_golden.json). Model text is
cut into word pieces, one token each; special tokens are pieces of their own."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

# The proxy's model names -> what `vllm serve` runs (models/*.yml). stop/tool_stop: the token a
# turn ends on and its stop_reason; GLM's <|user|> and <|observation|> are generation_config
# eos ids besides the tokenizer's, so vLLM reports them (vllm/sampling_params.py, v1 scheduler).
DIALECTS: dict[str, dict[str, Any]] = {
    "glm47-flash": dict(reasoning="glm45", tools="glm47", root="zai-org/GLM-4.7-Flash",
                        max_model_len=131072, stop=154827, tool_stop=154829),
    "qwen3-next-coder": dict(reasoning=None, tools="qwen3_coder", root="Qwen/Qwen3-Coder-Next-FP8",
                             max_model_len=204800, stop=None, tool_stop=None),
    "step-3.5-flash": dict(reasoning="step3p5", tools="step3p5",
                           root="stepfun-ai/Step-3.5-Flash-FP8", max_model_len=65536, stop=None,
                           tool_stop=None),
}
NULL: dict[str, Any] = {"content": None}  # step3p5_tool_parser.py:222/606, sent as a chunk


@dataclass
class Turn:
    reasoning: str | None = None
    content: str | None = None
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments JSON)


def hex16() -> str:  # vllm/utils/__init__.py:11-12, random_uuid()
    return f"{uuid.uuid4().int & (2**64 - 1):016x}"


def tool_id() -> str:  # chat_utils.py:1596-1601
    return f"chatcmpl-tool-{hex16()}"


def _words(text: str | None) -> list[str]:
    return re.findall(r"\s*\S+|\s+", text or "")


def _schema_type(tools: list | None, name: str, key: str) -> str | None:
    for tool in tools or []:
        fn = tool.get("function") or {}
        if fn.get("name") == name:
            prop = ((fn.get("parameters") or {}).get("properties") or {}).get(key)
            return str(prop.get("type", "string")).lower() if isinstance(prop, dict) else None
    return None


def _coerce(dialect: str, kind: str | None, raw: str) -> Any:
    """The argument value each parser puts into the JSON, from the text the model wrote."""
    if dialect == "glm47":  # glm4_moe_tool_parser.py:96-108, 122-139: only "string" stays text
        if kind == "string":
            return raw
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    kind = kind or ("string" if dialect == "step3p5" else None)  # step3p5_tool_parser.py:1233
    if kind in (None, "string", "str", "text", "enum"):  # qwen3coder_tool_parser.py:144-163
        return raw
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith(("num", "float")):
            value = float(raw)
            return value if value != int(value) else int(value)
    except ValueError:
        return raw
    if kind in ("boolean", "bool"):
        return raw.lower() == "true"
    if dialect == "step3p5":  # step3p5_tool_parser.py:1310: objects stay raw text
        return raw
    try:
        return json.loads(raw)  # qwen3coder_tool_parser.py:212-219
    except ValueError:
        return raw


def _args(dialect: str, tools: list | None, name: str, arguments: str) -> list[tuple]:
    """(key, written text, is string typed, value as parsed) for each argument."""
    out = []
    for key, value in json.loads(arguments or "{}").items():
        raw = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        kind = _schema_type(tools, name, key)
        is_str = kind == "string" or (dialect == "step3p5" and kind is None)
        out.append((key, raw, is_str, _coerce(dialect, kind, raw)))
    return out


def _call(index: int, frag: str, cid: str | None = None, name: str | None = None,
          repeat: bool = False) -> dict:
    """A tool-call delta; DeltaToolCall field order id, type, index, function
    (engine/protocol.py:239-243). step3p5 repeats id/type and sends name null (repeat)."""
    full = bool(name or repeat)
    fn: dict[str, Any] = {"name": name, "arguments": frag} if full else {"arguments": frag}
    call: dict[str, Any] = {"id": cid, "type": "function"} if cid and full else {}
    call.update(index=index, function=fn)
    return {"tool_calls": [call]}


def _calls(steps: Iterator[tuple[str, dict | None]], tools_on: bool, extra: dict) -> Iterator:
    """Without a tool parser (no tools in the request, or /v1/responses) the markup is text."""
    for piece, delta in steps:
        yield piece, delta if tools_on else {"content": piece, **extra}


# Each emitter yields (piece the model generates, delta vLLM sends for it or None).
def _glm(turn: Turn, req: dict, tools_on: bool, ended: bool) -> Iterator[tuple[str, dict | None]]:
    kw = req.get("chat_template_kwargs") or {}
    # glm45 = DeepSeekV3ReasoningWithThinkingParser: thinking unless the kwargs turn it off
    # (reasoning/__init__.py:35-38, deepseek_v3_reasoning_parser.py:27-38, 75-88).
    think = (kw.get("thinking") is None and kw.get("enable_thinking") is None) or bool(
        kw.get("thinking") or kw.get("enable_thinking"))
    if kw.get("enable_thinking") is not False:  # the template's prompt ends <think> or </think>
        for piece in _words(turn.reasoning):  # deepseek_r1_reasoning_parser.py:45-65
            yield piece, {"reasoning": piece} if think else {"content": piece}
        yield "</think>", None if think else {"content": "</think>"}  # basic_parsers.py:108-112
    for piece in _words(turn.content):
        yield piece, {"content": piece}
    yield from _calls(_glm_calls(turn, req), tools_on, {})


def _glm_calls(turn: Turn, req: dict) -> Iterator[tuple[str, dict | None]]:
    for i, (name, arguments) in enumerate(turn.tool_calls):
        cid, first = tool_id(), True
        yield "<tool_call>", None
        yield name, None  # the name is cut at the next tag (glm4_moe_tool_parser.py:256-280)
        for key, raw, is_str, value in _args("glm47", req.get("tools"), name, arguments):
            yield "<arg_key>", _call(i, "", cid, name) if first else None
            yield key, None
            yield "</arg_key>", None
            lead = ("{" if first else ",") + json.dumps(key, ensure_ascii=False) + ":"
            first = False
            if is_str:  # strings stream as they come (glm4_moe_tool_parser.py:328-347, 284-311)
                yield "<arg_value>", _call(i, lead + '"')
                for piece in _words(raw):
                    yield piece, _call(i, json.dumps(piece, ensure_ascii=False)[1:-1])
                yield "</arg_value>", _call(i, '"')
            else:  # others whole at </arg_value> (glm4_moe_tool_parser.py:348-364, 477-504)
                yield "<arg_value>", None
                yield raw, None
                yield "</arg_value>", _call(i, lead + json.dumps(value, ensure_ascii=False))
        # Without arguments the name goes out at </tool_call> (glm4_moe_tool_parser.py:367-390)
        yield "</tool_call>", _call(i, "}") if not first else _call(i, "", cid, name)


def _qwen(turn: Turn, req: dict, tools_on: bool, ended: bool) -> Iterator[tuple[str, dict | None]]:
    for piece in _words(turn.content):  # qwen3coder_tool_parser.py:409-433
        yield piece, {"content": piece}
    yield from _calls(_qwen_calls(turn, req), tools_on, {})


def _qwen_calls(turn: Turn, req: dict) -> Iterator[tuple[str, dict | None]]:
    for i, (name, arguments) in enumerate(turn.tool_calls):
        cid = f"call_{uuid.uuid4().hex[:24]}"  # qwen3coder_tool_parser.py:89-91
        yield from (("<tool_call>", None), ("\n", None), ("<function=", None), (name, None))
        yield ">", _call(i, "", cid, name)  # qwen3coder_tool_parser.py:497-509
        yield "\n", _call(i, "{")  # qwen3coder_tool_parser.py:515-524
        params = _args("qwen3_coder", req.get("tools"), name, arguments)
        for n, (key, raw, _, value) in enumerate(params):
            yield from (("<parameter=", None), (key, None), (">", None), ("\n", None))
            yield from ((p, None) for p in (_words(raw) if isinstance(value, str) else [raw]))
            yield "\n", None
            frag = ("" if n == 0 else ", ") + f'"{key}": ' + json.dumps(value, ensure_ascii=False)
            yield "</parameter>", _call(i, frag)  # whole, once closed (:637-686)
            yield "\n", None
        yield "</function>", _call(i, "}")  # qwen3coder_tool_parser.py:530-577
        yield from (("\n", None), ("</tool_call>", None))


def _step(turn: Turn, req: dict, tools_on: bool, ended: bool) -> Iterator[tuple[str, dict | None]]:
    if tools_on and ended:  # </think> in the prompt: is_reasoning_end is stateful
        # (step3p5_reasoning_parser.py:47-51): asked once at CHAT:449-454, it says True the
        # second time (CHAT:829-838), so reasoning is over before it starts and every token
        # goes to the tool parser (CHAT:1056-1062): reasoning comes out as content.
        for piece in _words(turn.reasoning) + ["\n", "</think>", "\n"] + _words(turn.content):
            yield piece, {"content": piece}
        yield from _step_calls(turn, req)
        return
    # step3p5_reasoning_parser.py:148-153 builds DeltaMessage(reasoning=, content=) with both set
    for piece in _words(turn.reasoning):
        yield piece, {"content": None, "reasoning": piece}
    yield "\n", None  # held, then dropped before </think> (step3p5_reasoning_parser.py:122-135)
    yield "</think>", None
    # The newline after </think> ends reasoning (is_reasoning_end with end_offset, :47-51); the
    # tool parser is then called on empty text (CHAT:1093-1114) and answers
    # DeltaMessage(content=None) (step3p5_tool_parser.py:222).
    yield "\n", NULL if tools_on else None
    for piece in _words(turn.content):
        yield piece, {"content": piece} if tools_on else {"content": piece, "reasoning": None}
    yield from _calls(_step_calls(turn, req), tools_on, {"reasoning": None})


def _step_calls(turn: Turn, req: dict) -> Iterator[tuple[str, dict | None]]:
    for i, (name, arguments) in enumerate(turn.tool_calls):
        cid, params = tool_id(), _args("step3p5", req.get("tools"), name, arguments)
        delta = lambda frag, nm=None: _call(i, frag, cid, nm, repeat=True)  # noqa: E731
        yield from (("<tool_call>", NULL), ("\n", NULL), ("<function=", NULL), (name, NULL))
        yield ">", delta("", name)  # step3p5_tool_parser.py:846-858
        for n, (key, raw, is_str, value) in enumerate(params):
            yield from (("\n", NULL), ("<parameter=", NULL), (key, NULL))
            yield ">", delta(('{"' if n == 0 else ', "') + key + '": ')  # :872-908
            yield "\n", delta('"') if is_str else NULL  # the opening quote (:933-952)
            if is_str:
                for piece in _words(raw):  # :954-983, escaped piece by piece
                    yield piece, delta(json.dumps(piece, ensure_ascii=False)[1:-1])
            else:
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                yield raw, delta(text)
            yield "\n", delta("")  # the trailing newline is held back (:955-961)
            yield "</parameter>", delta('"') if is_str else NULL  # :1060-1089
        yield "\n", NULL
        yield "</function>", delta("}" if params else "{}")  # :1099-1125
        yield "\n", NULL
        yield "</tool_call>", delta("")  # the closing delta (:1141-1151)


EMITTERS = {"glm47": _glm, "qwen3_coder": _qwen, "step3p5": _step}
CALLS = {"glm47": _glm_calls, "qwen3_coder": _qwen_calls, "step3p5": _step_calls}


def final_delta(d: dict, turn: Turn, req: dict, tools_on: bool) -> dict:
    """The delta of the finish chunk, sent for the stop token whose text is empty."""
    thinking = (req.get("chat_template_kwargs") or {}).get("enable_thinking") is not False
    said = bool(turn.content or turn.tool_calls or (d["tools"] == "glm47" and turn.reasoning))
    bare = bool(turn.tool_calls) and turn.tool_calls[-1][1] in ("", "{}")
    if d["tools"] == "glm47" and tools_on and bare:
        # "{}" of a call without arguments waits for the stop token, then the unstreamed-args
        # check resends it with every field set (CHAT:1238-1277, :1915-1942)
        return {"tool_calls": [{"id": None, "type": None, "index": len(turn.tool_calls) - 1,
                                "function": {"name": None, "arguments": "{}"}}]}
    if d["tools"] == "glm47":  # glm47 and the identity parser return None -> DeltaMessage()
        # (CHAT:1164-1173); R1 after </think> says "" (deepseek_r1_reasoning_parser.py:60-62)
        return {"content": ""} if thinking and not tools_on else {}
    if d["tools"] == "step3p5":  # step3p5_tool_parser.py:1472-1483; reasoning parser: None
        return {"content": ""} if tools_on and said else {}
    return {"content": ""} if said or not tools_on else {}  # qwen3coder_tool_parser.py:359-382


def message(d: dict, turn: Turn, req: dict, tools_on: bool) -> dict:
    """The non-streaming message (CHAT:1496-1670, chat_completion/protocol.py:55-65)."""
    kw = req.get("chat_template_kwargs") or {}
    reasoning: str | None = None
    if d["reasoning"] == "glm45" and kw.get("enable_thinking") is not False:
        reasoning = turn.reasoning or ""  # basic_parsers.py:153-177: "" when </think> comes first
    elif d["reasoning"] == "step3p5":
        reasoning = turn.reasoning or None  # step3p5_reasoning_parser.py:61-71
    content = turn.content or None
    if turn.tool_calls and not tools_on:  # no tool parser: the markup stays in the text
        content = (turn.content or "") + "".join(p for p, _ in CALLS[d["tools"]](turn, req))
    calls = []
    for name, arguments in turn.tool_calls if tools_on else []:
        args = {k: value for k, _, _, value in _args(d["tools"], req.get("tools"), name, arguments)}
        text = json.dumps(args, ensure_ascii=False)  # ToolCall (engine/protocol.py:227-230)
        calls.append({"id": tool_id(), "type": "function",
                      "function": {"name": name, "arguments": text}})
    if d["tools"] == "glm47" and calls:  # the text before <tool_call>; "" stays "" because
        # only a non-empty blank is dropped (engine/serving.py:1305-1307)
        content = turn.content or ""
    if d["tools"] == "qwen3_coder" and not calls and content is None:
        content = ""  # qwen3coder_tool_parser.py:297-300 hands back the (empty) output
    return {"role": "assistant", "content": content, "refusal": None, "annotations": None,
            "audio": None, "function_call": None, "tool_calls": calls, "reasoning": reasoning}



def response_events(deltas: list[dict]) -> Iterator[tuple[str, dict]]:
    """The event walk of responses/serving.py:1296-1575, quirks kept: content_index grows with
    every delta, and the reasoning -> text switch re-adds an item under the reasoning item's id."""
    out_i, part_i, item, past = 0, 0, "", []
    text_part = {"annotations": [], "text": "", "type": "output_text", "logprobs": []}
    for n, delta in enumerate(deltas):
        if n == 0:
            item = str(uuid.uuid4())
            added = ({"id": item, "summary": [], "type": "reasoning", "content": None,
                      "encrypted_content": None, "status": "in_progress"}
                     if delta.get("reasoning") else _msg_item(item, [], "in_progress"))
            yield "response.output_item.added", {"item": added, "output_index": out_i}
            yield "response.content_part.added", {"content_index": part_i, "item_id": item,
                                                  "output_index": out_i, "part": text_part}
            part_i += 1
        if past and past[-1].get("reasoning") is not None and delta.get("content") is not None:
            text = "".join(p["reasoning"] for p in past if p.get("reasoning") is not None)
            yield from _reasoning_done(item, out_i, part_i, text)
            yield "response.output_item.added", {"item": _msg_item(item, [], "in_progress"),
                                                 "output_index": out_i}
            out_i, part_i, item, past = out_i + 1, 0, str(uuid.uuid4()), []
            yield "response.content_part.added", {"content_index": part_i, "item_id": item,
                                                  "output_index": out_i, "part": text_part}
            part_i += 1
        if delta.get("reasoning") is not None:
            yield "response.reasoning_text.delta", {
                "content_index": part_i, "delta": delta["reasoning"], "item_id": item,
                "output_index": out_i}
        elif delta.get("content") is not None:
            yield "response.output_text.delta", {
                "content_index": part_i, "delta": delta["content"], "item_id": item,
                "logprobs": [], "output_index": out_i}
        part_i += 1
        past.append(delta)
    if past and past[-1].get("reasoning") is not None:
        text = "".join(p["reasoning"] for p in past if p.get("reasoning") is not None)
        yield from _reasoning_done(item, out_i, part_i, text)
    elif past and past[-1].get("content") is not None:
        text = "".join(p["content"] for p in past if p.get("content") is not None)
        part = {"annotations": [], "text": text, "type": "output_text", "logprobs": None}
        yield "response.output_text.done", {"content_index": part_i, "item_id": item,
                                            "logprobs": [], "output_index": out_i, "text": text}
        yield "response.content_part.done", {"content_index": part_i + 1, "item_id": item,
                                             "output_index": out_i, "part": part}
        yield "response.output_item.done", {"item": {**_msg_item(item, [part], "completed"),
                                                     "summary": []}, "output_index": out_i}


def _msg_item(item: str, content: list, status: str) -> dict:
    # "phase" and the reasoning item's nulls come from the openai SDK's models (3.57 here)
    return {"id": item, "content": content, "role": "assistant", "status": status,
            "type": "message", "phase": None}


def _reasoning_done(item: str, out_i: int, part_i: int, text: str) -> Iterator[tuple[str, dict]]:
    yield "response.reasoning_text.done", {"content_index": part_i, "item_id": item,
                                           "output_index": out_i, "text": text}
    yield "response.output_item.done", {"item": {
        "id": item, "summary": [], "type": "reasoning", "content": [
            {"text": text, "type": "reasoning_text"}], "encrypted_content": None,
        "status": "completed"}, "output_index": out_i}
