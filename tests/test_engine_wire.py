"""The chat request the proxy hands vLLM, after LiteLLM's translation (the deployment hook):
replayed reasoning as `reasoning`, efforts vLLM 0.16 accepts, thinking off as the template's
`enable_thinking: false`. The bodies are what LiteLLM 1.106.12 passes the hook on each path
(recorded through a proxy in front of a recording upstream)."""

from __future__ import annotations

import asyncio
import copy

import pytest
from litellm.types.utils import CallTypes

from vllm_mms.proxy.hooks import for_the_engine, proxy_handler

TOOL_CALL = {"id": "toolu_1", "type": "function",
             "function": {"name": "Read", "arguments": '{"file_path": "/tmp/x"}'}}
# Claude Code's turn 2 after LiteLLM's Anthropic adapter (thinking_blocks are dropped later,
# by LiteLLM's hosted_vllm transformation)
FROM_CLAUDE = {
    "model": "hosted_vllm/served-model", "custom_llm_provider": "hosted_vllm",
    "reasoning_effort": "none",
    "messages": [{"role": "user", "content": "read /tmp/x"},
                 {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL],
                  "reasoning_content": "I should read the file.",
                  "thinking_blocks": [{"type": "thinking", "thinking": "I should read the file.",
                                       "signature": ""}]},
                 {"role": "tool", "tool_call_id": "toolu_1", "content": "42"}]}


def test_replayed_reasoning_reaches_vllm_as_reasoning():
    sent = for_the_engine(FROM_CLAUDE)
    assert sent["messages"][1] == {
        "role": "assistant", "content": "", "tool_calls": [TOOL_CALL],
        "reasoning": "I should read the file.",
        "thinking_blocks": [{"type": "thinking", "thinking": "I should read the file.",
                             "signature": ""}]}
    assert sent["messages"][0] is FROM_CLAUDE["messages"][0]  # others untouched
    assert "reasoning_effort" not in sent
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}


def test_the_clients_request_is_not_changed():
    before = copy.deepcopy(FROM_CLAUDE)
    for_the_engine(FROM_CLAUDE)
    assert FROM_CLAUDE == before


@pytest.mark.parametrize("message, expected", [
    ({"role": "assistant", "content": "a", "reasoning_content": "r"},
     {"role": "assistant", "content": "a", "reasoning": "r"}),
    # a message that already carries `reasoning` keeps it (OpenAI-format clients of vLLM)
    ({"role": "assistant", "content": "a", "reasoning": "mine", "reasoning_content": "r"},
     {"role": "assistant", "content": "a", "reasoning": "mine"}),
    # empty or structured reasoning_content: nothing to replay
    ({"role": "assistant", "content": "a", "reasoning_content": ""},
     {"role": "assistant", "content": "a"}),
    ({"role": "assistant", "content": "a", "reasoning_content": [{"x": 1}]},
     {"role": "assistant", "content": "a"}),
    # only the assistant's turns carry reasoning
    ({"role": "user", "content": "u", "reasoning_content": "r"},
     {"role": "user", "content": "u", "reasoning_content": "r"}),
])
def test_reasoning_rename_per_message(message, expected):
    assert for_the_engine({"messages": [message]})["messages"] == [expected]


@pytest.mark.parametrize("effort, expected", [
    ("none", {"chat_template_kwargs": {"enable_thinking": False}}),
    ("disabled", {"chat_template_kwargs": {"enable_thinking": False}}),
    ("minimal", {"reasoning_effort": "low"}),
    ("low", {"reasoning_effort": "low"}),
    ("medium", {"reasoning_effort": "medium"}),
    ("high", {"reasoning_effort": "high"}),
    ("xhigh", {"reasoning_effort": "high"}),
    ("max", {"reasoning_effort": "high"}),
    ({"effort": "xhigh", "summary": "auto"}, {"reasoning_effort": "high"}),  # Responses form
    ("turbo", {}),  # unknown: left out, not a 400 from the engine
    (None, {}),
])
def test_efforts_are_mapped_to_what_vllm_016_accepts(effort, expected):
    request = {"model": "hosted_vllm/m", **({} if effort is None else {"reasoning_effort": effort})}
    assert for_the_engine(request) == {"model": "hosted_vllm/m", **expected}


def test_thinking_off_keeps_other_template_arguments():
    sent = for_the_engine({"reasoning_effort": "none", "chat_template_kwargs": {"x": 1}})
    assert sent == {"chat_template_kwargs": {"x": 1, "enable_thinking": False}}


@pytest.mark.parametrize("call_type, request_, changed", [
    (CallTypes.acompletion, FROM_CLAUDE, True),
    # the outer Anthropic / Responses calls: their inner chat completion is the one fixed
    (CallTypes.anthropic_messages, FROM_CLAUDE, False),
    (CallTypes.aresponses, FROM_CLAUDE, False),
    # another provider (a fallback elsewhere) is left as LiteLLM made it
    (CallTypes.acompletion, {**FROM_CLAUDE, "custom_llm_provider": "openai",
                             "model": "openai/gpt"}, False),
    (CallTypes.acompletion, {k: v for k, v in FROM_CLAUDE.items()
                             if k != "custom_llm_provider"}, True),
])
def test_the_deployment_hook_fixes_only_chat_calls_to_vllm(call_type, request_, changed):
    result = asyncio.run(proxy_handler.async_pre_call_deployment_hook(dict(request_), call_type))
    if changed:
        assert result["messages"][1]["reasoning"] == "I should read the file."
    else:
        assert result is None


def test_a_responses_request_is_counted_as_the_chat_the_bridge_sends():
    """The output cap is clamped on the prompt's size; a Responses request (Codex) is counted as
    the chat messages LiteLLM's bridge makes of it, not as raw JSON text (which counted Codex's
    prompt at twice its size on an 8K-context model and left one output token)."""
    from vllm_mms.proxy.hooks import _chat_form

    form = _chat_form({"instructions": "Be brief.", "tools": [
        {"type": "function", "name": "exec_command", "description": "run",
         "parameters": {"type": "object"}},
        {"type": "custom", "name": "apply_patch"}, {"type": "web_search"}],
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                  {"type": "function_call", "call_id": "c1", "name": "exec_command",
                   "arguments": "{}"},
                  {"type": "function_call_output", "call_id": "c1", "output": "42"}]})
    assert form == {
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "exec_command\n{}"},
                     {"role": "tool", "content": "42"}],
        "add_generation_prompt": True,
        "tools": [{"type": "function", "function": {
            "name": "exec_command", "description": "run", "parameters": {"type": "object"}}}]}


@pytest.mark.parametrize("scheduling, key_priority, client, expected", [
    (True, -5, {}, {"extra_body": {"priority": -5}}),
    # the client cannot jump the queue
    (True, -5, {"priority": -100}, {"extra_body": {"priority": -5}}),
    (True, -5, {"extra_body": {"priority": -100, "top_k": 3}},
     {"extra_body": {"priority": -5, "top_k": 3}}),
    (True, None, {"priority": -100}, {"extra_body": {"priority": 0}}),  # vLLM's default
    # first come, first served: vLLM refuses priorities
    (False, -5, {}, {}),
    (False, None, {"priority": 3, "extra_body": {"priority": 3}}, {}),
])
def test_the_keys_priority_goes_on_the_request(scheduling, key_priority, client, expected):
    from litellm.proxy._types import UserAPIKeyAuth

    from vllm_mms.proxy.hooks import set_priority

    key = UserAPIKeyAuth(metadata={} if key_priority is None else {"mms_priority": key_priority})
    data = {"model": "m", **client}
    set_priority(data, {"priority_scheduling": scheduling}, key)
    assert data == {"model": "m", **expected}
