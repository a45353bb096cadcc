"""Render generated_configs/models.yml and generated_configs/config.yaml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import jinja2
import yaml

from ..config import schema
from ..config.resolve import SERVED_MODEL_NAME, Project, Resolved
from ..engine import serve
from ..engine.serve import flag_value
from ..errors import UserError
from .compose import ENGINE_SERVICE

COMPOSE_API_BASE = f"http://{ENGINE_SERVICE}:8000/v1"
MODELS_FILE = "models.yml"
CONFIG_FILE = "config.yaml"
ApiBases = Union[str, Sequence[str]]  # one engine, or one base URL per replica
# Models started beside the first one (./runMe.sh --local A B): each with its engines' URLs.
Others = Sequence[tuple[Resolved, ApiBases]]


def compose_api_bases(replicas: int) -> list[str]:
    """Replica 1 is the `vllm-node` service, replica k the `vllm-node-k` service."""
    return [COMPOSE_API_BASE] + [f"http://{ENGINE_SERVICE}-{k}:8000/v1"
                                 for k in range(2, replicas + 1)]


def _bases(api_base: ApiBases) -> list[str]:
    return [api_base] if isinstance(api_base, str) else list(api_base)


def deployments(resolved: Resolved, api_base: ApiBases) -> list[dict[str, Any]]:
    """One LiteLLM deployment per replica: its base URL and its routing weight."""
    bases = _bases(api_base)
    weights = resolved.model.litellm.routing.weights
    if weights is not None and len(weights) != len(bases):
        raise UserError(f"models/{resolved.name}.yml: litellm.routing.weights: {len(weights)} "
                        f"weight(s) for {len(bases)} replica(s) (REPLICAS={len(bases)})")
    return [{"replica": i + 1, "api_base": base, "weight": weights[i] if weights else None}
            for i, base in enumerate(bases)]


def fallbacks(project: Project, resolved: Resolved) -> list[dict[str, str]]:
    """The fallback models, each checked to be another catalog model."""
    wanted = resolved.model.litellm.routing.fallbacks
    if not wanted:
        return []
    label = f"models/{resolved.name}.yml: litellm.routing.fallbacks"
    catalog = schema.available_models(project.models_dir)
    for fallback in wanted:
        if fallback.model == resolved.name or fallback.model in resolved.model_names:
            raise UserError(f"{label}: {fallback.model} is this model itself")
        if fallback.model not in catalog:
            raise UserError(f"{label}: {fallback.model} is not a catalog model (models/"
                            f"{fallback.model}.yml does not exist)")
    return [{"model": f.model, "api_base": f.api_base} for f in wanted]


def effective_retries(resolved: Resolved, replicas: int) -> int:
    """With replicas, a request that fails on one is tried once more on another (the router
    picks again, a replica in cooldown excluded), so a dying replica costs no client error."""
    retries = int(resolved.limits["num_retries"] or 0)
    return max(retries, 1) if replicas > 1 else retries


def max_output_tokens(resolved: Resolved) -> Optional[int]:
    """The output cap: the configured max_tokens, never more than the context allows."""
    cap = resolved.sampling.get("max_tokens", {}).get("value")
    context = resolved.context_length
    if cap is None:
        return context
    return min(int(cap), context) if context else int(cap)


def served_names(resolved: Resolved, first: bool = True) -> list[str]:
    """The model ids a model answers to: the stack's first model also to the generic
    SERVED_MODEL_NAME, the models beside it only to their own names and aliases."""
    return resolved.model_names if first else [n for n in resolved.model_names
                                               if n != SERVED_MODEL_NAME]


def check_names(resolved: Resolved, others: Others) -> None:
    """Several models at once: each model id may name one of them only."""
    owner: dict[str, str] = {}
    for k, model in enumerate([resolved, *(r for r, _ in others)]):
        if model.name in owner.values():
            raise UserError(f"{model.name} is named twice: each model runs once")
        for name in served_names(model, k == 0):
            if name in owner:
                raise UserError(f"{owner[name]} and {model.name} both answer to {name!r} "
                                f"(models/{model.name}.yml aliases): a model id names one "
                                f"model; rename the alias")
            owner[name] = model.name


def models_document(resolved: Resolved, api_base: ApiBases, first: bool = True
                    ) -> dict[str, Any]:
    """What the proxy hooks read at run time. No secret goes in here."""
    bases = _bases(api_base)
    return {
        "model": resolved.name,
        "description": resolved.model.description,
        "hf_model": resolved.hf_model,
        "served_model_name": SERVED_MODEL_NAME,
        "model_names": served_names(resolved, first),
        "api_base": bases[0],
        "api_bases": bases,
        "context_length": resolved.context_length,
        "max_output_tokens": max_output_tokens(resolved),
        "sampling": resolved.sampling,
        "limits": resolved.limits,
        "max_n": resolved.model.litellm.max_n,
        "embedding": serve.is_pooling(resolved.argv),  # answers /v1/embeddings only
        # the proxy then puts each key's priority on its requests (hooks.set_priority)
        "priority_scheduling": flag_value(resolved.argv, "--scheduling-policy") == "priority",
    }


def served_entry(resolved: Resolved, api_base: ApiBases, first: bool) -> dict[str, Any]:
    """One model's part of the template's `models`."""
    return {"catalog_name": resolved.name, "model_names": served_names(resolved, first),
            "deployments": deployments(resolved, api_base),
            "request_timeout": resolved.limits["request_timeout"],
            "context_length": resolved.context_length,
            "max_output_tokens": max_output_tokens(resolved)}


def render_config(template_path: Path, resolved: Resolved, api_base: ApiBases,
                  fallback_models: Sequence[dict[str, str]] = (), others: Others = ()) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)  # noqa: S701 - YAML, values are JSON-quoted
    try:
        template = env.from_string(template_path.read_text())
        routing = resolved.model.litellm.routing
        replicas = deployments(resolved, api_base)
        text = template.render(
            models=[served_entry(resolved, api_base, True),
                    *(served_entry(r, bases, False) for r, bases in others)],
            model_names=resolved.model_names,
            catalog_name=resolved.name,
            served_model_name=SERVED_MODEL_NAME,
            deployments=replicas,
            fallback_models=list(fallback_models),
            fallbacks=[{name: [f["model"] for f in fallback_models]}
                       for name in resolved.model_names] if fallback_models else [],
            routing_strategy=routing.strategy,
            cooldown_time=routing.cooldown_time,
            allowed_fails=routing.allowed_fails,
            request_timeout=resolved.limits["request_timeout"],
            num_retries=effective_retries(resolved, len(replicas)),
            redis=resolved.settings.PROXY_REDIS_URL is not None,
            context_length=resolved.context_length,
            max_output_tokens=max_output_tokens(resolved),
            proxy_metrics=resolved.settings.PROXY_METRICS,
        )
    except jinja2.UndefinedError as exc:
        raise UserError(f"{template_path.name}: unresolved placeholder: {exc.message}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise UserError(f"{template_path.name}: line {exc.lineno}: {exc.message}") from None
    if "{{" in text or "{%" in text:
        raise UserError(f"{template_path.name}: the rendered config still holds a placeholder")
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{template_path.name}: the rendered config is not valid YAML: {exc}") from None
    return text


def render(project: Project, resolved: Resolved, out_dir: Path,
           api_base: ApiBases = COMPOSE_API_BASE, others: Others = (),
           on_demand: Sequence[str] = ()) -> dict[str, Path]:
    """Write both files atomically (write then rename) so a reader never sees half a file.
    `api_base`: the engine's base URL, or one per replica; `others`: the models served
    beside this one, each with its engines' URLs."""
    check_names(resolved, others)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_text = render_config(project.template, resolved, api_base, fallbacks(project, resolved),
                                others)
    document = models_document(resolved, api_base)
    if others:
        document["also_served"] = [{**models_document(r, bases, first=False),
                                    "on_demand": r.name in on_demand} for r, bases in others]
    if on_demand:  # how long and how many requests the proxy holds while one loads
        settings = resolved.settings
        document["loading"] = {"timeout": settings.LOAD_TIMEOUT,
                               "per_model": settings.LOAD_QUEUE_PER_MODEL,
                               "total": settings.LOAD_QUEUE_TOTAL}
    models_text = ("# Generated by vllm_mms render; do not edit.\n"
                   + yaml.safe_dump(document, sort_keys=False))
    written = {}
    for name, text in ((MODELS_FILE, models_text), (CONFIG_FILE, config_text)):
        path = out_dir / name
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
        written[name] = path
    return written
