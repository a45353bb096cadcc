"""`switch` in compose mode: the exact docker commands, against a stand-in `docker` that
records them and plays the engine container (healthy, or unhealthy for a chosen model)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from .conftest import docker_stand_in, run_cli
from .fake_clock import FakeClock

FAKE_DOCKER = """#!{python}
import json, os, sys
state = {state!r}
data = json.load(open(state))
args = sys.argv[1:]
data["calls"].append({{"argv": args, "MODEL": os.environ.get("MODEL"),
                      "MMS_WEIGHTS_HOST_DIR": os.environ.get("MMS_WEIGHTS_HOST_DIR")}})
out = ""
if args[:2] == ["compose", "version"] or args[:2] == ["ps", "-q"]:
    pass
elif args[0] == "inspect" and "Config.Env" in args[2]:
    out = "PATH=/usr/bin\\nMODEL=" + data["model"] + "\\n"
elif args[0] == "inspect":
    out = ("running 3 starting" if data["model"] == data["broken"] else "running 0 healthy") + "\\n"
elif args[0] == "compose" and "up" in args:
    data["model"] = os.environ["MODEL"]
elif args[0] == "compose" and "logs" in args:
    out = "vllm-container | ValueError: the engine could not load the model\\n"
json.dump(data, open(state, "w"))
sys.stdout.write(out)
"""


def fake_docker(tmp_path: Path, model: str, broken: str = "") -> tuple[Path, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "docker-state.json"
    state.write_text(json.dumps({"model": model, "broken": broken, "calls": []}))
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable, state=str(state)))
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    return bin_dir, state


def calls(state: Path) -> list[tuple[list[str], str]]:
    """The calls that change or watch the stack (probes left out)."""
    seen = json.loads(state.read_text())["calls"]
    return [(c["argv"], c["MODEL"]) for c in seen
            if c["argv"][:2] not in (["compose", "version"], ["ps", "-q"])]


def up(project: Path, model: str) -> tuple[list[str], str]:
    return (["compose", "-f", str(project / "docker-compose.yml"), "-f",
             str(project / "docker-compose.gpu.yml"), "up", "-d", "--no-deps",
             "--no-build", "--force-recreate", "vllm-node"], model)


ENV_FORMAT = ["inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", "vllm-container"]
HEALTH = ["inspect", "--format", "{{.State.Status}} {{.RestartCount}} "
          "{{if .State.Health}}{{.State.Health.Status}}{{end}}", "vllm-container"]


def run_switch(project_dir: Path, bin_dir: Path, *args: str):
    (project_dir / "docker-compose.yml").write_text("services: {}\n")
    # Only the stand-in on PATH: no docker or nvidia-smi of this machine takes part.
    return run_cli("switch", *args, project=project_dir, env={"PATH": str(bin_dir)})


def test_switch_recreates_only_the_engine(project_dir, tmp_path):
    bin_dir, state = fake_docker(tmp_path, "glm47-flash")
    result = run_switch(project_dir, bin_dir, "qwen3-next-coder")
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1] == ("switched: glm47-flash -> qwen3-next-coder; the "
                                           "proxy follows the new configuration")
    assert calls(state) == [(ENV_FORMAT, None), (ENV_FORMAT, None),
                            up(project_dir, "qwen3-next-coder"), (HEALTH, None)]


def test_failing_new_model_rolls_back(project_dir, tmp_path):
    bin_dir, state = fake_docker(tmp_path, "glm47-flash", broken="qwen3-next-coder")
    result = run_switch(project_dir, bin_dir, "qwen3-next-coder")
    assert result.code == 1
    assert "switch to qwen3-next-coder failed: vLLM exited and the engine container restarted " \
           "(3x); last engine log lines:\nvllm-container | ValueError: the engine could not load " \
           "the model\n" in result.err
    assert result.err.endswith("error: switch to qwen3-next-coder failed (vLLM exited and the "
                               "engine container restarted (3x)); rolled back: glm47-flash "
                               "serves again\n")
    compose = ["compose", "-f", str(project_dir / "docker-compose.yml")]
    assert calls(state) == [
        (ENV_FORMAT, None), (ENV_FORMAT, None),
        up(project_dir, "qwen3-next-coder"), (HEALTH, None),
        ([*compose, "logs", "--no-color", "--tail", "30", "vllm-node"], None),
        up(project_dir, "glm47-flash"), (HEALTH, None)]


def test_a_model_that_does_not_fit_is_refused_before_any_change(project_dir, tmp_path):
    bin_dir, state = fake_docker(tmp_path, "glm47-flash")
    result = run_switch(project_dir, bin_dir, "step-3.5-flash")
    assert result.code == 1
    assert result.err.startswith("error: step-3.5-flash does not fit this machine:")
    assert calls(state) == [(ENV_FORMAT, None), (ENV_FORMAT, None)]  # nothing recreated


def test_switch_to_what_already_serves(project_dir, tmp_path):
    bin_dir, state = fake_docker(tmp_path, "glm47-flash")
    result = run_switch(project_dir, bin_dir, "glm47-flash")
    assert (result.code, result.out) == (0, "glm47-flash is already serving\n")


def test_switch_with_nothing_running(project_dir, tmp_path):
    # A Docker engine that answers, with none of our containers (and no local stack).
    bin_dir = docker_stand_in(tmp_path, tmp_path / "record", [])
    result = run_cli("switch", "glm47-flash", project=project_dir,
                     env={"PATH": f"{bin_dir}:/nonexistent"})
    assert (result.code, result.err) == (
        1, "error: nothing is running to switch; start glm47-flash with: "
           "MODEL=glm47-flash ./runMe.sh\n")


def test_switch_to_an_unknown_model(project_dir, tmp_path):
    bin_dir, state = fake_docker(tmp_path, "glm47-flash")
    result = run_switch(project_dir, bin_dir, "../etc/passwd")
    assert result.code == 2
    assert result.err.startswith("error: invalid model name '../etc/passwd': use lower-case ")
    assert calls(state) == []


class _Metrics:
    """A stand-in engine /metrics: requests running until `busy_for` polls have passed; it
    notes the (fake) time of each poll."""

    def __init__(self, busy_for: int, clock: FakeClock) -> None:
        self.polled_at: list[float] = []
        self.busy_for = busy_for
        self.clock = clock

    def serve(self):
        import http.server
        import threading

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.polled_at.append(outer.clock.now)
                running = 1 if len(outer.polled_at) <= outer.busy_for else 0
                body = (f'vllm:num_requests_running{{model_name="vllm_agent"}} {running}.0\n'
                        f'vllm:num_requests_waiting{{model_name="vllm_agent"}} 0.0\n').encode()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def test_drain_waits_for_running_requests_to_finish():
    from vllm_mms.stack.switch import drain, engine_load

    clock = FakeClock()
    metrics = _Metrics(busy_for=4, clock=clock)
    server = metrics.serve()
    try:
        port = server.server_address[1]
        assert engine_load(port) == 1.0
        waited = drain(port, deadline_s=30, quiet_s=1.0, clock=clock)
        # Busy at 0 s, 0.5 s and 1 s; idle from 1.5 s, and idle still 1 s later.
        assert metrics.polled_at[1:] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
        assert waited == 2.5
    finally:
        server.shutdown()


def test_drain_waits_out_a_quiet_period_before_calling_an_engine_idle():
    """A request routed just before the proxy moved may not show in the gauges yet: one idle
    reading is not enough."""
    from vllm_mms.stack.switch import DRAIN_QUIET_S, drain

    clock = FakeClock()
    metrics = _Metrics(busy_for=0, clock=clock)
    server = metrics.serve()
    try:
        assert drain(server.server_address[1], deadline_s=30, clock=clock) == DRAIN_QUIET_S
        assert metrics.polled_at == [k * 0.5 for k in range(int(DRAIN_QUIET_S / 0.5) + 1)]
    finally:
        server.shutdown()


def test_drain_gives_up_at_the_deadline_and_on_a_dead_engine():
    from vllm_mms.stack.switch import drain, engine_load

    clock = FakeClock()
    metrics = _Metrics(busy_for=10**6, clock=clock)
    server = metrics.serve()
    try:
        assert drain(server.server_address[1], deadline_s=1.0, clock=clock) == 1.5
        assert metrics.polled_at == [0.0, 0.5, 1.0, 1.5]  # the last one past the deadline
    finally:
        server.shutdown()
        server.server_close()
    assert engine_load(server.server_address[1]) is None
    dead = FakeClock()
    assert drain(server.server_address[1], deadline_s=30, clock=dead) == 0.0
    assert dead.sleeps == []


def test_up_issues_the_exact_compose_command(project_dir, tmp_path):
    bin_dir, state = fake_docker(tmp_path, "glm47-flash")
    (project_dir / "docker-compose.yml").write_text("services: {}\n")
    result = run_cli("qwen3-next-coder", "-d", "--metrics", project=project_dir,
                     env={"PATH": str(bin_dir)})
    assert result.code == 0, result.err
    compose, gpu = (str(project_dir / name) for name in ("docker-compose.yml",
                                                          "docker-compose.gpu.yml"))
    assert result.out == (f"starting qwen3-next-coder with: docker compose -f {compose} "
                          f"-f {gpu} --profile metrics up --remove-orphans -d\n")
    assert calls(state) == [(["compose", "-f", compose, "-f", gpu, "--profile", "metrics", "up",
                              "--remove-orphans", "-d"], "qwen3-next-coder")]


def test_a_cpu_model_starts_with_the_cpu_file_and_its_prepared_checkpoint(project_dir, tmp_path):
    from vllm_mms.engine.prepare_model import weights_dir

    if not (weights_dir() / ".complete").exists():   # ./runMe.sh test prepares it
        if os.environ.get("CI"):
            pytest.fail(f"the prepared checkpoint is missing: {weights_dir()}")
        pytest.skip("the prepared checkpoint is not there (./runMe.sh test prepares it)")
    bin_dir, state = fake_docker(tmp_path, "glm47-flash")
    (project_dir / "docker-compose.yml").write_text("services: {}\n")
    meminfo = tmp_path / "meminfo"  # fit's free-memory check: pinned, not this host's
    meminfo.write_text("MemTotal:       24576000 kB\nMemAvailable:   20480000 kB\n")
    result = run_cli("smollm2-135m-cpu", "-d", "--build", project=project_dir,
                     env={"PATH": f"{bin_dir}:/usr/bin:/bin", "MMS_MEMINFO": str(meminfo)})
    assert result.code == 0, result.err
    compose, cpu = (str(project_dir / name) for name in ("docker-compose.yml",
                                                        "docker-compose.cpu.yml"))
    seen = json.loads(state.read_text())["calls"][-1]
    assert seen["argv"] == ["compose", "-f", compose, "-f", cpu, "up", "--remove-orphans", "-d",
                            "--build"]
    assert seen["MODEL"] == "smollm2-135m-cpu"
    assert seen["MMS_WEIGHTS_HOST_DIR"] == str(weights_dir())


def test_switch_between_a_cpu_and_a_gpu_model_is_refused(project_dir, tmp_path):
    bin_dir, state = fake_docker(tmp_path, "smollm2-135m-cpu")
    result = run_switch(project_dir, bin_dir, "glm47-flash")
    assert (result.code, result.err) == (1, (
        "error: switch keeps the engine image, and smollm2-135m-cpu is a CPU model while "
        "glm47-flash is a GPU model: ./runMe.sh down && ./runMe.sh glm47-flash -d --build\n"))
    assert calls(state) == [(ENV_FORMAT, None), (ENV_FORMAT, None)]  # read, nothing recreated
