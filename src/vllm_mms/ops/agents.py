"""`./runMe.sh launch claude|codex|opencode [--force] [--model ID] [-- client args]`

Starts a coding agent pointed at the running proxy, configured from what the proxy itself
reports for the model (context window, output cap), with a temporary configuration directory
that is deleted when the client exits: the user's own client configuration is never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import environment, paths
from ..config.resolve import SERVED_MODEL_NAME, Project, global_settings
from ..errors import UserError
from ..progress import Spinner

NPM_DIR = paths.ROOT / "launchers"
PACKAGES = {"claude": "@anthropic-ai/claude-code", "codex": "@openai/codex",
            "opencode": "opencode-ai"}
# The smallest context each client works in: its system prompt and tool definitions alone
# take this much (measured through the proxy, see LAUNCHER_GUIDE.md), plus room to answer.
MIN_CONTEXT = {"claude": 32768, "codex": 16384, "opencode": 16384}
CLAUDE_MIN_COMPACT_WINDOW = 100_000  # Claude Code ignores a smaller auto-compact window


@dataclass
class Target:
    base_url: str        # http://host:port (no /v1)
    key: str
    model: str
    context: Optional[int]
    max_output: Optional[int]
    background: Optional[str] = None  # Claude Code's background slot, when another model runs


# ----------------------------------------------------------------------------- discovery

def proxy_url(project: Project) -> str:
    url = environment.get("MMS_PROXY_URL")
    if url:
        return url.rstrip("/").removesuffix("/v1")
    from ..stack.state import Stack

    stack = Stack.load()
    port = stack.proxy_port if stack else global_settings(project).LITELLM_PORT
    return f"http://127.0.0.1:{port}"


def discover(project: Project, model: Optional[str] = None) -> Target:
    base = proxy_url(project)
    key = environment.get("MMS_PROXY_KEY") or global_settings(project).LITELLM_MASTER_KEY
    request = urllib.request.Request(f"{base}/v1/models",
                                     headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            listed = json.load(response).get("data", [])
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise UserError(f"the proxy at {base} refused the key: set MMS_PROXY_KEY to its "
                            "key (or secrets/LITELLM_MASTER_KEY)") from None
        raise UserError(f"the proxy at {base} answered {exc.code} to /v1/models") from None
    except (OSError, ValueError):
        raise UserError(f"no proxy answers at {base}: start one with ./runMe.sh --local (or "
                        "MODEL=NAME ./runMe.sh), or point MMS_PROXY_URL at a remote one") from None
    entries = {m["id"]: m for m in listed if "id" in m}
    if not entries:
        raise UserError(f"the proxy at {base} lists no models")
    wanted = model or environment.get("MMS_LAUNCH_MODEL") or _running_model(entries)
    if wanted not in entries:
        raise UserError(f"the proxy does not serve {wanted!r}; it serves: {', '.join(entries)}")
    entry = entries[wanted]
    return Target(base_url=base, key=key, model=wanted, context=entry.get("max_input_tokens"),
                  max_output=entry.get("max_output_tokens"),
                  background=_background_model(project, wanted, entries))


def _background_model(project: Project, main: str, entries: dict[str, dict]) -> Optional[str]:
    """When the local stack serves several models: the smallest one (catalog weights_gb)
    other than `main`, for Claude Code's background calls (titles, summaries, the haiku
    slot), so they do not queue behind the main model's work. None: they stay on `main`."""
    from ..config import schema
    from ..engine import serve
    from ..stack.state import Stack

    stack = Stack.load()
    if stack is None or len(stack.models) < 2:
        return None
    sizes = {}
    for name in stack.models:
        path = project.models_dir / f"{name}.yml"
        if name != main and name in entries and path.exists():
            model, argv = schema.read_model_file(path)
            if not serve.is_pooling(argv):  # an embedding model cannot chat
                sizes[name] = model.weights_gb or 0.0
    return min(sizes, key=lambda n: (sizes[n], n)) if sizes else None


def _running_model(entries: dict[str, dict]) -> str:
    from ..stack.state import Stack

    stack = Stack.load()
    if stack and stack.model in entries:
        return stack.model
    started = environment.get("MODEL")
    if started in entries:
        return started
    # The catalog name comes first in the rendered config; vllm_agent is its alias.
    return next((name for name in entries if name != SERVED_MODEL_NAME), SERVED_MODEL_NAME)


# ----------------------------------------------------------------------------- clients

def clients_dir() -> Path:
    lock = (NPM_DIR / "package-lock.json").read_bytes()
    return paths.cache_dir() / f"npm-{hashlib.sha256(lock).hexdigest()[:12]}"


def install_clients() -> Path:
    """Install from the lock file (integrity-checked) into the cache, once. `npm install`
    rather than `npm ci`: opencode-ai lists platform packages for other systems that the lock
    cannot carry, and `npm ci` refuses such a lock as out of sync."""
    target = clients_dir()
    if (target / ".complete").exists():
        return target
    if not shutil.which("npm"):
        raise UserError("npm is not installed: install Node.js 20+ to get the agent clients")
    target.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(NPM_DIR / name, target / name)
    with Spinner(f"[launch] installing {', '.join(PACKAGES.values())} into {target}"):
        result = subprocess.run(["npm", "install", "--no-save", "--no-audit", "--no-fund",
                                 "--loglevel", "error"],
                                cwd=target, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"npm install failed in {target}: {result.stderr.strip()[-500:]}")
    (target / ".complete").write_text("ok\n")
    return target


def find_client(client: str) -> str:
    """The pinned client, else one on PATH, else the pinned one installed now (first use)."""
    bundled = clients_dir() / "node_modules" / ".bin" / client
    if bundled.exists():
        return str(bundled)
    found = shutil.which(client)
    if found:
        return found
    install_clients()
    if not bundled.exists():
        raise UserError(f"{client} is not in the installed clients ({clients_dir()}): "
                        f"npm install -g {PACKAGES[client]}")
    return str(bundled)


def client_setup(client: str, target: Target, config_dir: Path) -> tuple[dict[str, str], list[str]]:
    """The environment and extra arguments for `client`; files go into `config_dir` only."""
    v1 = f"{target.base_url}/v1"
    env = {"MMS_PROXY_KEY": target.key}
    if client == "claude":
        env.update({
            "ANTHROPIC_BASE_URL": target.base_url,
            "ANTHROPIC_AUTH_TOKEN": target.key,
            "ANTHROPIC_API_KEY": "",
            "ANTHROPIC_MODEL": target.model,
            # Background calls (titles, summaries) use these ids: keep them on our models
            # (the haiku slot on a smaller one when the stack serves several).
            "ANTHROPIC_DEFAULT_OPUS_MODEL": target.model,
            "ANTHROPIC_DEFAULT_SONNET_MODEL": target.model,
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": target.background or target.model,
            "ANTHROPIC_SMALL_FAST_MODEL": target.background or target.model,
            "CLAUDE_CODE_SUBAGENT_MODEL": target.model,  # its Task sub-agents
            "CLAUDE_CONFIG_DIR": str(config_dir),
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        })
        if target.max_output:
            env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(target.max_output)
        # The real window of a model id Claude Code does not know, and compaction before it.
        # Below its own minimums Claude Code refuses to start ("Prompt is too long"), so a
        # small model launched with --force keeps Claude Code's defaults; the proxy clamps.
        if target.context and target.context >= MIN_CONTEXT["claude"]:
            env["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] = str(target.context)
        if target.context and target.context >= CLAUDE_MIN_COMPACT_WINDOW:
            env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] = str(target.context)
        return env, []
    if client == "codex":
        lines = [
            f"model = {json.dumps(target.model)}",
            'model_provider = "mms"',
            *([f"model_context_window = {target.context}"] if target.context else []),
            # OpenAI's hosted web search: no local model serves it (an error per turn)
            'web_search = "disabled"',
            "",
            "[model_providers.mms]",
            'name = "vLLM Multi-Model Server"',
            f"base_url = {json.dumps(v1)}",
            'env_key = "MMS_PROXY_KEY"',
            'wire_api = "responses"',
            "",
        ]
        (config_dir / "config.toml").write_text("\n".join(lines))
        env["CODEX_HOME"] = str(config_dir)
        return env, []
    if client == "opencode":
        limit = {k: v for k, v in (("context", target.context), ("output", target.max_output)) if v}
        config = {
            "$schema": "https://opencode.ai/config.json",
            "autoupdate": False,
            "share": "disabled",
            "model": f"mms/{target.model}",
            "provider": {"mms": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "vLLM Multi-Model Server",
                "options": {"baseURL": v1, "apiKey": "{env:MMS_PROXY_KEY}"},
                "models": {target.model: {"name": target.model, "limit": limit}},
            }},
        }
        (config_dir / "opencode.json").write_text(json.dumps(config, indent=2) + "\n")
        env.update({"OPENCODE_CONFIG": str(config_dir / "opencode.json"),
                    "XDG_CONFIG_HOME": str(config_dir / "config"),
                    "XDG_DATA_HOME": str(config_dir / "data"),
                    "XDG_STATE_HOME": str(config_dir / "state"),
                    "XDG_CACHE_HOME": str(config_dir / "cache"),
                    "OPENCODE_DISABLE_AUTOUPDATE": "1"})
        return env, []
    raise UserError(f"unknown client {client!r}; choose one of: {', '.join(PACKAGES)}", 2)


def check_context(client: str, target: Target, force: bool) -> None:
    need = MIN_CONTEXT[client]
    if target.context is not None and target.context < need and not force:
        raise UserError(f"{target.model} has a {target.context}-token context; {client} needs at "
                        f"least {need} (its prompt and tools alone are large). Use a model with "
                        f"a longer context, or --force to try anyway")


def launch(project: Project, client: str, client_args: list[str], force: bool = False,
           model: Optional[str] = None) -> int:
    if client not in PACKAGES:
        raise UserError(f"unknown client {client!r}; choose one of: {', '.join(PACKAGES)}", 2)
    # The proxy first: installing a client (minutes) is wasted when nothing can serve it.
    target = discover(project, model)
    check_context(client, target, force)
    binary = find_client(client)
    config_dir = Path(tempfile.mkdtemp(prefix=f"mms-{client}-"))
    try:
        extra_env, extra_args = client_setup(client, target, config_dir)
        print(f"[launch] {client} → {target.base_url} model {target.model} (context "
              f"{target.context or '?'}, output cap {target.max_output or '?'}); "
              f"temporary config {config_dir}", file=sys.stderr, flush=True)
        env = {**os.environ, **extra_env}
        return subprocess.run([binary, *extra_args, *client_args], env=env).returncode
    finally:
        shutil.rmtree(config_dir, ignore_errors=True)
