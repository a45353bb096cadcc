"""The shape of a model-API request, checked before LiteLLM or the engine sees it.

One table says which JSON types each top-level field may have, per API, as OpenAI's OpenAPI
spec and Anthropic's Messages API give them. Only fields that matter are listed: those LiteLLM
would turn into a 500 (`web_search_options: [null]` → "argument after ** must be a mapping",
a `prompt: null` completion → "Unmapped prompt format", embeddings `input: [[]]` → "list index
out of range") or the engine would take at face value (`n: 1000`: a thousand sequences from
one request). A few item rules follow the table (message roles and contents, embedding inputs).
Absent fields are not judged here: LiteLLM reports a missing required field itself (400).

Used by the route gate (embeddings and Anthropic's count_tokens, which LiteLLM handles
without calling our pre-call hook) and by the pre-call hook (everything else). Standard
library only: the gate imports it.
"""

from __future__ import annotations

from typing import Any, Optional

NULLABLE = ("null",)
TEXT_OR_PARTS = ("string", "array")
SAMPLING: dict[str, tuple[str, ...]] = {
    "temperature": ("number", *NULLABLE), "top_p": ("number", *NULLABLE),
    "stream": ("boolean", *NULLABLE), "metadata": ("object", *NULLABLE),
}
OPENAI_COMMON: dict[str, tuple[str, ...]] = {
    **SAMPLING, "n": ("integer", *NULLABLE), "seed": ("integer", *NULLABLE),
    "stop": ("string", "array", *NULLABLE), "logit_bias": ("object", *NULLABLE),
    "stream_options": ("object", *NULLABLE), "user": ("string", *NULLABLE),
    "presence_penalty": ("number", *NULLABLE), "frequency_penalty": ("number", *NULLABLE),
}
FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "chat": {**OPENAI_COMMON, "messages": ("array",), "tools": ("array", *NULLABLE),
             "tool_choice": ("string", "object", *NULLABLE),
             "response_format": ("object", *NULLABLE),
             "web_search_options": ("object", *NULLABLE),
             "reasoning_effort": ("string", *NULLABLE), "logprobs": ("boolean", *NULLABLE),
             "top_logprobs": ("integer", *NULLABLE), "modalities": ("array", *NULLABLE),
             "prediction": ("object", *NULLABLE), "audio": ("object", *NULLABLE)},
    "completions": {**OPENAI_COMMON, "prompt": ("string", "array"),
                    "best_of": ("integer", *NULLABLE), "echo": ("boolean", *NULLABLE),
                    "logprobs": ("integer", *NULLABLE), "suffix": ("string", *NULLABLE)},
    "embeddings": {"input": ("string", "array"), "dimensions": ("integer", *NULLABLE),
                   "encoding_format": ("string", *NULLABLE), "user": ("string", *NULLABLE)},
    "responses": {**SAMPLING, "input": ("string", "array"), "tools": ("array", *NULLABLE),
                  "tool_choice": ("string", "object", *NULLABLE),
                  "instructions": ("string", "array", *NULLABLE),
                  "text": ("object", *NULLABLE), "reasoning": ("object", *NULLABLE),
                  "include": ("array", *NULLABLE), "previous_response_id": ("string", *NULLABLE),
                  "store": ("boolean", *NULLABLE)},
    "messages": {**SAMPLING, "messages": ("array",), "system": TEXT_OR_PARTS + NULLABLE,
                 "tools": ("array", *NULLABLE), "tool_choice": ("object", *NULLABLE),
                 "thinking": ("object", *NULLABLE), "stop_sequences": ("array", *NULLABLE),
                 "top_k": ("integer", *NULLABLE)},
}
# LiteLLM's call types → the API whose table applies.
CALL_KINDS = {"acompletion": "chat", "completion": "chat", "atext_completion": "completions",
              "text_completion": "completions", "aembedding": "embeddings",
              "embedding": "embeddings", "aresponses": "responses", "responses": "responses",
              "anthropic_messages": "messages", "aanthropic_messages": "messages"}
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
ANTHROPIC_ROLES = ("user", "assistant", "system")  # system: the SDK's SystemMessageParam
# Anthropic content blocks a local model can take (the server-tool blocks, such as
# web_search_tool_result, come from Anthropic's own tools): those LiteLLM's token count knows
# (it answers others with 500 "Invalid content item type"; its translation drops them).
# Per block, the fields LiteLLM reads and their types, as the Anthropic SDK's *BlockParam types
# give them (tests/specs/anthropic-messages.yaml); "absent" marks an optional field. LiteLLM
# reads them without checking: `system: [1.5]` → 500 "'float' object is not subscriptable".
ABSENT = ("absent",)
ANTHROPIC_BLOCK_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "text": {"text": ("string",), "citations": ("array", *NULLABLE, *ABSENT)},
    "image": {"source": ("object",)},
    "document": {"source": ("object",)},
    "tool_use": {"id": ("string",), "name": ("string",), "input": ("object",)},
    "tool_result": {"tool_use_id": ("string",), "content": (*TEXT_OR_PARTS, *ABSENT),
                    "is_error": ("boolean", *ABSENT)},
    # signature: required by Anthropic, but a local model's replayed thinking may have none
    "thinking": {"thinking": ("string",), "signature": ("string", *NULLABLE, *ABSENT)},
    "redacted_thinking": {"data": ("string",)},
    "tool_reference": {"tool_name": ("string",)},
}
ANTHROPIC_BLOCKS = tuple(ANTHROPIC_BLOCK_FIELDS)
# An Anthropic tool's fields LiteLLM's translation reads as these types (the SDK's ToolParam;
# `type` may be null there, but LiteLLM calls `type.startswith`: a 500 for null or an object).
ANTHROPIC_TOOL_FIELDS: dict[str, tuple[str, ...]] = {
    "type": ("string",), "name": ("string",), "description": ("string",),
    "input_schema": ("object",)}
# Blocks a system prompt and a tool result may hold: the SDK's TextBlockParam, and of its tool
# result content those LiteLLM's token count knows (not search_result nor browser_state).
SYSTEM_BLOCKS = ("text",)
TOOL_RESULT_BLOCKS = ("text", "image", "document", "tool_reference")
# An OpenAI chat message's content parts: per part type of OpenAI's spec, the fields and their
# types. LiteLLM's vLLM translation reads them unchecked: an assistant text part whose text is
# not a string → 500 "sequence item 0: expected str instance, dict found" (found by the spec
# fuzzer); a user part that is not an object, or a file part whose `file` is not one → 500
# "'str' object has no attribute 'get'". Other part types pass: vLLM has its own (video_url,
# audio_url, image_embeds …) and answers what it cannot read with a 400.
OPENAI_PART_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "text": {"text": ("string",)},
    "refusal": {"refusal": ("string",)},
    "image_url": {"image_url": ("object", "string")},  # LiteLLM turns a bare URL into {url}
    "input_audio": {"input_audio": ("object",)},
    "file": {"file": ("object",)},
}
# A file part's `file` (OpenAI's spec: all three optional strings; LiteLLM runs a regex on
# file_data: 500 "expected string or bytes-like object" else).
OPENAI_FILE_FIELDS = {name: ("string", *ABSENT) for name in ("file_data", "file_id", "filename")}
# Roles whose message must carry content (OpenAI: only the assistant's may be null, when it
# calls tools instead).
CONTENT_REQUIRED = ("system", "developer", "user", "tool")
# Where the output cap lives, per API; each must be a whole number >= 1.
OUTPUT_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
DEFAULT_MAX_N = 4


# Python's type of a parsed JSON value → JSON's name for it (bool before int: True is an int).
JSON_TYPES = ((type(None), "null"), (bool, "boolean"), (int, "integer"), (float, "number"),
              (str, "string"), (list, "array"), (dict, "object"))


def json_type(value: Any) -> str:
    return next((name for kind, name in JSON_TYPES if isinstance(value, kind)),
                type(value).__name__)


def _accepts(allowed: tuple[str, ...], value: Any) -> bool:
    kind = json_type(value)
    return kind in allowed or (kind == "integer" and "number" in allowed)


def _describe(allowed: tuple[str, ...]) -> str:
    names = {"string": "a string", "integer": "a whole number", "number": "a number",
             "boolean": "true or false", "object": "an object", "array": "a list",
             "null": "null"}
    words = [names[a] for a in allowed]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def problem(kind: str, data: dict[str, Any],
            max_n: int = DEFAULT_MAX_N) -> Optional[tuple[str, str]]:
    """(message, field) for the first thing wrong with `data` as a request of API `kind`
    (a key of FIELDS), or None."""
    # every API names its model with a string (LiteLLM's count_tokens: a pydantic 500 else)
    fields = {"model": ("string",), **FIELDS.get(kind, {})} if kind in FIELDS else {}
    for field, allowed in fields.items():
        if field in data and not _accepts(allowed, data[field]):
            return (f"{field} must be {_describe(allowed)}, not {json_type(data[field])}", field)
    for i, tool in enumerate(data.get("tools") or []):  # LiteLLM's count: 500 on a non-object
        if not isinstance(tool, dict):
            return f"tools[{i}] must be an object, not {json_type(tool)}", f"tools[{i}]"
        for field, allowed in (ANTHROPIC_TOOL_FIELDS if kind == "messages" else {}).items():
            if field in tool and not _accepts(allowed, tool[field]):
                named = _describe(tuple(a for a in allowed if a != "absent"))
                return (f"tools[{i}].{field} must be {named}, not {json_type(tool[field])}",
                        f"tools[{i}].{field}")
    for field in OUTPUT_CAPS:
        value = data.get(field)
        if value is not None and (json_type(value) != "integer" or value < 1):
            return f"{field} must be a whole number of at least 1, not {value!r}", field
    for field in ("n", "best_of"):
        value = data.get(field)
        if isinstance(value, int) and not 1 <= value <= max_n:
            return (f"{field} must be between 1 and {max_n} for this model (each one is a "
                    f"sequence the engine runs), not {value}", field)
    check = ITEM_CHECKS.get(kind)
    return check(data) if check else None


def _message_problem(data: dict[str, Any], roles: tuple[str, ...]) -> Optional[tuple[str, str]]:
    if data.get("messages") == []:  # LiteLLM's Anthropic route fails on it with a 500
        return "messages must hold at least one message", "messages"
    anthropic = roles is ANTHROPIC_ROLES
    for i, message in enumerate(data.get("messages") or []):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            return f"{where} must be an object with a role and content", where
        role = message.get("role")
        if role not in roles:
            return (f"{where}.role must be one of {', '.join(roles)}, not {role!r}",
                    f"{where}.role")
        content = message.get("content")
        if isinstance(content, list):
            found = (_blocks_problem(content, f"{where}.content", ANTHROPIC_BLOCKS) if anthropic
                     else _parts_problem(content, f"{where}.content"))
            if found:
                return found
        if role in CONTENT_REQUIRED or anthropic:
            if not _accepts(TEXT_OR_PARTS, content):
                return (f"{where}.content must be a string or a list of content parts, not "
                        f"{json_type(content)}", f"{where}.content")
        elif not _accepts(TEXT_OR_PARTS + NULLABLE, content):
            return (f"{where}.content must be a string, a list of content parts or null, not "
                    f"{json_type(content)}", f"{where}.content")
    return None


def _fields_problem(item: dict[str, Any], at: str, rules: dict[str, tuple[str, ...]],
                    within: str) -> Optional[tuple[str, str]]:
    """The first field of `item` that `rules` requires and it lacks, or that has a type the
    rule does not allow ("absent" in a rule: the field may be left out)."""
    for field, allowed in rules.items():
        if field not in item:
            if "absent" not in allowed:
                return f"{at}.{field} is required in {within}", f"{at}.{field}"
        elif not _accepts(allowed, item[field]):
            named = _describe(tuple(a for a in allowed if a != "absent"))
            return (f"{at}.{field} must be {named} in {within}, not {json_type(item[field])}",
                    f"{at}.{field}")
    return None


def _parts_problem(parts: list[Any], where: str) -> Optional[tuple[str, str]]:
    """The first malformed OpenAI content part in `parts` (OPENAI_PART_FIELDS)."""
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            named = json_type(part) if not isinstance(part, dict) else "an object without one"
            return f"{at} must be a content part (an object with a type), not {named}", at
        kind = part["type"]
        found = _fields_problem(part, at, OPENAI_PART_FIELDS.get(kind, {}), f"a {kind} part")
        if not found and kind == "file" and isinstance(part.get("file"), dict):
            found = _fields_problem(part["file"], f"{at}.file", OPENAI_FILE_FIELDS, "a file part")
        if found:
            return found
    return None


def _blocks_problem(blocks: list[Any], where: str,
                    kinds: tuple[str, ...]) -> Optional[tuple[str, str]]:
    """The first malformed Anthropic content block in `blocks`: an unknown or unwanted type,
    or a field of the wrong type (ANTHROPIC_BLOCK_FIELDS)."""
    for j, block in enumerate(blocks):
        at = f"{where}[{j}]"
        if not isinstance(block, dict):
            return (f"{at} must be a content block (an object with a type), not "
                    f"{json_type(block)}", at)
        kind = block.get("type")
        if kind not in kinds:
            named = repr(kind) if isinstance(kind, str) else json_type(kind)
            return (f"{at} must be a content block of type {', '.join(kinds)}, not {named}",
                    f"{at}.type")
        found = _fields_problem(block, at, ANTHROPIC_BLOCK_FIELDS[kind], f"a {kind} block")
        if found:
            return found
        citations = block.get("citations")
        if kind == "text" and isinstance(citations, list):
            for k, citation in enumerate(citations):
                if not isinstance(citation, dict):
                    return (f"{at}.citations[{k}] must be an object, not {json_type(citation)}",
                            f"{at}.citations[{k}]")
        if kind == "tool_result" and isinstance(block.get("content"), list):
            found = _blocks_problem(block["content"], f"{at}.content", TOOL_RESULT_BLOCKS)
            if found:
                return found
    return None


def _anthropic_problem(data: dict[str, Any]) -> Optional[tuple[str, str]]:
    if isinstance(data.get("system"), list):
        found = _blocks_problem(data["system"], "system", SYSTEM_BLOCKS)
        if found:
            return found
    return _message_problem(data, ANTHROPIC_ROLES)


def _texts_or_tokens_problem(field: str):
    """A string, or a non-empty list of strings, of token ids (>= 0), or of non-empty
    token-id lists (embeddings' `input`, completions' `prompt`): LiteLLM fails with a 500 on
    anything else."""
    message = (f"{field} must be a string, a list of strings, a list of token ids or a list of "
               f"token-id lists, with nothing empty")

    def check(data: dict[str, Any]) -> Optional[tuple[str, str]]:
        value = data.get(field)
        if not isinstance(value, list):
            return None
        kinds = {json_type(item) for item in value}
        if kinds == {"string"} or (kinds == {"integer"} and min(value) >= 0):
            return None
        if kinds == {"array"} and all(item and all(json_type(t) == "integer" and t >= 0
                                                   for t in item) for item in value):
            return None
        return message, field

    return check


def _responses_input_problem(data: dict[str, Any]) -> Optional[tuple[str, str]]:
    if data.get("input") is None:  # LiteLLM would fail on it with a 500
        return "input must be a string or a list of input items", "input"
    return None


ITEM_CHECKS = {
    "responses": _responses_input_problem,
    "chat": lambda data: _message_problem(data, CHAT_ROLES),
    "messages": _anthropic_problem,
    "embeddings": _texts_or_tokens_problem("input"),
    "completions": _texts_or_tokens_problem("prompt"),
}
