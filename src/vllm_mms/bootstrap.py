"""Find or create the project's virtual environments, then hand over to the CLI.

Standard library only: this runs under the system Python before any dependency exists.
Environments live outside the checkout, keyed by the hash of their lock file, so a fresh
clone (CI) reuses what an earlier run built:

    ${MMS_CACHE_DIR:-~/.cache/vllm-mms}/venvs/<name>-<sha256 of lock>[:12]/

  tools   requirements/dev.txt    the CLI, the LiteLLM proxy, the test tools
  engine  requirements/engine-cpu.txt   vLLM's CPU build (local mode only)
  cluster requirements/cluster.txt      Ray, for the two-node cluster check (tests only)
  fuzz    requirements/fuzz.txt         Schemathesis, for the spec fuzzing (tests only)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import urllib.parse
import venv
from pathlib import Path

from . import environment
from .paths import ROOT, cache_dir
from .progress import Spinner

LOCKS = {"tools": "requirements/dev.txt", "engine": "requirements/engine-cpu.txt",
         "cluster": "requirements/cluster.txt", "fuzz": "requirements/fuzz.txt"}


def env_dir(name: str) -> Path:
    lock = ROOT / LOCKS[name]
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    return cache_dir() / "venvs" / f"{name}-{digest}"


def python_of(name: str) -> Path:
    return env_dir(name) / "bin" / "python"


def say(msg: str) -> None:
    print(f"[runMe] {msg}", file=sys.stderr, flush=True)


def torch_index() -> str:
    """PyTorch's CPU index, unless MMS_TORCH_INDEX_URL says otherwise ('' = none) or its host
    cannot even be resolved (an offline mirror setup: pip would retry it for every package)."""
    index = environment.get("MMS_TORCH_INDEX_URL")
    if not index:
        return ""
    host = urllib.parse.urlparse(index).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        say(f"{host} is unreachable: installing torch from pip's configured sources only "
            "(set MMS_TORCH_INDEX_URL to a reachable PyTorch CPU index if that fails)")
        return ""
    return index


def ensure_env(name: str) -> Path:
    """Create the environment once; a marker file says it finished (a crash mid-way retries).
    A lock file keeps two runs (say, the tests and a user's start) from building it at once."""
    target = env_dir(name)
    marker = target / ".complete"
    if marker.exists():
        return target / "bin" / "python"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if marker.exists():
            return target / "bin" / "python"
        return _build_env(name, target, marker)


# Where requirements/engine-cpu.txt installs: torch==2.13.0+cpu has one locked file
# (README, "Installation details").
ENGINE_PLATFORM = ("x86_64", (3, 11))


def check_engine_platform(machine: str, version: tuple[int, int]) -> None:
    want_machine, want_version = ENGINE_PLATFORM
    if (machine, version) != (want_machine, want_version):
        say(f"local mode's vLLM CPU lock (requirements/engine-cpu.txt) installs on "
            f"{want_machine} with CPython {want_version[0]}.{want_version[1]}; this is {machine} "
            f"with Python {version[0]}.{version[1]}. On x86_64 set MMS_PYTHON to a Python 3.11; "
            f"elsewhere run the model in Docker (MODEL=NAME ./runMe.sh) or regenerate the lock "
            f"(README, Installation details)")
        raise SystemExit(1)


def _build_env(name: str, target: Path, marker: Path) -> Path:
    if name == "engine":
        check_engine_platform(platform.machine(), sys.version_info[:2])
    if target.exists():
        shutil.rmtree(target)
    lock = ROOT / LOCKS[name]
    log_path = target.parent / f"{target.name}.install.log"
    say(f"creating the '{name}' environment in {target} (one time; pip log: {log_path})")
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    py = target / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    cmd = [*pip, "--require-hashes", "-r", str(lock)]
    if name == "engine":
        index = torch_index()
        if index:
            cmd += ["--extra-index-url", index]
    with open(log_path, "w") as log, Spinner(f"[runMe] installing {lock.relative_to(ROOT)}"):
        result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        errors = [line for line in log_path.read_text(errors="replace").splitlines()
                  if line.startswith("ERROR")][-5:]
        say(f"installing {lock.relative_to(ROOT)} failed (exit {result.returncode}); nothing "
            f"was kept. Full log: {log_path}")
        for line in errors:
            say(f"  {line}")
        raise SystemExit(1)
    if name == "engine":
        # PyPI's torchvision breaks imports next to the CPU torch; text models don't need it.
        subprocess.run([str(py), "-m", "pip", "uninstall", "-y", "-q",
                        "torchvision", "torchaudio", "torchcodec"], check=False)
    marker.write_text("ok\n")
    return py


def main(argv: list[str]) -> None:
    if sys.version_info < (3, 10):
        say(f"Python 3.10 or newer is needed, this is {sys.version.split()[0]} "
            "(set MMS_PYTHON to another interpreter)")
        raise SystemExit(1)
    if argv[:1] == ["--ensure"]:
        for name in argv[1:] or ["tools"]:
            print(ensure_env(name))
        return
    py = ensure_env("tools")
    # The project runs from this checkout (PYTHONPATH), never installed into the shared cache.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")] if p)}
    os.execve(str(py), [str(py), "-m", "vllm_mms", *argv], env)


if __name__ == "__main__":
    main(sys.argv[1:])
