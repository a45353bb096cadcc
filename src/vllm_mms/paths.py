"""Where the project keeps things outside the checkout (all overridable for tests)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """Expensive, reusable things: environments, the converted model."""
    return Path(os.environ.get("MMS_CACHE_DIR") or Path.home() / ".cache" / "vllm-mms")


def state_dir() -> Path:
    """The running local stack: pids, generated configs, logs."""
    return Path(os.environ.get("MMS_STATE_DIR")
                or Path.home() / ".local" / "state" / "vllm-mms")
