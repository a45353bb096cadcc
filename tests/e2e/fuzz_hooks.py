"""Schemathesis hooks and checks for the spec fuzzing (tests/e2e/test_spec_fuzz.py).

Loaded by Schemathesis in the fuzz environment (SCHEMATHESIS_HOOKS=tests.e2e.fuzz_hooks,
with the checkout on PYTHONPATH): it imports nothing of the project. Configured through:
  MMS_FUZZ_MODEL   the model name the stack serves: half of the generated bodies that name a
                   model get this one, so requests reach the hooks and the engine, not only
                   LiteLLM's "invalid model" answer
  MMS_FUZZ_LOG     a file that gets one JSON line per request (method, path, status, body of
                   errors): the test counts and reports from it
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import schemathesis

# Output caps the generated bodies may carry: kept small so that a request the engine
# accepts does not generate for minutes on a CPU (the fuzzing is about the request's shape).
OUTPUT_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
CAP = 8
ANTHROPIC_PATHS = ("/messages", "/messages/count_tokens")


_calls: dict[str, Any] = {}  # per operation: the first body (the spec's example) is steered


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Every other body that names a model names the served one, per operation from its first
    (the spec's example, which the examples phase sends first), else nearly every request
    ends at LiteLLM's "invalid model name"; output caps above CAP become CAP."""
    body = case.body
    if not isinstance(body, dict):
        return
    model = os.environ.get("MMS_FUZZ_MODEL")
    counter = _calls.setdefault(case.operation.path, itertools.count())
    if model and "model" in body and next(counter) % 2 == 0:
        body["model"] = model
    for field in OUTPUT_CAPS:
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > CAP:
            body[field] = CAP
    if body.get("model") == model and not any(field in body for field in OUTPUT_CAPS):
        body["max_output_tokens" if case.operation.path.startswith("/responses")
             else "max_tokens"] = CAP  # else the model's default cap (thousands of tokens)


def log_line(line: dict[str, Any]) -> None:
    path = os.environ.get("MMS_FUZZ_LOG")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(line) + "\n")


def error_format_problem(path: str, status: int, text: str) -> str | None:
    """Why a 4xx is not a JSON error object in the API's own format (None if it is): OpenAI
    {"error": {"message": ...}}, Anthropic {"type": "error", "error": {"type", "message"}}."""
    if not 400 <= status < 500:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return f"{status} answered with a body that is not JSON: {text[:200]!r}"
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return f"{status} without an error object with a message: {text[:200]!r}"
    if path in ANTHROPIC_PATHS and (data.get("type") != "error"
                                    or not isinstance(error.get("type"), str)):
        return f"{status} not in Anthropic's error format: {text[:200]!r}"
    return None


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """One line per answer in MMS_FUZZ_LOG: the test judges the run from these lines."""
    status = response.status_code
    line: dict[str, Any] = {"method": case.method, "path": case.operation.path, "status": status}
    problem = error_format_problem(case.operation.path, status, response.text)
    if problem:
        line["format"] = problem
    if status >= 400:
        line["response"] = response.text[:500]
        line["body"] = json.dumps(case.body, default=repr)[:2000] if case.body is not None else None
    log_line(line)


@schemathesis.hook
def after_network_error(context: Any, case: Any, request: Any) -> None:
    """No answer at all (a timeout, a dropped connection): status 0 in the log."""
    body = json.dumps(case.body, default=repr)[:2000] if case.body is not None else None
    log_line({"method": case.method, "path": case.operation.path, "status": 0, "body": body})


@schemathesis.check
def error_is_the_apis_json_error(ctx: Any, response: Any, case: Any) -> bool | None:
    problem = error_format_problem(case.operation.path, response.status_code, response.text)
    if problem:
        raise AssertionError(problem)
    return True


@schemathesis.check
def no_cooldown(ctx: Any, response: Any, case: Any) -> bool | None:
    """The fuzzing key has no limits: a 429 means the router cooled the engine down after a
    client's request, and then every client gets 429 until the cooldown ends."""
    if response.status_code == 429:
        raise AssertionError(f"429 for a key without limits: {response.text[:300]!r}")
    return None
