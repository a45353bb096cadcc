"""Where the project keeps things outside the checkout (all overridable for tests)."""

from __future__ import annotations

from pathlib import Path

from . import environment
from .environment import CONTAINER_GENERATED_DIR, GENERATED_CONFIGS, ROOT

__all__ = ["ROOT", "GENERATED_CONFIGS", "CONTAINER_GENERATED_DIR", "cache_dir", "state_dir",
           "generated_dir", "project_dir"]


def cache_dir() -> Path:
    """Expensive, reusable things: environments, the converted model."""
    return environment.get("MMS_CACHE_DIR")


def state_dir() -> Path:
    """The running local stack: pids, generated configs, logs."""
    return environment.get("MMS_STATE_DIR")


def generated_dir() -> Path:
    """The local stack's rendered configuration (the containers': CONTAINER_GENERATED_DIR)."""
    return state_dir() / GENERATED_CONFIGS


def project_dir() -> Path:
    """The project files the tools read (models/, vars.env, secrets/): the checkout, or
    MMS_PROJECT_DIR (the images, the tests)."""
    return environment.get("MMS_PROJECT_DIR")
