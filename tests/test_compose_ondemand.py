"""On-demand models in compose mode (vllm_mms.stack.compose_ondemand): the host supervisor's
Loader with engine containers, against a stand-in `docker` that records the commands and
plays the containers (state, health, metrics, logs). The Loader's policy itself is
tests/test_on_demand.py's; the real containers are the Compose suite's."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from vllm_mms.config.resolve import Project
from vllm_mms.engine.fit import GiB
from vllm_mms.proxy import board
from vllm_mms.stack import compose_ondemand
from vllm_mms.stack.compose_ondemand import ComposeStack, ContainerEngines
from vllm_mms.stack.ondemand import Loader
from vllm_mms.stack.state import OnDemand, Service

MODEL = "smollm2-135m-cpu-fast"
CONTAINER = f"vllm-container-{MODEL}"
COMPOSE = ["docker", "compose", "-f", "docker-compose.yml", "-f", "compose.models.yml"]

# The containers as the test sets them: {name: {"Status", "Health", "running", "waiting"}}.
FAKE_DOCKER = """#!{python}
import json, sys
path = {state!r}
data = json.load(open(path))
args = sys.argv[1:]
data["calls"].append(args)
out, code = "", 0
box = data["containers"]
if args[0] == "compose" and "up" in args:
    box[{container!r}] = dict(Status="running", Health="starting", running=0, waiting=0)
elif args[0] == "compose" and "stop" in args:
    box[{container!r}]["Status"] = "exited"
elif args[0] == "inspect":
    c = box.get(args[-1])
    if c is None:
        code = 1
    else:
        out = json.dumps(dict(Status=c["Status"], Pid=4242 if c["Status"] == "running" else 0,
                              Health=dict(Status=c["Health"])))
elif args[0] == "exec":
    c = box[args[1]]
    out = ('vllm:num_requests_running{{model_name="vllm_agent"}} %s\\n'
           'vllm:num_requests_waiting{{model_name="vllm_agent"}} %s\\n' % (c["running"], c["waiting"]))
elif args[0] == "logs":
    out = "INFO loading\\nValueError: the engine could not load the model\\n"
json.dump(data, open(path, "w"))
sys.stdout.write(out)
sys.exit(code)
"""


class Docker:
    def __init__(self, tmp_path: Path, monkeypatch) -> None:
        self.state = tmp_path / "docker.json"
        self.state.write_text(json.dumps({"calls": [], "containers": {}}))
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        docker = bin_dir / "docker"
        docker.write_text(FAKE_DOCKER.format(python=sys.executable, state=str(self.state),
                                             container=CONTAINER))
        docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")

    def calls(self) -> list[list[str]]:
        calls = json.loads(self.state.read_text())["calls"]
        return [c for c in calls if c[0] == "compose"]

    def set(self, **fields) -> None:
        data = json.loads(self.state.read_text())
        data["containers"][CONTAINER].update(fields)
        self.state.write_text(json.dumps(data))


@pytest.fixture
def world(tmp_path, monkeypatch, project_dir):
    monkeypatch.setenv("MMS_STATE_DIR", str(tmp_path / "state"))
    docker = Docker(tmp_path, monkeypatch)
    ComposeStack(model="smollm2-135m-cpu", log_dir=str(tmp_path / "logs"), started=0,
                 services=[Service("engine", 1, 0, 8000, share=0.5),
                           Service("proxy", 1, 0, 4000)],
                 on_demand=[OnDemand(MODEL, 8000, 1.0, GiB)], budget=2.0 * GiB,
                 share_unit=GiB, compose=COMPOSE).save()
    clock = {"now": 1000.0}
    loader = Loader(Project(project_dir), ttl=300, load_timeout=100,
                    engines=ContainerEngines(COMPOSE),  # type: ignore[arg-type]
                    clock=lambda: clock["now"])
    return docker, loader, clock


def tick(loader: Loader) -> ComposeStack:
    stack = ComposeStack.load()
    assert stack is not None
    loader.tick(stack)
    loaded = ComposeStack.load()
    assert loaded is not None
    return loaded


def state() -> tuple[str, str]:
    found = board.states()[MODEL]
    return found.state, found.error


def test_a_wish_starts_the_engine_container_and_it_becomes_ready_then_unloads(world):
    docker, loader, clock = world
    board.want(MODEL)
    stack = tick(loader)
    assert docker.calls() == [[*COMPOSE[1:], "--profile", "on-demand", "up", "-d", "--no-deps",
                               f"vllm-node-{MODEL}"]]
    assert [(s.model, s.pid, s.share) for s in stack.engines] == [("", 0, 0.5), (MODEL, 4242, 1.0)]
    assert state() == ("loading", "")
    tick(loader)
    assert state() == ("loading", "")   # Docker's health check: still starting
    docker.set(Health="healthy")
    tick(loader)
    assert state() == ("ready", "")
    clock["now"] += 301
    docker.set(running=1)               # a request runs: not unloaded past its TTL
    tick(loader)
    assert state() == ("ready", "") and len(docker.calls()) == 1
    docker.set(running=0)
    stack = tick(loader)
    assert docker.calls()[-1] == [*COMPOSE[1:], "--profile", "on-demand", "stop",
                                  f"vllm-node-{MODEL}"]
    assert state() == ("unloaded", "unloaded after 300s without requests")
    assert [s.model for s in stack.engines] == [""]
    # ComposeStack stays its own file: local mode sees no stack
    from vllm_mms.stack.state import Stack

    assert Stack.load() is None and ComposeStack.path().name == "compose-stack.json"


def test_an_engine_container_that_exits_while_loading_fails_with_its_last_log_line(world):
    docker, loader, clock = world
    board.want(MODEL)
    tick(loader)
    docker.set(Status="exited")
    stack = tick(loader)
    assert state() == ("failed", f"{MODEL} failed to load: its engine exited while loading; "
                                 "its log ends: ValueError: the engine could not load the model")
    assert docker.calls()[-1][-2:] == ["stop", f"vllm-node-{MODEL}"]
    assert [s.model for s in stack.engines] == [""]


def test_the_supervisor_ends_when_down_removes_its_stack_file(world, project_dir):
    stack = ComposeStack.load()
    assert stack is not None
    stack.supervisor_pid = 99999999   # another supervisor's: this one is not in charge
    stack.save()
    assert compose_ondemand.supervise(Project(project_dir), interval=0) == 0
    ComposeStack.path().unlink()
    assert compose_ondemand.supervise(Project(project_dir), interval=0) == 1
