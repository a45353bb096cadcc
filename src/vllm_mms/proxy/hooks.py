"""Hooks loaded by the LiteLLM proxy through its own extension points.

- `custom_auth` (general_settings.custom_auth): the proxy key is checked here, so a missing
  or wrong key is a 401 even without a database (stock LiteLLM answers 400 "No connected db").
  Per-key limits ride on LiteLLM's own limiter via the returned UserAPIKeyAuth.
- `proxy_handler` (litellm_settings.callbacks): before each call, fills in the model's
  default sampling parameters, overrides the enforced ones, and clamps max_tokens so that
  prompt + output fit the context (vLLM rejects requests that don't; Claude Code asks for 32000);
  checks a key's model list (403); and queues one usage row per request (see usage.py).
- Database keys (see store.py) are looked up by digest and cached briefly.

The model's settings come from generated_configs/models.yml (MMS_MODELS_FILE), re-read when
the file changes. No secret is logged: keys are compared as sha256 digests, in constant time.
"""

from __future__ import annotations

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
    if not isinstance(data.get("messages"), list):
        return None
    messages = list(data["messages"])
    system = data.get("system")
    if system:
        text = system if isinstance(system, str) else "\n".join(_strings(system))
        messages.insert(0, {"role": "system", "content": text})
    tools = []
    for tool in data.get("tools") or []:
        if isinstance(tool, dict) and "input_schema" in tool:  # Anthropic shape
            tool = {"type": "function", "function": {
                "name": tool.get("name", ""), "description": tool.get("description", ""),
                "parameters": tool["input_schema"]}}
        tools.append(tool)
    form: dict[str, Any] = {"messages": messages, "add_generation_prompt": True}
    if tools:
        form["tools"] = tools
    return form


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


def _bad_request(message: str, param: str) -> ProxyException:
    return ProxyException(message=message, type=ProxyErrorTypes.bad_request_error, param=param,
                          code=400)


def validate(data: dict[str, Any], call: str) -> None:
    """What LiteLLM or our clamping would otherwise turn into a 500 or silently change."""
    for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = data.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise _bad_request(f"{field} must be a whole number of at least 1, not {value!r}", field)
    if call in ("aresponses", "responses") and not isinstance(data.get("input"), (str, list)):
        raise _bad_request("input must be a string or a list of input items", "input")


class ProxyHandler(CustomLogger):
    async def async_pre_call_hook(self, user_api_key_dict: UserAPIKeyAuth, cache: Any,
                                  data: dict, call_type: Any) -> dict:
        validate(data, str(getattr(call_type, "value", call_type)))
        allowed = user_api_key_dict.models or []
        if allowed and data.get("model") not in allowed:
            raise ProxyException(
                message=f"this key may not use the model {data.get('model')!r}",
                type=ProxyErrorTypes.auth_error, param="model", code=403)
        settings = MODEL_SETTINGS.get()
        if not settings or data.get("model") not in settings.get("model_names", []):
            return data
        call = str(getattr(call_type, "value", call_type))
        apply_sampling(data, settings.get("sampling") or {})
        await clamp_max_tokens(data, settings, call)
        return data


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
