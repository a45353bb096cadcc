"""The engine command: the catalog's `vllm serve` line → the exact argv and environment."""

from __future__ import annotations

import secrets as pysecrets
from pathlib import Path
from typing import Optional

from ..config.resolve import SERVED_MODEL_NAME, Resolved

# Flags we always set ourselves; any value already in the catalog line is replaced.
# --api-key is removed from argv and passed as VLLM_API_KEY instead (vLLM reads that
# variable), so the key never shows in the process list.
DYNAMIC_FLAGS = ("--host", "--port", "--api-key", "--served-model-name")
MULTI_VALUE_FLAGS = {"--served-model-name"}
CPU_API_SERVER = ["-m", "vllm.entrypoints.openai.api_server"]
DEFAULT_UTILIZATION = 0.9  # vLLM's default --gpu-memory-utilization


def strip_flags(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        if name in flags:
            i += 1
            if "=" not in token:
                # Skip its value(s); --served-model-name takes several.
                while i < len(argv) and not argv[i].startswith("-"):
                    i += 1
                    if name not in MULTI_VALUE_FLAGS:
                        break
            continue
        out.append(token)
        i += 1
    return out


def engine_argv(resolved: Resolved, *, host: str, port: int, cpu_python: Optional[str] = None,
                weights: Optional[Path] = None, sharing: int = 1,
                utilization: Optional[float] = None) -> list[str]:
    """`cpu_python` set: run vLLM's API server module with that interpreter (the CPU build's
    `vllm` console script is broken). `weights` set: serve that local checkpoint.
    `sharing` replicas on the same device(s): each gets that share of the memory;
    `utilization`: this engine's share when several models run at once (fit.plan_set)."""
    argv = resolved.argv
    model_id = str(weights) if weights is not None else argv[2]
    rest = strip_flags(argv[3:], DYNAMIC_FLAGS)
    if sharing > 1 or utilization is not None:
        share = utilization if utilization is not None else shared_utilization(resolved, sharing)
        rest = strip_flags(rest, ("--gpu-memory-utilization",))
        rest += ["--gpu-memory-utilization", f"{share:g}"]
    head = [cpu_python, *CPU_API_SERVER, "--model", model_id] if cpu_python else ["vllm", "serve", model_id]
    return [*head, *rest, "--host", host, "--port", str(port),
            "--served-model-name", SERVED_MODEL_NAME]


def shared_utilization(resolved: Resolved, sharing: int) -> float:
    """Each of `sharing` replicas on one device gets this --gpu-memory-utilization: the
    model's share split, rounded down (the shares never add up to more than the whole)."""
    utilization = float(flag_value(resolved.argv, "--gpu-memory-utilization")
                        or DEFAULT_UTILIZATION)
    return int(utilization / sharing * 1000 + 1e-9) / 1000


def flag_value(argv: list[str], *names: str) -> Optional[str]:
    """The value of a flag in an engine argv (`--flag value` or `--flag=value`), or None."""
    for i, token in enumerate(argv):
        name, eq, value = token.partition("=")
        if name in names:
            if eq:
                return value
            if i + 1 < len(argv):
                return argv[i + 1]
    return None


def is_pooling(argv: list[str]) -> bool:
    """An embedding (pooling) model: it answers /v1/embeddings, not chat."""
    return flag_value(argv, "--runner") == "pooling"


def gpu_count(argv: list[str]) -> int:
    """GPUs one engine uses: tensor x pipeline parallel size."""
    tp = int(flag_value(argv, "--tensor-parallel-size", "-tp") or 1)
    pp = int(flag_value(argv, "--pipeline-parallel-size", "-pp") or 1)
    return tp * pp


def internal_api_key(resolved: Resolved) -> str:
    """The key between proxy and engine: secrets/VLLM_API_KEY, or a fresh one per start."""
    return resolved.secrets.get("VLLM_API_KEY") or "sk-engine-" + pysecrets.token_urlsafe(24)


# Secrets that the engine itself needs (hub access for gated models).
ENGINE_SECRETS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def engine_environment(resolved: Resolved, api_key: str, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(resolved.engine_env)
    for name in ENGINE_SECRETS:
        if name in resolved.secrets:
            env[name] = resolved.secrets[name]
    env["VLLM_API_KEY"] = api_key
    return env


def engine_env_names(resolved: Resolved) -> list[str]:
    """What `render` shows: the names (never the values) the entrypoint adds."""
    names = set(resolved.engine_env) | {"VLLM_API_KEY"}
    names |= {n for n in ENGINE_SECRETS if n in resolved.secrets}
    return sorted(names)
