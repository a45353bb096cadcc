"""Hooks loaded by the LiteLLM proxy through its own extension points.

- `custom_auth` (general_settings.custom_auth): the proxy key is checked here, so a missing
  or wrong key is a 401 even without a database (stock LiteLLM answers 400 "No connected db").
  Per-key limits ride on LiteLLM's own limiter via the returned UserAPIKeyAuth.
- `proxy_handler` (litellm_settings.callbacks): before each call, fills in the model's
  default sampling parameters, overrides the enforced ones, and clamps max_tokens so that
  prompt + output fit the context (vLLM rejects requests that don't; Claude Code asks for 32000);
  checks a key's model list (403); and queues one usage row per request (see usage.py).
- Database keys (see store.py) are looked up by digest and cached briefly.
- An on-demand model's request is held while the host's supervisor loads its engine
  (hold_until_loaded, through the load board: board.py).

The models' settings come from generated_configs/models.yml (MMS_MODELS_FILE), re-read when
the file changes: the first model's at its top, each other model served at once in
`also_served`. No secret is logged: keys are compared as sha256 digests, in constant time.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import httpx
import yaml
from fastapi import Request
from litellm._logging import (
    verbose_proxy_logger as log,  # our lines land in the proxy log
)
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import (
    LitellmUserRoles,
    ProxyErrorTypes,
    ProxyException,
    UserAPIKeyAuth,
)

from .. import environment
from . import shapes
from .store import ApiKey, Store, hash_key, same_key
from .usage_queue import UsageQueue, row_from_logging

# Fewer characters per token than this is rare; the bound decides when to count exactly.
CHARS_PER_TOKEN_LOWER_BOUND = 3
PROMPT_OVERHEAD_TOKENS = 128  # chat template tokens around the messages, and a margin


class _ModelSettings:
    """generated_configs/models.yml, re-read when its modification time changes."""

    def __init__(self) -> None:
        self._mtime: Optional[float] = None
        self._data: dict[str, Any] = {}

    @property
    def path(self) -> Path:
        return environment.get("MMS_MODELS_FILE")

    def get(self) -> dict[str, Any]:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return self._data
        if mtime != self._mtime:
            self._data = yaml.safe_load(self.path.read_text()) or {}
            self._mtime = mtime
        return self._data

    def for_model(self, name: Any) -> dict[str, Any]:
        """The settings of the served model that answers to `name` (the stack's first model
        or one of `also_served`, when several run at once); {} for a name none answers to."""
        first = self.get()
        for settings in (first, *(first.get("also_served") or [])):
            if settings and name in settings.get("model_names", []):
                return settings
        return {}


MODEL_SETTINGS = _ModelSettings()


class _RouterSync:
    """The router follows generated_configs/config.yaml: `./runMe.sh switch` renders a new
    one (another engine, other model ids) and the running proxy moves to it on its next
    request, without a restart. In-flight requests finish on the old engine."""

    def __init__(self) -> None:
        self._mtime = self._stat()  # the proxy loaded this version at start

    @property
    def path(self) -> Path:
        return MODEL_SETTINGS.path.with_name("config.yaml")

    def _stat(self) -> Optional[float]:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def sync(self) -> None:
        mtime = self._stat()
        if mtime is None or mtime == self._mtime:
            return
        from litellm.proxy import proxy_server

        router = proxy_server.llm_router
        try:
            model_list = (yaml.safe_load(self.path.read_text()) or {}).get("model_list") or []
        except (OSError, yaml.YAMLError) as exc:
            log.error("mms: %s not reloaded: %s", self.path, exc)
            return
        if router is None or not model_list:
            return
        router.set_model_list(model_list)
        proxy_server.llm_model_list = router.get_model_list()
        self._mtime = mtime
        log.warning("mms: model list reloaded from %s: %s", self.path,
                    ", ".join(str(m.get("model_name")) for m in model_list))


ROUTER = _RouterSync()


def _unauthorized(message: str) -> ProxyException:
    return ProxyException(message=message, type=ProxyErrorTypes.auth_error, param="api_key",
                          code=401)


class _KeyCache:
    """Database keys by digest for a few seconds: a revoked key is refused within that time.
    While the database is unreachable, a key seen before keeps its last known state. For keys
    with a daily token budget, the tokens used since midnight (UTC) are cached alongside."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, Optional[ApiKey], int]] = {}
        self._store: Optional[Store] = None
        self._migrated = False

    @property
    def ttl(self) -> float:
        return environment.get("MMS_KEY_CACHE_SECONDS")

    async def lookup(self, key: str) -> tuple[Optional[ApiKey], int]:
        digest = hash_key(key)
        cached = self.entries.get(digest)
        if cached and time.monotonic() - cached[0] < self.ttl:
            return cached[1], cached[2]
        try:
            if self._store is None:
                self._store = Store()
            if not self._migrated:
                await self._store.migrate()
                self._migrated = True
            found = await self._store.find_key(key)
            used = 0
            if found is not None and found.tokens_per_day:
                midnight = time.time() - time.time() % 86400
                used = await self._store.tokens_used(found.name, midnight)
        except Exception as exc:  # noqa: BLE001 - the database is down or unreachable
            if cached:
                return cached[1], cached[2]
            raise ProxyException(message="the key store is unavailable; try again shortly",
                                 type=ProxyErrorTypes.internal_server_error, param="api_key",
                                 code=503) from exc
        if len(self.entries) > 10_000:  # junk keys must not grow memory without bound
            self.entries.clear()
        self.entries[digest] = (time.monotonic(), found, used)
        return found, used


KEYS = _KeyCache()


def usage_enabled() -> bool:
    return environment.get("MMS_USAGE")


async def custom_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    master = os.environ.get("LITELLM_MASTER_KEY", "")
    if not api_key:
        raise _unauthorized("Authentication Error: no API key given "
                            "(send 'Authorization: Bearer <key>' or 'x-api-key: <key>')")
    ROUTER.sync()
    limits = MODEL_SETTINGS.get().get("limits", {}) or {}
    if master and same_key(api_key, master):
        return UserAPIKeyAuth(
            api_key=hash_key(api_key),  # never the clear key
            key_alias="master",
            user_role=LitellmUserRoles.PROXY_ADMIN,
            rpm_limit=limits.get("rpm"),
            max_parallel_requests=limits.get("max_parallel_requests"),
        )
    if len(api_key) > 512 or not usage_enabled():
        raise _unauthorized("Authentication Error: invalid API key")
    found, used_today = await KEYS.lookup(api_key)
    if found is None or found.revoked_at is not None:
        raise _unauthorized("Authentication Error: invalid API key")
    if found.tokens_per_day and used_today >= found.tokens_per_day:
        seconds_left = int(86400 - time.time() % 86400) + 1
        raise ProxyException(
            message=f"daily token budget of key {found.name!r} used up "
                    f"({used_today}/{found.tokens_per_day}); it renews at 00:00 UTC",
            type=ProxyErrorTypes.budget_exceeded, param="tokens_per_day", code=429,
            headers={"retry-after": str(seconds_left)})
    return UserAPIKeyAuth(
        api_key=found.key_hash,
        key_alias=found.name,
        user_role=LitellmUserRoles.INTERNAL_USER,
        rpm_limit=found.rpm or limits.get("rpm"),
        tpm_limit=found.tpm,
        max_parallel_requests=found.max_parallel or limits.get("max_parallel_requests"),
        models=found.allowed_models or [],
        metadata={"mms_priority": found.priority} if found.priority is not None else {},
    )


# ----------------------------------------------------------------------------- parameters

# Where each call type keeps its output cap.
MAX_TOKENS_FIELD = {"aresponses": "max_output_tokens", "responses": "max_output_tokens"}
# Parameters the OpenAI wire format has no field for: sent to vLLM in the request body.
ENGINE_ONLY_PARAMS = ("top_k", "repetition_penalty")


def apply_sampling(data: dict[str, Any], sampling: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Defaults fill in what the client left out; enforced values replace what it sent."""
    for param, rule in sampling.items():
        if param == "max_tokens":
            continue  # handled by clamp_max_tokens
        value, enforce = rule["value"], rule.get("enforce", False)
        present = data.get(param) is not None
        if enforce or not present:
            data[param] = value
    return data


PROMPT_FIELDS = ("messages", "system", "tools", "input", "instructions")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _prompt_text(data: dict[str, Any]) -> str:
    """The prompt as one text, close to what the chat template renders: the text of the
    messages and system prompt, and the tool schemas as compact JSON (templates embed them so).
    Role names and template markers are covered by PROMPT_OVERHEAD_TOKENS."""
    parts = [s for k in ("system", "instructions", "messages", "input") for s in _strings(data.get(k))]
    if data.get("tools"):
        parts.append(json.dumps(data["tools"], separators=(",", ":")))
    return "\n".join(parts)


def _chat_form(data: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The request as OpenAI chat messages and tools (Anthropic's system prompt and tool
    schemas converted), for the engine's chat-template token count. None for other shapes."""
    if isinstance(data.get("input"), (str, list)) and "messages" not in data:
        data = _responses_as_chat(data)
    if not isinstance(data.get("messages"), list):
        return None
    messages = list(data["messages"])
    system = data.get("system")
    if system:
        text = system if isinstance(system, str) else "\n".join(_strings(system))
        messages.insert(0, {"role": "system", "content": text})
    tools = []
    for tool in data.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "function" and "name" in tool:
            tool = {"type": "function", "function": {  # Responses shape
                "name": tool["name"], "description": tool.get("description") or "",
                "parameters": tool.get("parameters") or {}}}
        elif isinstance(tool, dict) and tool.get("type") not in (None, "function"):
            continue  # Responses' custom and hosted tools: LiteLLM's bridge sends them as text
        if isinstance(tool, dict) and "input_schema" in tool:  # Anthropic shape
            tool = {"type": "function", "function": {
                "name": tool.get("name", ""), "description": tool.get("description", ""),
                "parameters": tool["input_schema"]}}
        tools.append(tool)
    form: dict[str, Any] = {"messages": messages, "add_generation_prompt": True}
    if tools:
        form["tools"] = tools
    return form


def _without(value: Any, keys: tuple[str, ...]) -> Any:
    """`value` without those keys in any of its objects (the item and part types, ids)."""
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without(v, keys) for v in value]
    return value


def _responses_as_chat(data: dict[str, Any]) -> dict[str, Any]:
    """A Responses request as chat messages, close to what LiteLLM's chat bridge sends: the
    instructions as the system prompt, each input item's text under its role (tool calls and
    their outputs as the assistant's and the tool's)."""
    items = data["input"] if isinstance(data["input"], list) else [
        {"role": "user", "content": data["input"]}]
    messages = []
    if isinstance(data.get("instructions"), str):
        messages.append({"role": "system", "content": data["instructions"]})
    for item in items:
        if not isinstance(item, dict):
            continue
        role = item.get("role") or ("tool" if str(item.get("type", "")).endswith("_output")
                                     else "assistant")
        text = "\n".join(_strings(_without(item, ("type", "role", "id", "call_id", "status"))))
        messages.append({"role": role if role in ("system", "developer", "user", "assistant",
                                                  "tool") else "user", "content": text})
    return {**data, "messages": messages}


async def count_prompt_tokens(data: dict[str, Any], settings: dict[str, Any]) -> Optional[int]:
    """The prompt's size by the engine's own tokenizer and chat template (vLLM's /tokenize);
    if the engine cannot render the messages, the size of their text; None if both fail."""
    # Any replica will do (the same tokenizer); one that is down is skipped.
    bases = [str(b).rstrip("/").removesuffix("/v1")
             for b in settings.get("api_bases") or [settings.get("api_base", "")]]
    headers = {"Authorization": f"Bearer {os.environ.get('VLLM_API_KEY', '')}"}
    model = settings.get("served_model_name")
    attempts = [form for form in (_chat_form(data),) if form is not None]
    attempts.append({"prompt": _prompt_text(data)})
    async with httpx.AsyncClient(timeout=5) as client:
        for form in attempts:
            for base in bases:
                try:
                    response = await client.post(f"{base}/tokenize", headers=headers,
                                                 json={"model": model, **form})
                    response.raise_for_status()
                    return int(response.json()["count"])
                except (httpx.HTTPError, KeyError, ValueError, TypeError):
                    continue
    log.warning("could not count prompt tokens with the engine; using an estimate")
    return None


async def clamp_max_tokens(data: dict[str, Any], settings: dict[str, Any], call_type: str,
                           count=count_prompt_tokens) -> dict[str, Any]:
    """Output cap = the client's value (or the default), never above the model's cap nor
    above what is left of the context after the prompt. Never rejected for being too big."""
    field = MAX_TOKENS_FIELD.get(call_type, "max_tokens")
    rule = (settings.get("sampling") or {}).get("max_tokens")
    requested = data.get(field)
    if field == "max_tokens" and requested is None:
        requested = data.get("max_completion_tokens")
        if requested is not None:
            field = "max_completion_tokens"
    if rule and (rule.get("enforce") or requested is None):
        requested = rule["value"]
    if requested is None:
        return data
    cap = settings.get("max_output_tokens")
    context = settings.get("context_length")
    allowed = int(requested)
    if cap:
        allowed = min(allowed, int(cap))
    if context:
        # A cheap upper bound first; ask the engine's tokenizer only when it might not fit.
        upper_bound = len(_prompt_text(data)) // CHARS_PER_TOKEN_LOWER_BOUND + PROMPT_OVERHEAD_TOKENS
        if allowed + upper_bound > int(context):
            exact = await count(data, settings)
            prompt = upper_bound if exact is None else exact + PROMPT_OVERHEAD_TOKENS
            allowed = min(allowed, max(1, int(context) - prompt))
            log.info("max_tokens %s -> %s (prompt ~%s tokens, context %s)", requested, allowed,
                     prompt, context)
    data[field] = max(1, allowed)
    return data


def _store_factory() -> Store:
    return Store()


USAGE = UsageQueue.from_environment(_store_factory)


def set_priority(data: dict[str, Any], settings: dict[str, Any], key: UserAPIKeyAuth) -> None:
    """The key's priority on the request (vLLM's `priority`: lower is served first), when the
    engine schedules by priority (`--scheduling-policy priority` in the model's command);
    a client's own value never counts (it could jump the queue), and an engine that schedules
    first-come first-served refuses any priority but 0."""
    data.pop("priority", None)
    extra = data.get("extra_body") if isinstance(data.get("extra_body"), dict) else {}
    extra.pop("priority", None)
    if settings.get("priority_scheduling"):
        # in extra_body: LiteLLM's router takes a top-level `priority` for its own queue
        extra["priority"] = int((key.metadata or {}).get("mms_priority") or 0)
    if extra:
        data["extra_body"] = extra
    else:
        data.pop("extra_body", None)


def _bad_request(message: str, param: str) -> ProxyException:
    return ProxyException(message=message, type=ProxyErrorTypes.bad_request_error, param=param,
                          code=400)


def validate(data: dict[str, Any], call: str, max_n: int = shapes.DEFAULT_MAX_N) -> None:
    """A request LiteLLM or the engine would turn into a 500 or take at face value: 400."""
    found = shapes.problem(shapes.CALL_KINDS.get(call, ""), data, max_n)
    if found:
        raise _bad_request(*found)


# ----------------------------------------------------------------------------- engine wire

# Reasoning efforts vLLM 0.16 accepts (ChatCompletionRequest.reasoning_effort, vllm 0.16.0
# vllm/entrypoints/openai/chat_completion/protocol.py:183); what clients send beyond them.
EFFORTS = ("low", "medium", "high")
EFFORT_FOR = {"minimal": "low", "xhigh": "high", "max": "high"}
THINKING_OFF = ("none", "disabled")  # Claude Code's thinking off arrives as "none"


def for_the_engine(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The chat request LiteLLM is about to send to vLLM, in what vLLM 0.16 reads:
    - replayed thinking as `reasoning` on assistant messages: LiteLLM sends it as
      `reasoning_content` (its Anthropic adapter, the Responses bridge, and OpenCode's own
      messages), which vLLM 0.16 ignores (vllm 0.16.0 vllm/entrypoints/chat_utils.py:1476);
    - `reasoning_effort` within low/medium/high, thinking off as the chat template's
      `enable_thinking: false` (vLLM answers 400 to "none", "minimal", "xhigh").
    A new dict with new messages: LiteLLM hands the hook a shallow copy of the client's."""
    out = dict(kwargs)
    messages = kwargs.get("messages")
    if isinstance(messages, list):
        out["messages"] = [_reasoning_renamed(m) for m in messages]
    effort = kwargs.get("reasoning_effort")
    if isinstance(effort, dict):  # the Responses form, {"effort": ..., "summary": ...}
        effort = effort.get("effort")
    if effort is None:
        return out
    out.pop("reasoning_effort")
    if effort in THINKING_OFF:
        out["chat_template_kwargs"] = {**(kwargs.get("chat_template_kwargs") or {}),
                                       "enable_thinking": False}
    elif EFFORT_FOR.get(effort, effort) in EFFORTS:
        out["reasoning_effort"] = EFFORT_FOR.get(effort, effort)
    else:
        log.warning("mms: reasoning_effort %r is not one the engine knows; left out", effort)
    return out


def _reasoning_renamed(message: Any) -> Any:
    if not isinstance(message, dict) or message.get("role") != "assistant" \
            or "reasoning_content" not in message:
        return message
    message = dict(message)
    replayed = message.pop("reasoning_content")
    if isinstance(replayed, str) and replayed and not message.get("reasoning"):
        message["reasoning"] = replayed
    return message


def _bound_for_the_engine(kwargs: dict[str, Any]) -> bool:
    provider = kwargs.get("custom_llm_provider") or str(kwargs.get("model", "")).split("/")[0]
    return provider == "hosted_vllm"


class ProxyHandler(CustomLogger):
    async def async_pre_call_hook(self, user_api_key_dict: UserAPIKeyAuth, cache: Any,
                                  data: dict, call_type: Any) -> dict:
        settings = MODEL_SETTINGS.for_model(data.get("model"))
        ours = bool(settings)
        call = str(getattr(call_type, "value", call_type))
        validate(data, call, (settings.get("max_n") if ours else None) or shapes.DEFAULT_MAX_N)
        allowed = user_api_key_dict.models or []
        if allowed and data.get("model") not in allowed:
            raise ProxyException(
                message=f"this key may not use the model {data.get('model')!r}",
                type=ProxyErrorTypes.auth_error, param="model", code=403)
        set_priority(data, settings if ours else {}, user_api_key_dict)
        if not ours:
            return data
        if settings.get("on_demand"):
            await hold_until_loaded(settings, MODEL_SETTINGS.get().get("loading") or {})
        embedding_call = call in ("aembedding", "embedding")
        if bool(settings.get("embedding")) != embedding_call:
            raise _bad_request(
                f"{data.get('model')} is an embedding model: send it to /v1/embeddings"
                if settings.get("embedding") else
                f"{data.get('model')} is a chat model, it makes no embeddings", "model")
        if embedding_call:
            return data  # no sampling and no output to cap
        apply_sampling(data, settings.get("sampling") or {})
        await clamp_max_tokens(data, settings, call)
        return data

    async def async_pre_call_deployment_hook(self, kwargs: dict, call_type: Any) -> Any:
        """Every path to the engine ends in one chat completion (Anthropic's messages through
        LiteLLM's adapter, Responses through its chat bridge): fixed up here, translated."""
        call = str(getattr(call_type, "value", call_type))
        if call in ("acompletion", "completion") and _bound_for_the_engine(kwargs):
            return for_the_engine(kwargs)
        return None

    async def async_log_success_event(self, kwargs: dict, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        if usage_enabled():
            USAGE.add(row_from_logging(kwargs, response_obj, start_time, end_time, 200))

    async def async_log_failure_event(self, kwargs: dict, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        if usage_enabled():
            exc = kwargs.get("exception")
            status = status_of(exc)
            USAGE.add(row_from_logging(kwargs, response_obj, start_time, end_time, status,
                                       type(exc).__name__ if exc else "Error"))


# ----------------------------------------------------------------------------- on demand

HELD: dict[str, int] = {}   # requests this worker holds per loading model
LOAD_POLL_S = 0.25
LOAD_RETRY_AFTER_S = 30     # a failed load: when trying again makes sense


def _unavailable(message: str, code: int = 503, retry_after: int = LOAD_RETRY_AFTER_S
                 ) -> ProxyException:
    return ProxyException(message=message, type="service_unavailable" if code == 503
                          else ProxyErrorTypes.budget_exceeded, param="model", code=code,
                          headers={"retry-after": str(retry_after)})


async def _engine_ready(settings: dict[str, Any], state: Any) -> bool:
    """The model's engine serves: the supervisor says ready and its /health answers."""
    if state is None or state.state != "ready":
        return False
    url = str(settings.get("api_base", "")).removesuffix("/v1") + "/health"
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def hold_until_loaded(settings: dict[str, Any], limits: dict[str, Any]) -> None:
    """A request for an on-demand model that is not loaded waits (is held) while the host's
    supervisor loads it: asked for through the load board, which every held request for the
    model shares (one load). Bounded: LOAD_QUEUE_PER_MODEL held requests per model (then
    429) and LOAD_QUEUE_TOTAL in all (then 503); a load that fails or passes LOAD_TIMEOUT
    answers every held request 503 with Retry-After."""
    from . import board

    model = str(settings["model"])
    board.mark_used(model)
    if await _engine_ready(settings, board.states().get(model)):
        return
    per_model, total = int(limits.get("per_model", 32)), int(limits.get("total", 128))
    timeout = float(limits.get("timeout", 600))
    if HELD.get(model, 0) >= per_model:
        raise _unavailable(f"{per_model} requests already wait for {model} to load "
                           f"(LOAD_QUEUE_PER_MODEL); try again shortly", 429, 5)
    if sum(HELD.values()) >= total:
        raise _unavailable(f"{total} requests already wait for models to load "
                           f"(LOAD_QUEUE_TOTAL); try again shortly", 503, 5)
    HELD[model] = HELD.get(model, 0) + 1
    asked = time.time()
    try:
        board.want(model)
        log.warning("mms: holding a request for %s while it loads", model)
        deadline = time.monotonic() + timeout
        while True:
            state = board.states().get(model)
            if await _engine_ready(settings, state):
                log.warning("mms: %s is loaded; the held request goes on after %.1fs", model,
                            time.time() - asked)
                return
            if state is not None and state.state == "failed" and state.since >= asked - 1:
                raise _unavailable(f"{model} could not be loaded: {state.error}")
            if state is not None and state.state in ("unloaded", "unloading") \
                    and state.since >= asked - 1:
                board.want(model)  # unloaded meanwhile (TTL, room for another): ask again
            if time.monotonic() > deadline:
                raise _unavailable(f"{model} was not loaded within {timeout:g}s "
                                   f"(LOAD_TIMEOUT); try again later")
            await asyncio.sleep(LOAD_POLL_S)
    finally:
        HELD[model] -= 1
        board.mark_used(model)


def status_of(exc: Any) -> int:
    """The HTTP status the client got for `exc`: LiteLLM's provider errors carry it as
    `status_code`, its ProxyException (our 401/403/429/400s) as `code`, a string."""
    for attr in ("status_code", "code"):
        value = getattr(exc, attr, None)
        try:
            status = int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if 100 <= status <= 599:
            return status
    return 500


proxy_handler = ProxyHandler()
