"""Merge the layers into one resolved model: built-in < vars.env < MODEL.yml < environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import schema
from .schema import (
    ENV_NAME_RE,
    SETTING_FOR_LIMIT,
    SETTING_FOR_PARAM,
    ModelFile,
    Settings,
    UserError,
)

SERVED_MODEL_NAME = "vllm_agent"
SECRET_README_NAMES = {"README.md", "README", ".gitignore", ".gitkeep"}


@dataclass
class Project:
    """Where the user's files are. Tests point this at temporary copies."""

    root: Path

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def vars_env(self) -> Path:
        return self.root / "vars.env"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def template(self) -> Path:
        return self.root / "litellm_config.template.yaml"


@dataclass
class Resolved:
    name: str
    model: ModelFile
    argv: list[str]                               # model.command split (schema.parse_command)
    settings: Settings
    sampling: dict[str, dict[str, Any]]          # param -> {"value": x, "enforce": bool}
    limits: dict[str, Optional[int]]              # max_parallel_requests, request_timeout, ...
    engine_env: dict[str, str]                    # non-secret variables for the engine
    secrets: dict[str, str] = field(repr=False)   # name -> value; never rendered or printed

    @property
    def hf_model(self) -> str:
        return self.argv[2]

    @property
    def context_length(self) -> Optional[int]:
        return self.model.context_length

    @property
    def replicas(self) -> int:
        return self.settings.REPLICAS

    @property
    def proxy_workers(self) -> int:
        """PROXY_WORKERS, or derived from the cores this process may use."""
        return schema.proxy_workers(self.settings, len(os.sched_getaffinity(0)))

    @property
    def model_names(self) -> list[str]:
        names = [self.name, SERVED_MODEL_NAME, *self.model.aliases]
        return list(dict.fromkeys(names))


def load_secrets(secrets_dir: Path) -> dict[str, str]:
    """One file per variable; the file name is the variable, one trailing newline stripped."""
    secrets: dict[str, str] = {}
    if not secrets_dir.is_dir():
        return secrets
    for path in sorted(secrets_dir.iterdir()):
        if path.name in SECRET_README_NAMES or path.name.startswith("."):
            continue
        label = f"secrets/{path.name}"
        if not path.is_file():
            raise UserError(f"{label}: not a regular file")
        if not ENV_NAME_RE.match(path.name):
            raise UserError(f"{label}: the file name must be an environment variable name "
                            "(letters, digits, '_')")
        raw = path.read_bytes()
        if raw.endswith(b"\r\n"):
            raw = raw[:-2]
        elif raw.endswith(b"\n"):
            raw = raw[:-1]
        if not raw.strip():
            raise UserError(f"{label}: the file is empty")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{label}: binary content (not UTF-8 text)") from None
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise UserError(f"{label}: contains control characters or several lines")
        secrets[path.name] = value
    return secrets


@dataclass
class _Layers:
    """The global layers, each validated once: what vars.env and the environment set (raw
    and typed), the merged settings, engine pass-through variables and the secrets."""

    settings: Settings
    file_known: dict[str, str]
    file_settings: Settings
    env_known: dict[str, str]
    env_settings: Settings
    passthrough: dict[str, str]
    secrets: dict[str, str]


def _global_layers(project: Project, environ: dict[str, str]) -> _Layers:
    file_values = schema.read_env_file(project.vars_env)
    file_known, passthrough = schema.settings_from(file_values, "vars.env")
    file_settings = schema.validate_settings(file_known, "vars.env")
    env_known = {k: v for k, v in environ.items() if k in Settings.keys() and v != ""}
    env_settings = schema.validate_settings(env_known, "environment")
    secrets = load_secrets(project.secrets_dir)
    # Global settings: built-in < vars.env < secrets file (for secret settings) < environment.
    layered = dict(file_known)
    layered.update({name: secrets[name] for name in schema.SECRET_SETTINGS if name in secrets})
    layered.update(env_known)
    settings = schema.validate_settings(layered, "settings")
    return _Layers(settings, file_known, file_settings, env_known, env_settings, passthrough,
                   secrets)


def global_settings(project: Project, environ: Optional[dict[str, str]] = None) -> Settings:
    """The settings that do not depend on a model (ports, the proxy key, ...)."""
    return _global_layers(project, dict(os.environ if environ is None else environ)).settings


def resolve(project: Project, name: str, environ: Optional[dict[str, str]] = None) -> Resolved:
    environ = dict(os.environ if environ is None else environ)
    schema.check_model_name(name, project.models_dir)
    model_path = project.models_dir / f"{name}.yml"
    model, argv = schema.read_model_file(model_path)
    _check_context(model, argv, schema.display_path(model_path))

    layers = _global_layers(project, environ)
    settings, file_known, env_known = layers.settings, layers.file_known, layers.env_known
    file_settings, env_settings = layers.file_settings, layers.env_settings
    passthrough, secrets = layers.passthrough, layers.secrets

    sampling: dict[str, dict[str, Any]] = {}
    for param, setting in SETTING_FOR_PARAM.items():
        entry: Optional[dict[str, Any]] = None
        if setting in file_known:
            entry = {"value": getattr(file_settings, setting), "enforce": False}
        from_model = getattr(model.litellm, param)
        if from_model is not None:
            if isinstance(from_model, (schema.Enforced, schema.EnforcedSize)):
                entry = {"value": from_model.value, "enforce": True}
            else:
                entry = {"value": from_model, "enforce": False}
        if setting in env_known:
            entry = {"value": getattr(env_settings, setting),
                     "enforce": bool(entry and entry["enforce"])}
        if entry is not None:
            if param == "top_k":
                entry["value"] = int(entry["value"])
            sampling[param] = entry

    stop = model.litellm.stop  # per model only: no global setting
    if stop is not None:
        enforced = isinstance(stop, schema.EnforcedStop)
        sampling["stop"] = {"value": list(stop.value if enforced else stop), "enforce": enforced}

    limits: dict[str, Optional[int]] = {}
    for key, setting in SETTING_FOR_LIMIT.items():
        value = getattr(Settings(), setting)
        if setting in file_known:
            value = getattr(file_settings, setting)
        if getattr(model.litellm, key) is not None:
            value = getattr(model.litellm, key)
        if setting in env_known:
            value = getattr(env_settings, setting)
        limits[key] = value

    engine_env = {**passthrough, **{k: _env_str(v) for k, v in model.env.items()}}
    for key in list(engine_env):
        if key in environ:  # explicit environment beats both files
            engine_env[key] = environ[key]
    return Resolved(name=name, model=model, argv=argv, settings=settings, sampling=sampling,
                    limits=limits, engine_env=engine_env, secrets=secrets)


def _env_str(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _check_context(model: ModelFile, argv: list[str], label: str) -> None:
    flag_value = None
    for i, token in enumerate(argv):
        if token == "--max-model-len" and i + 1 < len(argv):
            flag_value = argv[i + 1]
        elif token.startswith("--max-model-len="):
            flag_value = token.split("=", 1)[1]
    if flag_value is None or model.context_length is None:
        return
    if schema.parse_size(flag_value) != model.context_length:
        raise UserError(f"{label}: context_length: {model.context_length} disagrees with "
                        f"--max-model-len {flag_value} in command")
