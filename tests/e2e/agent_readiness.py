"""What docs/agents.md claims for each catalog model and agent CLI, and the test in
test_agent_sessions.py that proves each claim (scripts/agents_doc.py writes the doc from here;
tests/test_agents_doc.py checks that the doc is current and that every test named exists)."""

from __future__ import annotations

MODELS = ("glm47-flash", "qwen3-next-coder", "step-3.5-flash")
CLIENTS = ("claude", "codex", "opencode")
CLIENT_NAMES = {"claude": "Claude Code", "codex": "Codex", "opencode": "OpenCode"}

# column: (what it means, the test that proves it, clients it covers, reasoning models only)
COLUMNS = {
    "tools": ("a two-step task: a tool call, the client runs it, the result comes back",
              "test_two_step_task_with_reasoning_replayed", CLIENTS, False),
    "reasoning shown": ("the engine's streamed reasoning arrives in the client's API as the "
                        "client shows it (thinking_delta / reasoning_content / reasoning "
                        "summary)", "test_streamed_reasoning_reaches_each_api_as_its_clients_show_it",
                        CLIENTS, True),
    "reasoning replayed": ("the next turn sends the earlier reasoning back as `reasoning`, the "
                           "field vLLM 0.16 reads", "test_two_step_task_with_reasoning_replayed",
                           CLIENTS, True),
    "streaming": ("the CLI's own streamed session ends with the answer",
                  "test_two_step_task_with_reasoning_replayed", CLIENTS, False),
    "compaction": ("an overflow of the context mid-task: the CLI summarises and finishes "
                   "(Codex and OpenCode: not run with the CLI; their APIs answer "
                   "`context_length_exceeded`, see overflow error)",
                   "test_claude_code_compacts_on_an_overflow_and_carries_on", ("claude",), False),
    "overflow error": ("the overflow in the API's own terms, with the numbers",
                       "test_overflow_is_answered_in_each_apis_terms", CLIENTS, False),
    "effort": ("thinking off and every effort level reach vLLM 0.16 as values it accepts",
               "test_effort_and_thinking_reach_the_engine_as_vllm_016_accepts", CLIENTS, False),
}
