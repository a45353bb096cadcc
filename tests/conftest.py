"""Shared fixtures. Tests never touch the real home or the running user's stack: HOME and the
state directory point at temporary folders; only the expensive cache (environments, the
converted model) is shared, resolved before HOME moves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_CACHE = Path(os.environ.get("MMS_CACHE_DIR") or Path.home() / ".cache" / "vllm-mms")
# Settings the developer may have exported must not leak into exact-output tests.
SETTING_NAMES = ("LITELLM_TEMPERATURE", "LITELLM_TOP_P", "LITELLM_TOP_K",
                 "LITELLM_REPETITION_PENALTY", "LITELLM_MAX_TOKENS", "MAX_PARALLEL_REQUESTS",
                 "LITELLM_REQUEST_TIMEOUT", "LITELLM_NUM_RETRIES", "LITELLM_KEY_RPM",
                 "LITELLM_MASTER_KEY", "LITELLM_PORT", "VLLM_PORT", "MODEL")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MMS_CACHE_DIR", str(REAL_CACHE))
    monkeypatch.setenv("MMS_STATE_DIR", str(home / "state"))
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def project_dir(tmp_path) -> Path:
    """A copy of the user-facing files, safe to break."""
    dest = tmp_path / "project"
    dest.mkdir()
    shutil.copytree(ROOT / "models", dest / "models")
    shutil.copy(ROOT / "vars.env", dest / "vars.env")
    shutil.copy(ROOT / "litellm_config.template.yaml", dest / "litellm_config.template.yaml")
    (dest / "secrets").mkdir()
    shutil.copy(ROOT / "secrets" / "README.md", dest / "secrets" / "README.md")
    return dest


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(*args: str, project: Path | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Result:
    """Run the real CLI in a subprocess, as ./runMe.sh does after bootstrapping."""
    full_env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    full_env["PYTHONPATH"] = str(ROOT / "src")
    if project is not None:
        full_env["MMS_PROJECT_DIR"] = str(project)
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "vllm_mms", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd or project or ROOT, timeout=120)
    return Result(proc.returncode, proc.stdout, proc.stderr)
