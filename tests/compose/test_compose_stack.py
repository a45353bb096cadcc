"""The Compose stack for real: the project's own Dockerfiles and compose files (copied
byte for byte into a temporary project), built on stand-ins for the public base images
(src/vllm_mms/dev/standins.py), started with `./runMe.sh smollm2-135m-cpu -d --build` and
driven through the proxy, docker and the project's own commands.

What the GPU box has and this machine does not: a GPU (the CPU model runs instead, from
docker-compose.cpu.yml) and `ulimits: memlock: -1`, which this sandbox refuses — it lives in
docker-compose.gpu.yml only, so the CPU stack used here never asks for it.

One stack per module (an engine start costs ~1 min); the tests run in file order and each
leaves the stack serving for the next, except the last (`down`). Timings are appended to
${MMS_CACHE_DIR}/compose-suite-timings.txt.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import httpx
import pytest

from vllm_mms.dev import standins
from vllm_mms.errors import UserError
from vllm_mms.stack import processes

from ..conftest import REAL_CACHE, ROOT, SETTING_NAMES

pytestmark = [pytest.mark.e2e, pytest.mark.compose]

MODEL = "smollm2-135m-cpu"
KEY = "sk-FAKE"
OUR_CONTAINERS = ("vllm-container", "litellm-container", "litellm_db")
PROJECT_FILES = ("Dockerfile", "Dockerfile.proxy", "docker-compose.yml", "docker-compose.gpu.yml",
                 "docker-compose.cpu.yml", "docker-compose.cluster.yml", "pyproject.toml",
                 "README.md", "litellm_config.template.yaml", "vars.env", "runMe.sh")
PROJECT_DIRS = ("src", "scripts", "models", "requirements", "monitoring")


@dataclass
class ComposeStack:
    root: Path
    env: dict[str, str]
    port: int
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """The project's own command, as a user runs it."""
        return subprocess.run([str(self.root / "runMe.sh"), *args], capture_output=True,
                              text=True, env=self.env, cwd=self.root, timeout=timeout)

    def chat(self, key: str = KEY, model: str = MODEL, timeout: float = 120) -> httpx.Response:
        return httpx.post(f"http://127.0.0.1:{self.port}/v1/chat/completions",
                          headers={"Authorization": f"Bearer {key}"}, timeout=timeout,
                          json={"model": model, "max_tokens": 8,
                                "messages": [{"role": "user", "content": "Say hi"}]})

    def wait_serving(self, label: str, deadline_s: float = 900, model: str = MODEL) -> float:
        """Seconds until the proxy answers a chat request with 200."""
        start = time.monotonic()
        last = ""
        while time.monotonic() - start < deadline_s:
            try:
                response = self.chat(model=model, timeout=30)
                if response.status_code == 200:
                    return self.note(label, time.monotonic() - start)
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(2)
        raise AssertionError(f"{label}: no 200 within {deadline_s:.0f}s (last: {last})\n"
                             + docker("logs", "--tail", "40", "vllm-container").stdout
                             + docker("logs", "--tail", "40", "vllm-container").stderr)

    def note(self, label: str, seconds: float) -> float:
        self.timings[label] = seconds
        with open(REAL_CACHE / "compose-suite-timings.txt", "a") as out:
            out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {label}: {seconds:.1f}s\n")
        return seconds


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def inspect(name: str) -> dict:
    out = docker("inspect", name)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]


def health(name: str) -> str:
    state = inspect(name)["State"]
    return f"{state['Status']} {(state.get('Health') or {}).get('Status', '')}".strip()


def wait_state(name: str, wanted: str, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while health(name) != wanted:
        assert time.monotonic() < deadline, f"{name} is {health(name)}, not {wanted}"
        time.sleep(1)


def copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, dest / name)
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, dest / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "secrets").mkdir()
    shutil.copy2(ROOT / "secrets" / "README.md", dest / "secrets" / "README.md")
    return dest


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the Compose suite must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> ComposeStack:
    try:
        images = standins.ensure_standins()
    except UserError as exc:
        unavailable(str(exc))
    clash = [n for n in OUR_CONTAINERS if docker("inspect", n).returncode == 0]
    if clash:
        unavailable(f"containers of another stack exist ({', '.join(clash)}); "
                    "stop it with ./runMe.sh down first")
    base = tmp_path_factory.mktemp("compose")
    # The directory names the compose project (its volumes): never a user's "vllm-mms".
    root = copy_project(base / f"mms-compose-test-{secrets.token_hex(3)}")
    home = base / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update(images, HOME=str(home), MMS_CACHE_DIR=str(REAL_CACHE),
               MMS_STATE_DIR=str(home / "state"), LITELLM_PORT=str(processes.free_port()))
    env.pop("PYTHONPATH", None)
    result = ComposeStack(root, env, int(env["LITELLM_PORT"]))
    try:
        start = time.monotonic()
        up = result.run(MODEL, "-d", "--build", timeout=3600)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        # compose's `up -d` returns once the engine is healthy and the proxy started
        result.note("build + up -d (with --build)", time.monotonic() - start)
        result.wait_serving("first 200 after up -d returned")
        yield result
    finally:  # whatever happened: no container, network or volume of the test stays
        for name in ("prometheus",):
            docker("rm", "-f", name)
        down = subprocess.run(["docker-compose", "-f", str(root / "docker-compose.yml"), "down",
                               "-v", "--remove-orphans"], capture_output=True, text=True,
                              env=env, cwd=root, timeout=300)
        assert down.returncode == 0, down.stderr


def test_three_services_healthy_in_order(stack):
    for name in OUR_CONTAINERS:
        wait_state(name, "running healthy", 120)
    engine, proxy = inspect("vllm-container"), inspect("litellm-container")
    first_healthy = min(entry["End"] for entry in engine["State"]["Health"]["Log"]
                        if entry["ExitCode"] == 0) if engine["State"]["Health"]["Log"] else None
    # The proxy starts only after the engine's first successful health check (depends_on);
    # the log keeps the last five checks, so an old first success may have rotated out.
    if first_healthy is not None and len(engine["State"]["Health"]["Log"]) < 5:
        assert proxy["State"]["StartedAt"] > first_healthy[:26]
    assert engine["Config"]["Image"] == "vllm-mms-engine-cpu:latest"
    assert proxy["Config"]["Image"] == "vllm-mms-proxy:latest"


def test_openai_and_anthropic_clients_get_answers(stack):
    import anthropic
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.port}/v1", api_key=KEY)
    reply = client.chat.completions.create(
        model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "Capital of France?"}])
    assert reply.choices[0].message.content
    claude = anthropic.Anthropic(base_url=f"http://127.0.0.1:{stack.port}", api_key=KEY)
    message = claude.messages.create(model=MODEL, max_tokens=16,
                                     messages=[{"role": "user", "content": "Hello"}])
    assert message.content[0].text


def test_wrong_or_missing_key_is_401(stack):
    assert stack.chat(key="sk-wrong").status_code == 401
    response = httpx.post(f"http://127.0.0.1:{stack.port}/v1/chat/completions", timeout=30,
                          json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 401


def psql(sql: str) -> list[str]:
    out = docker("exec", "litellm_db", "psql", "-U", "litellm", "-d", "litellm", "-tAc", sql)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_usage_rows_land_in_postgres_with_the_status_the_client_got(stack):
    assert stack.chat(key="sk-wrong-for-usage").status_code == 401
    assert stack.chat().status_code == 200
    deadline = time.monotonic() + 60
    while True:
        statuses = psql("SELECT DISTINCT status FROM mms_usage ORDER BY status")
        if {"200", "401"} <= set(statuses) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert {"200", "401"} <= set(statuses), statuses
    assert "500" not in statuses
    assert KEY not in " ".join(psql("SELECT * FROM mms_usage"))


def test_keys_and_usage_commands_work_against_the_compose_database(stack):
    created = stack.run("keys", "create", "compose-bot", "--rpm", "50")
    assert created.returncode == 0, created.stderr
    key = re.search(r"sk-[A-Za-z0-9_-]{20,}", created.stdout).group(0)
    assert stack.chat(key=key).status_code == 200
    listed = stack.run("keys", "list")
    assert listed.returncode == 0 and "compose-bot" in listed.stdout and key not in listed.stdout
    deadline = time.monotonic() + 60
    while "compose-bot" not in (usage := stack.run("usage", "--by", "key")).stdout:
        assert time.monotonic() < deadline, usage.stdout + usage.stderr
        time.sleep(3)
    assert stack.run("keys", "revoke", "compose-bot").returncode == 0
    deadline = time.monotonic() + 30
    while stack.chat(key=key).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still answers after 30 s"
        time.sleep(2)


def test_vllm_is_pid_1_and_the_config_lives_only_on_the_tmpfs(stack):
    cmdline = docker("exec", "vllm-container", "cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[1:3] == ["-m", "vllm.entrypoints.openai.api_server"], cmdline
    assert cmdline[cmdline.index("--served-model-name") + 1] == "vllm_agent"
    assert cmdline[cmdline.index("--model") + 1] == "/app/weights"   # the mounted checkpoint
    assert KEY not in " ".join(cmdline) and "sk-engine" not in " ".join(cmdline)
    for name in ("vllm-container", "litellm-container"):
        mounts = docker("exec", name, "cat", "/proc/mounts").stdout.splitlines()
        fstype = [line.split()[2] for line in mounts if line.split()[1] == "/app/generated_configs"]
        assert fstype == ["tmpfs"], (name, fstype)
    volume = next(m for m in inspect("vllm-container")["Mounts"]
                  if m["Destination"] == "/app/generated_configs")
    host_fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", volume["Source"]],
                             capture_output=True, text=True).stdout.split()
    assert host_fs == ["tmpfs"], volume
    for image in ("vllm-mms-engine-cpu:latest", "vllm-mms-proxy:latest"):
        listed = docker("run", "--rm", "--entrypoint", "/bin/sh", image, "-c",
                        "ls -A /app/generated_configs 2>/dev/null | wc -l")
        assert listed.stdout.strip() == "0", (image, listed.stdout, listed.stderr)


def test_only_loopback_ports_are_published(stack):
    assert docker("port", "litellm-container").stdout.split("\n")[0] == \
        f"4000/tcp -> 127.0.0.1:{stack.port}"
    assert docker("port", "litellm-container").stdout.strip().count("\n") == 0
    assert docker("port", "vllm-container").stdout.strip() == ""
    assert docker("port", "litellm_db").stdout.strip() == ""


def test_status_logs_and_doctor_tell_the_truth_while_healthy(stack):
    status = stack.run("status")
    lines = status.stdout.splitlines()
    assert status.returncode == 0, status.stdout + status.stderr
    assert lines[:2] == ["mode:     compose", f"model:    {MODEL}"]
    for service, container in (("vllm-node", "vllm-container"),
                               ("litellm", "litellm-container"), ("litellm_db", "litellm_db")):
        assert any(line.startswith(f"{service + ':':<13}healthy  running (healthy)  "
                                   f"container {container}  up ") for line in lines), lines
    assert any(line.startswith("requests running: ") for line in lines), lines
    assert re.search(r"^proxy requests, last 5 min: +\d+$", status.stdout, re.M), lines
    logs = stack.run("logs", "engine")
    assert logs.returncode == 0 and "[entrypoint] exec" in logs.stdout + logs.stderr
    doctor = stack.run("doctor")
    for line in ("doctor (compose mode)", "ok    service vllm-node: running (healthy)",
                 "ok    service litellm: running (healthy)",
                 "ok    service litellm_db: running (healthy)",
                 "ok    generated config: present in the engine container",
                 "ok    proxy → engine: http://vllm-node:8000/health answers"):
        assert line in doctor.stdout.splitlines(), doctor.stdout


def test_docker_stop_delivers_sigterm_and_vllm_exits_in_the_grace_period(stack):
    start = time.monotonic()
    stopped = docker("stop", "-t", "30", "vllm-container")
    elapsed = stack.note("docker stop (SIGTERM) → exit", time.monotonic() - start)
    assert stopped.returncode == 0
    state = inspect("vllm-container")["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 0)   # not 137: no SIGKILL
    assert elapsed < 30
    status = stack.run("status")
    assert status.returncode == 1
    assert "vllm-node:   DOWN  exited  container vllm-container" in status.stdout
    doctor = stack.run("doctor")
    assert "fail  service vllm-node: exited" in doctor.stdout.splitlines()
    try:  # the proxy may answer an error or wait for the connection: never a 200
        assert stack.chat(timeout=15).status_code != 200
    except httpx.TimeoutException:
        pass
    assert docker("start", "vllm-container").returncode == 0
    stack.wait_serving("docker start → first 200")


def test_engine_killed_is_restarted_and_the_proxy_answers_without_its_own_restart(stack):
    proxy_started = inspect("litellm-container")["State"]["StartedAt"]
    start = time.monotonic()
    # SIGKILL to vLLM from outside docker (as the OOM killer would): `docker kill` counts as
    # a deliberate stop, which restart: unless-stopped leaves alone.
    engine = inspect("vllm-container")
    pid = engine["State"]["Pid"]
    # the host pid is only meaningful with a local daemon: make sure it is this engine's vLLM
    assert b"vllm.entrypoints.openai.api_server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    os.kill(pid, signal.SIGKILL)
    # Docker notices the death when it gets to it (seconds on a loaded machine): wait for
    # that, then the state must be the restart, not an exit.
    deadline = time.monotonic() + 60
    while health("vllm-container") == "running healthy" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert health("vllm-container") in ("running starting", "restarting")
    assert stack.run("status").returncode == 1
    stack.wait_serving("engine kill -9 → first 200 again")
    assert inspect("vllm-container")["RestartCount"] >= 1
    assert inspect("litellm-container")["State"]["StartedAt"] == proxy_started
    stack.note("engine kill -9 → first 200 again (total)", time.monotonic() - start)


def test_several_models_each_in_its_own_engine_container_then_back_to_one(stack):
    start = time.monotonic()
    up = stack.run(MODEL, "smollm2-135m-cpu-fast", "-d", timeout=1800)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    beside = "vllm-container-smollm2-135m-cpu-fast"
    for name in ("vllm-container", beside):
        wait_state(name, "running healthy", 900)
    stack.wait_serving("two models: the first answers")
    stack.wait_serving("two models: the second answers", model="smollm2-135m-cpu-fast")
    stack.note("up with two models on the running stack → both answer",
               time.monotonic() - start)
    env = dict(line.split("=", 1) for line in inspect(beside)["Config"]["Env"])
    assert (env["MODEL"], env["MMS_BESIDE"]) == ("smollm2-135m-cpu-fast", "1")
    shares = [float(dict(line.split("=", 1) for line in inspect(n)["Config"]["Env"])
                    ["MMS_MEMORY_SHARE"]) for n in ("vllm-container", beside)]
    assert all(0 < share < 1 for share in shares), shares
    # each model's requests reach its own engine
    before = {name: engine_requests(name) for name in ("vllm-container", beside)}
    for _ in range(3):
        assert stack.chat(model="smollm2-135m-cpu-fast").status_code == 200
    assert {name: engine_requests(name) - before[name] for name in before} == \
        {"vllm-container": 0, beside: 3}
    listed = httpx.get(f"http://127.0.0.1:{stack.port}/v1/models", timeout=30,
                       headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    assert {"smollm2-135m-cpu", "smollm2-135m-cpu-fast"} <= {m["id"] for m in listed}
    ps = stack.run("ps")
    assert ps.returncode == 0, ps.stdout + ps.stderr
    rows = [line.split() for line in ps.stdout.splitlines()[1:]]
    assert [(r[0], r[1], r[3]) for r in rows] == [
        (MODEL, "ready", "vllm-container"), ("smollm2-135m-cpu-fast", "ready", beside)]
    assert [float(r[5]) for r in rows] == shares
    status = stack.run("status")
    assert "models:   smollm2-135m-cpu, smollm2-135m-cpu-fast" in status.stdout.splitlines()
    switched = stack.run("switch", "smollm2-135m-cpu-fast")
    assert switched.returncode == 1 and "this one serves smollm2-135m-cpu, " \
        "smollm2-135m-cpu-fast" in switched.stderr, switched.stderr
    # back to one model: the engine beside it goes (--remove-orphans)
    one = stack.run(MODEL, "-d", timeout=1800)
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    assert docker("inspect", beside).returncode != 0
    stack.wait_serving("back to one model → 200")


def ps_rows(stack: ComposeStack) -> dict[str, list[str]]:
    ps = stack.run("ps")
    assert ps.returncode == 0, ps.stdout + ps.stderr
    return {line.split()[0]: line.split()[1:] for line in ps.stdout.splitlines()[1:]}


def test_an_on_demand_model_loads_in_its_own_container_when_a_request_names_it(stack):
    fast = "smollm2-135m-cpu-fast"
    container = f"vllm-container-{fast}"
    up = stack.run(MODEL, "--on-demand", fast, "-d", timeout=1800)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    assert f"by a supervisor on this host): {fast}" in up.stdout
    stack.wait_serving("on-demand set: the resident model answers")
    assert docker("inspect", container).returncode != 0   # `up` does not start it
    assert ps_rows(stack)[fast][:2] == ["unloaded", "-"]
    start = time.monotonic()
    held = stack.chat(model=fast, timeout=900)            # held while its container loads
    assert held.status_code == 200, held.text
    stack.note("on-demand model in compose: request held → loaded → 200",
               time.monotonic() - start)
    assert inspect(container)["State"]["Status"] == "running"
    row = ps_rows(stack)[fast]
    assert row[0] in ("ready", "idle") and row[1:3] == ["container", container], row
    unload = stack.run("unload", fast, timeout=300)
    assert (unload.returncode, unload.stdout.splitlines()[-1]) == (0, f"{fast} is unloaded")
    assert inspect(container)["State"]["Status"] == "exited"
    assert ps_rows(stack)[fast][:2] == ["unloaded", "-"]
    doctor = stack.run("doctor").stdout.splitlines()
    assert f"ok    service vllm-node-{fast}: not loaded (on demand)" in doctor, doctor
    assert any(line.startswith("ok    on-demand supervisor: pid ") for line in doctor), doctor
    # back to the one model: the supervisor stops, the on-demand engine goes (an orphan now)
    supervisor = json.loads((Path(stack.env["MMS_STATE_DIR"]) / "compose-stack.json")
                            .read_text())["supervisor_pid"]
    one = stack.run(MODEL, "-d", timeout=1800)
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    assert not Path(f"/proc/{supervisor}").exists() or \
        Path(f"/proc/{supervisor}/stat").read_text().split(") ", 1)[1][0] == "Z"
    assert docker("inspect", container).returncode != 0
    stack.wait_serving("back to one model after on-demand → 200")


def write_variant(stack: ComposeStack, name: str, *, extra_flag: str = "",
                  temperature: Optional[float] = None) -> None:
    text = (stack.root / "models" / f"{MODEL}.yml").read_text()
    text = text.replace('aliases: ["smollm2"]', "aliases: []")
    if extra_flag:
        text = text.replace("  --enforce-eager", f"  --enforce-eager\n  {extra_flag}")
    if temperature is not None:
        text = text.replace("  temperature: 0.2", f"  temperature: {temperature}")
    (stack.root / "models" / f"{name}.yml").write_text(text)


def test_switch_rolls_back_a_failing_model_then_moves_to_a_good_one(stack):
    # A value vLLM's argument parser refuses (ours passes engine flags through).
    write_variant(stack, "smollm2-broken", extra_flag="--kv-cache-dtype bogus")
    write_variant(stack, "smollm2-warm", temperature=0.9)
    failed = stack.run("switch", "smollm2-broken", timeout=1800)
    assert failed.returncode == 1
    assert re.fullmatch(
        r"error: switch to smollm2-broken failed \(vLLM exited and the engine container "
        r"restarted \(\d+x\)\); rolled back: smollm2-135m-cpu serves again",
        failed.stderr.strip().splitlines()[-1]), failed.stderr
    stack.wait_serving("switch rollback → 200")
    start = time.monotonic()
    moved = stack.run("switch", "smollm2-warm", timeout=1800)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert moved.stdout.strip().splitlines()[-1] == (
        "switched: smollm2-135m-cpu -> smollm2-warm; the proxy follows the new configuration")
    stack.wait_serving("switch → the new model answers", model="smollm2-warm")
    stack.note("switch to a good model, total", time.monotonic() - start)
    status = stack.run("status")
    assert "model:    smollm2-warm" in status.stdout.splitlines()


def engine_requests(container: str) -> float:
    """Requests an engine container finished, from its own /metrics (port not published)."""
    text = docker("exec", container, "python3", "-c", "import urllib.request; print(urllib."
                  "request.urlopen('http://127.0.0.1:8000/metrics', timeout=5).read().decode())"
                  ).stdout
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total{"))


def test_two_replicas_share_the_traffic_and_prometheus_scrapes_both_metrics(stack):
    start = time.monotonic()
    up = stack.run(MODEL, "-d", "--replicas", "2", timeout=1800)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    override = Path(stack.env["MMS_STATE_DIR"]) / "compose.replicas.yml"
    assert "vllm-node-2" in override.read_text()
    for name in ("vllm-container", "vllm-container-2"):
        wait_state(name, "running healthy", 900)
    stack.wait_serving("replicas 2: first 200")
    stack.note("up --replicas 2 on the running stack → both healthy, 200", time.monotonic() - start)
    second = inspect("vllm-container-2")
    assert "MMS_SERVE_WEIGHTS=/app/weights" in second["Config"]["Env"]   # the CPU file's too
    before = {name: engine_requests(name) for name in ("vllm-container", "vllm-container-2")}
    for _ in range(12):
        assert stack.chat().status_code == 200
    served = {name: engine_requests(name) - before[name] for name in before}
    assert sum(served.values()) == 12 and all(n > 0 for n in served.values()), served
    status = stack.run("status")
    assert "vllm-node-2: healthy  running (healthy)  container vllm-container-2" in \
        status.stdout, status.stdout

    # The metrics profile's Prometheus (Grafana has no stand-in here: not started). It reads
    # the proxy key from secrets/ and runs as nobody, as the official image does.
    key_file = stack.root / "secrets" / "LITELLM_MASTER_KEY"
    key_file.write_text(KEY)
    key_file.chmod(0o644)
    prometheus_port = processes.free_port()
    env = {**stack.env, "PROMETHEUS_PORT": str(prometheus_port)}
    started = subprocess.run(["docker-compose", "-f", str(stack.root / "docker-compose.yml"),
                              "--profile", "metrics", "up", "-d", "--no-deps", "prometheus"],
                             capture_output=True, text=True, env=env, cwd=stack.root, timeout=300)
    assert started.returncode == 0, started.stderr
    assert docker("port", "prometheus").stdout.strip() == f"9090/tcp -> 127.0.0.1:{prometheus_port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            targets = httpx.get(f"http://127.0.0.1:{prometheus_port}/api/v1/targets",
                                timeout=10).json()["data"]["activeTargets"]
        except (httpx.HTTPError, ValueError, KeyError):
            targets = []
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if health == {"vllm": "up", "litellm": "up"} or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert health == {"vllm": "up", "litellm": "up"}, targets
    assert docker("rm", "-f", "prometheus").returncode == 0


def test_down_leaves_no_container_network_or_tmpfs_and_then_everything_says_so(stack):
    project = inspect("vllm-container")["Config"]["Labels"]["com.docker.compose.project"]
    down = stack.run("down")
    assert down.returncode == 0, down.stderr
    label = f"label=com.docker.compose.project={project}"
    assert docker("ps", "-aq", "--filter", label).stdout.strip() == ""
    assert docker("network", "ls", "-q", "--filter", label).stdout.strip() == ""
    volumes = docker("volume", "ls", "-q", "--filter", label).stdout.split()
    assert [v for v in volumes if v.endswith("generated_configs")] == []
    assert [v for v in volumes if v.endswith("postgres_data")] != []   # the user's usage rows
    mounts = Path("/proc/mounts").read_text()
    assert f"{project}_generated_configs" not in mounts
    status = stack.run("status")
    assert (status.returncode, status.stdout) == (
        1, "nothing is running (start with ./runMe.sh --local, or MODEL=NAME ./runMe.sh)\n")
    again = stack.run("down")
    assert (again.returncode, again.stdout) == (0, "nothing is running\n")
    assert "Network" not in again.stderr
    doctor = stack.run("doctor")
    assert "warn  compose stack: nothing is running" in doctor.stdout.splitlines()


def test_a_cold_start_from_built_images_serves_and_stops_again(stack):
    start = time.monotonic()
    up = stack.run(MODEL, "-d", timeout=1800)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    stack.wait_serving("cold start (up -d, images built) → first 200 [partial]")
    stack.note("cold start (up -d, images built) → first 200", time.monotonic() - start)
    assert stack.run("down").returncode == 0
