"""Shared fixtures. Tests never touch the real home or the running user's stack: HOME and the
state directory point at temporary folders; only the expensive cache (environments, the
converted model) is shared, resolved before HOME moves."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from vllm_mms import environment

# Before anything imports litellm: it would otherwise fetch its cost map from the internet.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

ROOT = Path(__file__).resolve().parents[1]
REAL_CACHE = environment.get("MMS_CACHE_DIR")
# Settings the developer may have exported must not leak into exact-output tests.
SETTING_NAMES = ("LITELLM_TEMPERATURE", "LITELLM_TOP_P", "LITELLM_TOP_K",
                 "LITELLM_REPETITION_PENALTY", "LITELLM_MAX_TOKENS", "MAX_PARALLEL_REQUESTS",
                 "LITELLM_REQUEST_TIMEOUT", "LITELLM_NUM_RETRIES", "LITELLM_KEY_RPM",
                 "LITELLM_MASTER_KEY", "LITELLM_PORT", "VLLM_PORT", "MODEL", "REPLICAS",
                 "REPLICA_GPUS", "PROXY_REDIS_URL", "PROXY_WORKERS")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MMS_CACHE_DIR", str(REAL_CACHE))
    monkeypatch.setenv("MMS_STATE_DIR", str(home / "state"))
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(autouse=True)
def no_gpus_detected(monkeypatch):
    """fit plans for a machine without GPUs (one assumed DGX Spark) whatever this host has,
    so an nvidia-smi here changes no expected report. It holds in this process; CLI tests run
    in a subprocess keep nvidia-smi off their PATH instead. Tests of the detection itself call
    fit.nvidia_smi_gpus."""
    from vllm_mms.engine import fit

    monkeypatch.setattr(fit, "detect_gpus", lambda: None)


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


def cli_environment(project: Path | None, env: dict[str, str] | None) -> dict[str, str]:
    """What the CLI sees as its environment: ours without the developer's settings, the
    project directory, then the test's own variables."""
    full_env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    full_env["PYTHONPATH"] = str(ROOT / "src")
    if project is not None:
        full_env["MMS_PROJECT_DIR"] = str(project)
    full_env.update(env or {})
    return full_env


def run_cli(*args: str, project: Path | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Result:
    """Run the CLI's main() in this process, as `python -m vllm_mms` would after ./runMe.sh
    bootstrapped: with its own environment and working directory (both restored after), its
    output read from file descriptors 1 and 2 (so what its child processes print is in it
    too), and an exec (compose up, logs, docker exec) run as a child whose exit code ends it.
    run_runme() below runs the real ./runMe.sh."""
    from vllm_mms import cli

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    environ = cli_environment(project, env)
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd or project or ROOT)
    try:
        with captured_output() as output, exec_as_child():
            try:
                code = cli.main(list(args))
            except SystemExit as exc:  # an exec'd program ended, or a bootstrap check refused
                code = exit_code(exc)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return Result(code, *output.text())


def exit_code(exc: SystemExit) -> int:
    """The process's exit status for SystemExit(code), as the interpreter computes it."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


class Output:
    """The two files the CLI's descriptors 1 and 2 write to, read back as text."""

    def __init__(self) -> None:
        self.files = (tempfile.TemporaryFile(), tempfile.TemporaryFile())

    def text(self) -> tuple[str, str]:
        texts = []
        for handle in self.files:
            handle.seek(0)
            texts.append(handle.read().decode("utf-8", errors="replace"))
            handle.close()
        return texts[0], texts[1]


@contextlib.contextmanager
def captured_output():
    """Descriptors 1 and 2 and sys.stdout/stderr go to files (pytest's capture is put back
    after): what the CLI prints, in the order it printed it, its child processes' included."""
    output = Output()
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    saved_streams = sys.stdout, sys.stderr
    try:
        for fd, handle in zip((1, 2), output.files):
            os.dup2(handle.fileno(), fd)
        # Unbuffered text streams on the descriptors, like a pipe that is flushed at once.
        sys.stdout, sys.stderr = (io.TextIOWrapper(io.FileIO(fd, "w", closefd=False),
                                                   encoding="utf-8", write_through=True)
                                  for fd in (1, 2))
        yield output
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in zip((1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)


@contextlib.contextmanager
def exec_as_child():
    """os.exec* replaces the process; in a test the program runs as a child with the same
    argv and environment, and its exit code ends the CLI (SystemExit, as the process would)."""
    def run(file, argv, env=None):
        sys.stdout.flush()
        sys.stderr.flush()
        result = subprocess.run([file, *list(argv)[1:]], env=os.environ if env is None else env)
        raise SystemExit(result.returncode)

    saved = {name: getattr(os, name) for name in ("execv", "execve", "execvp", "execvpe")}
    os.execv = os.execvp = lambda file, argv: run(file, argv)
    os.execve = os.execvpe = run
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(os, name, function)


def run_runme(*args: str, project: Path | None = None,
              env: dict[str, str] | None = None) -> Result:
    """The real ./runMe.sh in a process of its own: shell → bootstrap → CLI."""
    proc = subprocess.run([str(ROOT / "runMe.sh"), *args], capture_output=True, text=True,
                          env=cli_environment(project, env), cwd=project or ROOT, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def container(service: str, name: str, state: str, health: str, model: str = "glm47-flash",
              started: str = "2026-11-29T08:00:00.123456789Z") -> dict:
    """One container as `docker inspect` shows it (the fields compose mode reads)."""
    return {"Name": f"/{name}", "Id": f"id-{name}",
            "Config": {"Labels": {"com.docker.compose.project": "project",
                                  "com.docker.compose.service": service},
                       "Env": ["PATH=/usr/bin", f"MODEL={model}"]},
            "State": {"Status": state, "StartedAt": started, "Pid": 4242 if state == "running" else 0,
                      **({"Health": {"Status": health}} if health else {})}}


FAKE_DOCKER = """#!{python}
# A stand-in `docker` (engine reachable, compose v2) that records each call and answers
# from the containers it was given, in the real CLI's formats.
import json, sys
args = sys.argv[1:]
containers = json.loads({containers!r})
with open({record!r}, "a") as out:
    out.write(" ".join(args) + "\\n")
by_name = {{c["Name"].lstrip("/"): c for c in containers}}
by_id = {{c["Id"]: c for c in containers}}
if args[:2] == ["compose", "version"]:
    print("Docker Compose version v2.30.0")
elif args[:2] == ["ps", "-q"]:
    pass
elif args[:4] == ["ps", "-a", "-q", "--filter"]:
    print("\\n".join(c["Id"] for c in containers))
elif args[:2] == ["info", "--format"]:
    print(json.dumps({{"nvidia": {{}}, "runc": {{}}}}))
elif args[0] == "inspect" and args[1] == "--format" and "Config.Env" in args[2]:
    if args[3] not in by_name:
        sys.exit(1)
    print("\\n".join(by_name[args[3]]["Config"]["Env"]))
elif args[0] == "inspect":
    print(json.dumps([by_id[i] for i in args[1:]]))
elif args[:3] == ["exec", "vllm-container", "test"]:
    pass
elif args[:2] == ["exec", "vllm-container"] and "metrics" in args[-1]:
    print({metrics!r})
elif args[:2] == ["exec", "litellm-container"] and "recent_requests" in args[-1]:
    print({recent!r})
elif args[0] == "exec":
    sys.exit(1)
elif args[:2] == ["volume", "ls"]:
    print("project_generated_configs")
"""


def docker_stand_in(tmp_path: Path, record: Path, containers: list[dict], metrics: str = "",
                    recent: str = "None") -> Path:
    """A directory holding the stand-in `docker` (put it first on PATH)."""
    import json

    bin_dir = tmp_path / "docker-bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable, record=str(record),
                                         containers=json.dumps(containers), metrics=metrics,
                                         recent=recent))
    docker.chmod(0o755)
    return bin_dir


POSTGRES_ADMIN_URL = environment.get("MMS_TEST_POSTGRES_URL")


def _fresh_database():
    """A new PostgreSQL database, dropped afterwards (generator for the fixtures below)."""
    import secrets

    import psycopg

    name = f"mms_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and unreachable at {POSTGRES_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {POSTGRES_ADMIN_URL} (set MMS_TEST_POSTGRES_URL): {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test run, dropped afterwards."""
    yield from _fresh_database()


@pytest.fixture
def own_postgres_url():
    """A database of this test's own (no other proxy of the session writes to it)."""
    yield from _fresh_database()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'usage.db'}"
    return request.getfixturevalue("postgres_url")
