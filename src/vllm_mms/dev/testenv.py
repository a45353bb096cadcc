"""`./runMe.sh test`: install what the tests need (cached), then run pytest.

Installs, each once: the engine environment (vLLM CPU build), the cluster environment
(Ray), the fuzz environment (Schemathesis), the converted model, the pinned agent CLIs (npm), Debian's docker-compose (a real
compose parser for the static checks; needs root + apt), and for the Compose suite a Docker
engine with stand-ins for the public base images (vllm_mms.dev.standins).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from .. import bootstrap, paths
from ..engine.prepare_model import ensure_weights


def ensure_docker_compose() -> None:
    if shutil.which("docker-compose"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("[test] docker-compose is missing and cannot be installed here (needs root and "
              "apt-get); the compose parser test will be skipped", file=sys.stderr)
        return
    print("[test] installing Debian's docker-compose (compose file parser) ...", file=sys.stderr,
          flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                    "docker-compose"], env=env, check=False, stdout=subprocess.DEVNULL)


def ensure_compose_suite(pytest_args: list[str]) -> None:
    """The Compose suite's Docker engine and stand-in images, built here (with progress in
    the log) rather than silently inside a pytest fixture. Skipped when the run deselects it."""
    selection = " ".join(pytest_args)
    paths = [a for a in pytest_args if not a.startswith("-") and a.startswith("tests")]
    if "not e2e" in selection or "not compose" in selection or (
            paths and not any(p.rstrip("/") in ("tests", "tests/compose")
                              or p.startswith("tests/compose/") for p in paths)):
        return
    from ..errors import UserError
    from .standins import ensure_standins

    try:
        ensure_standins()
    except UserError as exc:  # the suite's fixture reports it: a failure in CI, else a skip
        print(f"[test] the Compose suite cannot run here: {exc}", file=sys.stderr, flush=True)


def run_tests(pytest_args: list[str]) -> int:
    engine_python = bootstrap.ensure_env("engine")
    cluster_python = bootstrap.ensure_env("cluster")
    fuzz_python = bootstrap.ensure_env("fuzz")
    ensure_weights(engine_python)
    ensure_docker_compose()
    ensure_compose_suite(pytest_args)
    from ..ops.agents import install_clients

    install_clients()
    argv = [sys.executable, "-m", "pytest", *pytest_args]
    env = {**os.environ, "MMS_CLUSTER_PYTHON": str(cluster_python),
           "MMS_FUZZ_PYTHON": str(fuzz_python)}
    os.chdir(paths.ROOT)
    os.execve(sys.executable, argv, env)
    return 0  # not reached
