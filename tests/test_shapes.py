"""Request shapes the proxy refuses with a 400 before LiteLLM or the engine see them
(vllm_mms.proxy.shapes). The first three were 500s found by the spec fuzzing
(tests/e2e/test_spec_fuzz.py); `n` and the message rules are issue 15's."""

from __future__ import annotations

import asyncio

import pytest

from vllm_mms.proxy import shapes

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("kind, data, expected", [
    # LiteLLM: "WebSearchOptions() argument after ** must be a mapping, not list" (500)
    ("chat", {"messages": HI, "web_search_options": [None, None]},
     ("web_search_options must be an object or null, not array", "web_search_options")),
    # LiteLLM: "Unmapped prompt format. Your prompt is neither a list of strings nor a string" (500)
    ("completions", {"prompt": None},
     ("prompt must be a string or a list, not null", "prompt")),
    ("completions", {"prompt": [None]},
     ("prompt must be a string, a list of strings, a list of token ids or a list of token-id "
      "lists, with nothing empty", "prompt")),
    # "Unmapped prompt format ... prompt=[-4520]" (500): token ids are not negative
    ("completions", {"prompt": [-4520]},
     ("prompt must be a string, a list of strings, a list of token ids or a list of token-id "
      "lists, with nothing empty", "prompt")),
    ("embeddings", {"input": [[1, -2]]},
     ("input must be a string, a list of strings, a list of token ids or a list of token-id "
      "lists, with nothing empty", "input")),
    ("completions", {"prompt": []},
     ("prompt must be a string, a list of strings, a list of token ids or a list of token-id "
      "lists, with nothing empty", "prompt")),
    # LiteLLM's embeddings endpoint: "list index out of range" (500)
    ("embeddings", {"input": [[]]},
     ("input must be a string, a list of strings, a list of token ids or a list of token-id "
      "lists, with nothing empty", "input")),
    ("embeddings", {"input": []},
     ("input must be a string, a list of strings, a list of token ids or a list of token-id "
      "lists, with nothing empty", "input")),
    ("embeddings", {"input": ["a", 1]},
     ("input must be a string, a list of strings, a list of token ids or a list of token-id "
      "lists, with nothing empty", "input")),
    ("embeddings", {"input": {"text": "a"}}, ("input must be a string or a list, not object", "input")),
    # n amplifies one request into n sequences, past the per-key parallel limit
    ("chat", {"messages": HI, "n": 1000},
     ("n must be between 1 and 4 for this model (each one is a sequence the engine runs), "
      "not 1000", "n")),
    ("chat", {"messages": HI, "n": 0},
     ("n must be between 1 and 4 for this model (each one is a sequence the engine runs), "
      "not 0", "n")),
    ("completions", {"prompt": "a", "best_of": 9},
     ("best_of must be between 1 and 4 for this model (each one is a sequence the engine "
      "runs), not 9", "best_of")),
    ("chat", {"messages": HI, "n": "2"}, ("n must be a whole number or null, not string", "n")),
    # roles and contents, as OpenAI answers them
    ("chat", {"messages": [{"role": "wizard", "content": "hi"}]},
     ("messages[0].role must be one of system, developer, user, assistant, tool, function, "
      "not 'wizard'", "messages[0].role")),
    ("chat", {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": None}]},
     ("messages[1].content must be a string or a list of content parts, not null",
      "messages[1].content")),
    ("chat", {"messages": [{"role": "user"}]},
     ("messages[0].content must be a string or a list of content parts, not null",
      "messages[0].content")),
    ("chat", {"messages": ["hi"]},
     ("messages[0] must be an object with a role and content", "messages[0]")),
    ("chat", {"messages": [{"role": "assistant", "content": 5}]},
     ("messages[0].content must be a string, a list of content parts or null, not integer",
      "messages[0].content")),
    ("chat", {"messages": "hi"}, ("messages must be a list, not string", "messages")),
    # LiteLLM's vLLM translation: "sequence item 0: expected str instance, dict found" (500,
    # found by the spec fuzzer: an assistant text part whose text is an object)
    ("chat", {"messages": [{"role": "assistant", "content": [
        {"type": "text", "text": {}, "prompt_cache_breakpoint": {"mode": "explicit"}}]}]},
     ("messages[0].content[0].text must be a string in a text part, not object",
      "messages[0].content[0].text")),
    ("chat", {"messages": [{"role": "assistant", "content": [{"type": "text", "text": None}]}]},
     ("messages[0].content[0].text must be a string in a text part, not null",
      "messages[0].content[0].text")),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
     ("messages[0].content[0].text is required in a text part", "messages[0].content[0].text")),
    # "'str' object has no attribute 'get'" (500): a user part that is not an object
    ("chat", {"messages": [{"role": "user", "content": ["hi"]}]},
     ("messages[0].content[0] must be a content part (an object with a type), not string",
      "messages[0].content[0]")),
    ("chat", {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
     ("messages[0].content[0] must be a content part (an object with a type), not an object "
      "without one", "messages[0].content[0]")),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "file", "file": "x"}]}]},
     ("messages[0].content[0].file must be an object in a file part, not string",
      "messages[0].content[0].file")),
    # "expected string or bytes-like object, got 'int'" (500)
    ("chat", {"messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_data": 1}}]}]},
     ("messages[0].content[0].file.file_data must be a string in a file part, not integer",
      "messages[0].content[0].file.file_data")),
    ("chat", {"messages": [{"role": "assistant", "content": [{"type": "refusal", "refusal": 3}]}]},
     ("messages[0].content[0].refusal must be a string in a refusal part, not integer",
      "messages[0].content[0].refusal")),
    # LiteLLM's Anthropic route: "Bad Request: messages is required" (500)
    ("messages", {"messages": []}, ("messages must hold at least one message", "messages")),
    ("chat", {"messages": []}, ("messages must hold at least one message", "messages")),
    ("messages", {"messages": [{"role": "tool", "content": "s"}]},
     ("messages[0].role must be one of user, assistant, system, not 'tool'", "messages[0].role")),
    ("messages", {"messages": [{"role": "assistant", "content": None}]},
     ("messages[0].content must be a string or a list of content parts, not null",
      "messages[0].content")),
    # LiteLLM's count_tokens: "Invalid content item type: text_editor_code_execution_tool_result" (500)
    ("messages", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "x"}, {"type": "text_editor_code_execution_tool_result"}]}]},
     ("messages[0].content[1] must be a content block of type text, image, document, tool_use, "
      "tool_result, thinking, redacted_thinking, tool_reference, not 'text_editor_code_execution_tool_result'",
      "messages[0].content[1].type")),
    ("messages", {"messages": [{"role": "user", "content": ["x"]}]},
     ("messages[0].content[0] must be a content block (an object with a type), not string",
      "messages[0].content[0]")),
    # LiteLLM's count_tokens on a system list of numbers: "'float' object is not subscriptable"
    # (500, found by the spec fuzzer), and on numbers as citations: "object of type 'float' has
    # no len()" (500)
    ("messages", {"messages": HI, "system": [-1.4e-45]},
     ("system[0] must be a content block (an object with a type), not number", "system[0]")),
    ("messages", {"messages": HI, "system": [{"text": "s"}]},
     ("system[0] must be a content block of type text, not null", "system[0].type")),
    ("messages", {"messages": HI, "system": [{"type": "image", "source": {}}]},
     ("system[0] must be a content block of type text, not 'image'", "system[0].type")),
    ("messages", {"messages": HI, "system": [{"type": "text", "text": "s", "citations": [1.5]}]},
     ("system[0].citations[0] must be an object, not number", "system[0].citations[0]")),
    ("messages", {"messages": HI, "system": [{"type": "text"}]},
     ("system[0].text is required in a text block", "system[0].text")),
    ("messages", {"messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}]},
     ("messages[0].content[0].text must be a string in a text block, not integer",
      "messages[0].content[0].text")),
    ("messages", {"messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]}]},
     ("messages[0].content[0].input must be an object in a tool_use block, not string",
      "messages[0].content[0].input")),
    ("messages", {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "tool_use"}]}]}]},
     ("messages[0].content[0].content[0] must be a content block of type text, image, "
      "document, tool_reference, not 'tool_use'", "messages[0].content[0].content[0].type")),
    ("messages", {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": 3}]}]},
     ("messages[0].content[0].content must be a string or a list in a tool_result block, "
      "not integer", "messages[0].content[0].content")),
    # LiteLLM's count_tokens: "1 validation error for TokenCountRequest" (500, found by the
    # spec fuzzer), for a model that is not a string and for tools that are not objects
    ("messages", {"model": -2.00001, "messages": HI},
     ("model must be a string, not number", "model")),
    ("messages", {"model": "m", "messages": HI, "tools": [{"name": "t"}, 7]},
     ("tools[1] must be an object, not integer", "tools[1]")),
    # LiteLLM's Anthropic translation: "'dict' object has no attribute 'startswith'" (500,
    # found by the spec fuzzer) for a tool type that is not a string
    ("messages", {"model": "m", "messages": HI, "tools": [{"name": "t", "type": {}}]},
     ("tools[0].type must be a string, not object", "tools[0].type")),
    ("messages", {"model": "m", "messages": HI, "tools": [{"name": "t", "type": None}]},
     ("tools[0].type must be a string, not null", "tools[0].type")),
    ("messages", {"model": "m", "messages": HI, "tools": [{"name": "t", "input_schema": []}]},
     ("tools[0].input_schema must be an object, not array", "tools[0].input_schema")),
    ("chat", {"model": ["m"], "messages": HI}, ("model must be a string, not array", "model")),
    ("messages", {"messages": HI, "thinking": "on"},
     ("thinking must be an object or null, not string", "thinking")),
    # types JSON gives Python as bool/int
    ("chat", {"messages": HI, "temperature": True},
     ("temperature must be a number or null, not boolean", "temperature")),
    ("chat", {"messages": HI, "max_tokens": True},
     ("max_tokens must be a whole number of at least 1, not True", "max_tokens")),
    ("responses", {"input": "hi", "max_output_tokens": 0},
     ("max_output_tokens must be a whole number of at least 1, not 0", "max_output_tokens")),
    ("responses", {"model": "m"}, ("input must be a string or a list of input items", "input")),
])
def test_refused_with_the_field_and_a_message(kind, data, expected):
    assert shapes.problem(kind, data) == expected


@pytest.mark.parametrize("kind, data", [
    ("chat", {"messages": [{"role": "system", "content": "s"}, *HI,
                           {"role": "assistant", "content": None, "tool_calls": []},
                           {"role": "tool", "content": "42", "tool_call_id": "c"}],
              "n": 4, "temperature": 1, "stop": ["x"], "web_search_options": {},
              "max_tokens": 5, "tool_choice": "auto"}),
    ("chat", {"messages": [{"role": "developer", "content": [{"type": "text", "text": "d"}]}]}),
    ("chat", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "look"}, {"type": "image_url", "image_url": "http://x/a.png"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
        {"type": "video_url", "video_url": {"url": "http://x/v.mp4"}},
        {"type": "file", "file": {"file_id": "f", "filename": "a.pdf"}}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]}]}),
    ("completions", {"prompt": [[1, 2], [3]], "best_of": 1, "echo": False}),
    ("completions", {"prompt": ["a", "b"]}), ("completions", {"prompt": [1, 2]}),
    ("embeddings", {"input": "a"}), ("embeddings", {"input": ["a", "b"]}),
    ("embeddings", {"input": [1, 2]}), ("embeddings", {"input": [[1], [2, 3]]}),
    ("responses", {"input": [{"role": "user", "content": "hi"}], "max_output_tokens": 3}),
    ("messages", {"messages": [*HI, {"role": "assistant", "content": [{"type": "text", "text": "x"}]}],
                  "system": [{"type": "text", "text": "s"}], "thinking": {"type": "disabled"}}),
    ("messages", {"system": [{"type": "text", "text": "s", "citations": None,
                              "cache_control": {"type": "ephemeral"}}],
                  "messages": [*HI, {"role": "assistant", "content": [
                      {"type": "thinking", "thinking": "hm"},
                      {"type": "tool_use", "id": "t", "name": "read", "input": {"path": "a"}}]},
                      {"role": "user", "content": [
                          {"type": "tool_result", "tool_use_id": "t", "is_error": False,
                           "content": [{"type": "text", "text": "42", "citations": [{}]},
                                       {"type": "tool_reference", "tool_name": "read"}]},
                          {"type": "tool_result", "tool_use_id": "u"},
                          {"type": "image", "source": {"type": "url", "url": "x"}}]}]}),
    ("unknown", {"anything": [None]}),
])
def test_well_formed_requests_pass(kind, data):
    assert shapes.problem(kind, data) is None


def test_a_models_max_n_replaces_the_default():
    data = {"messages": HI, "n": 8}
    assert shapes.problem("chat", data, max_n=8) is None
    assert shapes.problem("chat", data, max_n=2)[0].startswith("n must be between 1 and 2 ")


def test_the_pre_call_hook_answers_400_with_the_models_max_n(monkeypatch, tmp_path):
    from litellm.proxy._types import ProxyException, UserAPIKeyAuth

    from vllm_mms.proxy import hooks

    settings = {"model_names": ["m"], "max_n": 2, "sampling": {}}
    monkeypatch.setattr(hooks.MODEL_SETTINGS, "get", lambda: settings)
    data = {"model": "m", "messages": HI, "n": 3}
    with pytest.raises(ProxyException) as raised:
        asyncio.run(hooks.proxy_handler.async_pre_call_hook(UserAPIKeyAuth(), None, data,
                                                            "acompletion"))
    assert (raised.value.code, raised.value.param, raised.value.message) == (
        "400", "n", "n must be between 1 and 2 for this model (each one is a sequence the "
                    "engine runs), not 3")
    # another model (not ours) gets the default cap
    data = {"model": "other", "messages": HI, "n": 4}
    assert asyncio.run(hooks.proxy_handler.async_pre_call_hook(
        UserAPIKeyAuth(), None, data, "acompletion")) is data
