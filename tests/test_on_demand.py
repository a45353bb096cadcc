"""The supervisor's on-demand loader (stack/ondemand.py) and the load board, with stand-in
engine processes (`sleep`), a stand-in health check and metrics, and a clock the test moves:
loads, one load per wish, eviction of the least recently used idle model (never a busy one,
never a resident one), the refusal with the numbers, the TTL, a failed load. (The real
engines: tests/e2e/test_on_demand.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vllm_mms.config.resolve import Project
from vllm_mms.engine.fit import GiB
from vllm_mms.proxy import board
from vllm_mms.stack import local, ondemand
from vllm_mms.stack.state import OnDemand, Service, Stack

FAST, OTHER = "smollm2-135m-cpu-fast", "smollm2-od-b"


class World:
    """The stand-ins: engine processes, which ports answer /health, which engines are busy."""

    def __init__(self, monkeypatch, tmp_path) -> None:
        self.procs: list[subprocess.Popen] = []
        self.healthy: set[int] = set()
        self.busy: set[int] = set()
        self.now = 1000.0
        monkeypatch.setenv("MMS_STATE_DIR", str(tmp_path / "state"))
        monkeypatch.setattr(local, "engine_process", self.engine_process)
        monkeypatch.setattr(ondemand, "http_ok", lambda url: int(url.split(":")[2].split("/")[0])
                            in self.healthy)
        monkeypatch.setattr(ondemand.bootstrap, "ensure_env", lambda name: tmp_path / "python")

    def engine_process(self, resolved, python, weights, key, logs, port, **kwargs):
        proc = subprocess.Popen(["sleep", "60"])
        self.procs.append(proc)
        return proc

    def probe(self, port):
        return {"vllm:num_requests_running": 1.0 if port in self.busy else 0.0,
                "vllm:num_requests_waiting": 0.0}

    def stop(self):
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def world(monkeypatch, tmp_path, project_dir):
    (project_dir / "models" / f"{OTHER}.yml").write_text(
        (project_dir / "models" / f"{FAST}.yml").read_text()
        .replace('aliases: ["smollm2-fast"]', "aliases: []"))
    made = World(monkeypatch, tmp_path)
    resident = subprocess.Popen(["sleep", "60"])
    made.procs.append(resident)
    # Room for the resident model (0.5 GiB) and one on-demand model (1 GiB each), not two.
    Stack(model="smollm2-135m-cpu", log_dir=str(tmp_path), started=0,
          services=[Service("engine", 1, resident.pid, 8001, share=0.5),
                    Service("proxy", 1, resident.pid, 4000)],
          on_demand=[OnDemand(FAST, 9001, 1.0, GiB), OnDemand(OTHER, 9002, 1.0, GiB)],
          budget=2.0 * GiB, share_unit=GiB).save()
    engines = ondemand.LocalEngines(Project(project_dir))
    engines.metrics = lambda engine: made.probe(engine.port)  # type: ignore[method-assign]
    made.loader = ondemand.Loader(Project(project_dir), ttl=300, load_timeout=100,
                                  engines=engines, clock=lambda: made.now)
    yield made
    made.stop()


def tick(world) -> Stack:
    stack = Stack.load()
    world.loader.tick(stack)
    return Stack.load()


def states() -> dict[str, tuple[str, str]]:
    return {name: (s.state, s.error) for name, s in board.states().items()}


def test_a_wish_loads_the_model_once_and_it_becomes_ready(world):
    board.want(FAST)
    board.want(FAST)  # two held requests, one wish file
    stack = tick(world)
    assert [(s.model, s.port, s.share) for s in stack.engines] == [("", 8001, 0.5),
                                                                    (FAST, 9001, 1.0)]
    assert states() == {FAST: ("loading", "")}
    assert len(world.procs) == 2  # the resident one and one load
    tick(world)
    assert states() == {FAST: ("loading", "")}  # not healthy yet
    world.healthy.add(9001)
    tick(world)
    assert states() == {FAST: ("ready", "")}


def test_short_memory_unloads_the_idle_model_least_recently_used_first(world):
    board.want(FAST)
    tick(world)
    world.healthy.add(9001)
    tick(world)
    first = world.procs[-1]
    board.want(OTHER)
    stack = tick(world)
    assert [s.model for s in stack.engines] == ["", OTHER]
    assert first.poll() is not None  # stopped
    assert states() == {FAST: ("unloaded", f"unloaded to make room for {OTHER}"),
                        OTHER: ("loading", "")}


def test_a_busy_model_is_never_unloaded_and_the_load_fails_with_the_numbers(world):
    board.want(FAST)
    tick(world)
    world.healthy.add(9001)
    world.busy.add(9001)
    tick(world)
    board.want(OTHER)
    stack = tick(world)
    assert [s.model for s in stack.engines] == ["", FAST]
    assert states()[OTHER] == ("failed", (
        f"{OTHER} needs 1.0 GiB, 0.5 GiB of the 2.0 GiB budget are free and no idle on-demand "
        f"model is left to unload (resident models are never unloaded)"))


def test_an_idle_model_unloads_after_its_ttl_a_busy_one_does_not(world):
    board.want(FAST)
    tick(world)
    world.healthy.add(9001)
    tick(world)
    world.now += 299
    tick(world)
    assert states()[FAST][0] == "ready"
    world.busy.add(9001)
    world.now += 2
    tick(world)
    assert states()[FAST][0] == "ready"  # past its TTL, but a request runs
    world.busy.clear()
    stack = tick(world)
    assert states()[FAST] == ("unloaded", "unloaded after 300s without requests")
    assert [s.model for s in stack.engines] == [""]


def test_an_engine_that_exits_while_loading_fails_the_load(world):
    board.want(FAST)
    stack = tick(world)
    (Path(stack.log_dir) / f"engine-{FAST}.log").write_text(
        "INFO starting\nvllm: error: unrecognized arguments: --no-such-flag\n\n")
    world.procs[-1].kill()
    world.procs[-1].wait()
    stack = tick(world)
    assert [s.model for s in stack.engines] == [""]
    assert states()[FAST] == ("failed", f"{FAST} failed to load: its engine exited while "
                                        f"loading; its log ends: vllm: error: unrecognized "
                                        f"arguments: --no-such-flag")


def test_a_load_past_its_deadline_fails_and_stops_the_engine(world):
    board.want(FAST)
    tick(world)
    world.now += 101
    tick(world)
    assert states()[FAST] == ("failed", f"{FAST} failed to load: not healthy after 100s "
                                        f"(LOAD_TIMEOUT)")
    assert world.procs[-1].poll() is not None


def test_unload_by_hand_and_wishes_for_other_models_are_ignored(world):
    board.want(FAST)
    board.want("smollm2-135m-cpu")  # resident: not the loader's
    board.want("nope")
    tick(world)
    world.healthy.add(9001)
    tick(world)
    board.drop(FAST)
    stack = tick(world)
    assert [s.model for s in stack.engines] == [""]
    assert states() == {FAST: ("unloaded", "unloaded (./runMe.sh unload)")}
