"""Local mode's state: the stack file (Stack.load / save), the services in it as status,
doctor and logs show them, and the waits of start, switch and the containers
(progress.wait_until) on a clock whose sleeps take no time."""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from vllm_mms.errors import UserError
from vllm_mms.progress import wait_until
from vllm_mms.stack import container, local, switch
from vllm_mms.stack.processes import free_port
from vllm_mms.stack.state import Service, Stack

from .conftest import run_cli
from .fake_clock import FakeClock

# The layout before engines and replicas became one list: what an older version left behind.
OLD_FORMAT = {"model": "smollm2-135m-cpu", "engine_pid": 999999, "proxy_pid": 999998,
              "engine_port": 1, "proxy_port": 2, "log_dir": "/tmp", "started": 0,
              "supervisor_pid": 0, "replicas": [[999997, 3]]}


def local_stack(state_dir: Path, engines=((999999, 1),), proxy=(999998, 2),
                model: str = "smollm2-135m-cpu", started: float = 0.0) -> Stack:
    """A stack file in `state_dir`: engines as (pid, port), replica 1 first."""
    first, *others = [Service("engine", k, pid, port) for k, (pid, port) in enumerate(engines, 1)]
    stack = Stack(model=model, services=[first, Service("proxy", 1, *proxy), *others],
                  log_dir=str(state_dir / "logs"), started=started)
    stack.save(state_dir / "stack.json")
    return stack


# ----------------------------------------------------------------------------- the file

def test_a_stack_reads_back_what_was_saved(tmp_path):
    stack = local_stack(tmp_path, engines=((11, 8001), (12, 8002)), proxy=(10, 4000))
    assert json.loads((tmp_path / "stack.json").read_text()) == {
        "format": 3, "model": "smollm2-135m-cpu",
        "services": [{"role": "engine", "replica": 1, "pid": 11, "port": 8001, "model": "",
                      "share": 0.0},
                     {"role": "proxy", "replica": 1, "pid": 10, "port": 4000, "model": "",
                      "share": 0.0},
                     {"role": "engine", "replica": 2, "pid": 12, "port": 8002, "model": "",
                      "share": 0.0}],
        "log_dir": str(tmp_path / "logs"), "started": 0.0, "supervisor_pid": 0,
        "on_demand": [], "budget": 0.0, "share_unit": 0.0}
    loaded = Stack.load(tmp_path / "stack.json")
    assert loaded == stack
    assert [s.name for s in loaded.services] == ["engine", "proxy", "engine-2"]
    assert [s.name for s in loaded.engines] == ["engine", "engine-2"]
    assert (loaded.proxy_port, loaded.pids) == (4000, [10, 11, 12])  # the proxy stops first
    assert [s.health_url() for s in loaded.services] == [
        "http://127.0.0.1:8001/health", "http://127.0.0.1:4000/health/liveliness",
        "http://127.0.0.1:8002/health"]
    assert os.listdir(tmp_path) == ["stack.json"]  # no temporary file left beside it


def test_the_stack_file_lives_in_the_state_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("MMS_STATE_DIR", str(tmp_path / "state"))
    assert Stack.load() is None
    stack = local_stack(tmp_path / "state")
    assert Stack.path() == tmp_path / "state" / "stack.json"
    assert Stack.load() == stack
    Stack.remove()
    assert Stack.load() is None
    Stack.remove()  # nothing there: no error


def test_a_failed_save_leaves_the_previous_file_whole(tmp_path):
    stack = local_stack(tmp_path)
    before = (tmp_path / "stack.json").read_text()
    stack.model = object()  # type: ignore[assignment]  # JSON cannot hold it
    with pytest.raises(TypeError):
        stack.save(tmp_path / "stack.json")
    assert (tmp_path / "stack.json").read_text() == before
    assert os.listdir(tmp_path) == ["stack.json"]


@pytest.mark.parametrize("text", [
    json.dumps(OLD_FORMAT),
    json.dumps({**OLD_FORMAT, "format": 1}),
    "{",
    "[]",
    json.dumps({"format": 2, "model": "m", "log_dir": "/tmp", "started": 0, "supervisor_pid": 0,
                "services": [{"role": "engine", "replica": 1, "pid": 1, "port": 1},
                             {"role": "proxy", "replica": 1, "pid": 2, "port": 2}]}),
    json.dumps({"format": 3, "model": "m", "services": [], "log_dir": "/tmp", "started": 0,
                "supervisor_pid": 0}),
    json.dumps({"format": 3, "model": "m", "log_dir": "/tmp", "started": 0, "supervisor_pid": 0,
                "services": [{"role": "engine", "replica": 1, "pid": "x", "port": 1},
                             {"role": "proxy", "replica": 1, "pid": 2, "port": 2}]}),
    json.dumps({"format": 3, "model": "m", "log_dir": "/tmp", "started": 0, "supervisor_pid": 0,
                "services": [{"role": "engine", "replica": 1, "pid": 1, "port": 1}]}),
], ids=["old-layout", "format-1", "damaged", "not-an-object", "format-2", "no-services", "bad-pid",
        "no-proxy"])
def test_a_stack_file_this_version_cannot_read_means_nothing_runs(tmp_path, text):
    (tmp_path / "stack.json").write_text(text)
    assert Stack.load(tmp_path / "stack.json") is None


def test_down_removes_an_old_layout_stack_file_and_says_so(project_dir, tmp_path):
    (tmp_path / "stack.json").write_text(json.dumps(OLD_FORMAT))
    result = run_cli("down", project=project_dir,
                     env={"MMS_STATE_DIR": str(tmp_path), "PATH": "/nonexistent"})
    assert (result.code, result.out, result.err) == (0, (
        f"removed {tmp_path / 'stack.json'}: a stack file this version cannot read (an older "
        f"version's, or damaged); if that stack still runs, stop its processes by hand\n"
        f"nothing is running\n"), "")
    assert not (tmp_path / "stack.json").exists()


def test_status_takes_an_old_layout_stack_file_for_nothing_running(project_dir, tmp_path):
    (tmp_path / "stack.json").write_text(json.dumps(OLD_FORMAT))
    result = run_cli("status", project=project_dir,
                     env={"MMS_STATE_DIR": str(tmp_path), "PATH": "/nonexistent"})
    assert (result.code, result.out, result.err) == (
        1, "nothing is running (start with ./runMe.sh --local, or MODEL=NAME ./runMe.sh)\n", "")


# ----------------------------------------------------------------------------- what users see

class _Service(http.server.BaseHTTPRequestHandler):
    """A healthy engine (or proxy): 200 on its health path, one request running."""

    def do_GET(self):  # noqa: N802
        body = (b'vllm:num_requests_running{model_name="vllm_agent"} 1.0\n'
                b'vllm:num_requests_waiting{model_name="vllm_agent"} 0.0\n'
                b'vllm:kv_cache_usage_perc{model_name="vllm_agent"} 0.25\n')
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def running_stack(tmp_path, monkeypatch):
    """A stack of two engines and a proxy that answer; this test process stands in for their
    pids."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Service) for _ in range(3)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    engine, proxy, engine2 = (s.server_address[1] for s in servers)
    monkeypatch.setenv("MMS_STATE_DIR", str(tmp_path / "state"))
    me = os.getpid()
    yield local_stack(tmp_path / "state", engines=((me, engine), (me, engine2)),
                      proxy=(me, proxy), started=time.time() - 2 * 3600 - 61)
    for server in servers:
        server.shutdown()
        server.server_close()


def test_status_lists_the_services_in_their_order(running_stack, monkeypatch):
    from vllm_mms.ops import status

    monkeypatch.setattr(status, "recent_requests", lambda: 7)
    me = os.getpid()
    engine, proxy, engine2 = (s.port for s in running_stack.services)
    assert status.status_lines() == [
        "mode:     local",
        "model:    smollm2-135m-cpu",
        "uptime:   2h01m",
        f"engine:   healthy  pid {me}  http://127.0.0.1:{engine}",
        f"proxy:    healthy  pid {me}  http://127.0.0.1:{proxy}",
        f"engine-2: healthy  pid {me}  http://127.0.0.1:{engine2}",
        "requests running: 2",
        "requests waiting: 0",
        "KV-cache use:     25.0%",
        "proxy requests, last 5 min:  7",
        f"logs:     {running_stack.log_dir}"]


def test_doctor_checks_each_service(running_stack):
    from vllm_mms.ops.doctor import check_local_stack

    engine, proxy, engine2 = (s.port for s in running_stack.services)
    assert [c.line() for c in check_local_stack()[:3]] == [
        f"ok    engine: healthy at http://127.0.0.1:{engine}",
        f"ok    proxy: healthy at http://127.0.0.1:{proxy}/health",
        f"ok    engine-2: healthy at http://127.0.0.1:{engine2}"]


def test_logs_follow_the_services_of_the_role_asked_for(running_stack, monkeypatch):
    from vllm_mms.ops import status

    class Executed(Exception):
        pass

    def execvp(file, argv):
        raise Executed(argv)

    monkeypatch.setattr(status.os, "execvp", execvp)
    logs = running_stack.log_dir
    for role, names in ((None, ["engine", "proxy", "engine-2"]), ("engine", ["engine", "engine-2"]),
                        ("proxy", ["proxy"])):
        with pytest.raises(Executed) as caught:
            status.logs(role, follow=False, compose=[])
        assert caught.value.args[0] == ["tail", "-n", "100", *(f"{logs}/{n}.log" for n in names)]


# ----------------------------------------------------------------------------- wait_until

def checks(*answers: object) -> Callable[[], object]:
    """A check that gives `answers` in turn, then keeps giving the last; it counts its calls."""
    given = list(answers)

    def check() -> object:
        check.calls += 1  # type: ignore[attr-defined]
        return given.pop(0) if len(given) > 1 else given[0]

    check.calls = 0  # type: ignore[attr-defined]
    return check


def test_wait_until_calls_the_check_until_it_holds():
    check, clock = checks(False, 0, None, "yes"), FakeClock()
    assert wait_until(check, 60, "waiting", every=0.5, clock=clock) is True
    assert (check.calls, clock.sleeps) == (4, [0.5, 0.5, 0.5])


def test_wait_until_gives_up_once_the_deadline_has_passed():
    check, clock = checks(False), FakeClock()
    assert wait_until(check, 2.5, "waiting", clock=clock) is False
    assert (check.calls, clock.sleeps) == (4, [1.0, 1.0, 1.0])  # checked at 0, 1, 2 and 3 s


def test_a_check_stops_the_wait_by_raising():
    clock = FakeClock()

    def check() -> bool:
        if clock.now >= 2:
            raise UserError("the engine exited")
        return False

    with pytest.raises(UserError, match="^the engine exited$"):
        wait_until(check, 60, "waiting", clock=clock)
    assert clock.sleeps == [1.0, 1.0]


def test_wait_until_logs_its_label_every_10_seconds(capsys):
    check = checks(False)
    assert wait_until(check, 25, lambda: f"waiting: {check.calls} checked", every=5,
                      clock=FakeClock()) is False
    assert capsys.readouterr().err == ("waiting: 1 checked ... 0s\nwaiting: 3 checked ... 10s\n"
                                       "waiting: 5 checked ... 20s\n")


def test_wait_until_redraws_in_place_on_a_terminal_and_clears_the_line(monkeypatch):
    terminal = io.StringIO()
    terminal.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr("sys.stderr", terminal)
    assert wait_until(checks(False, False, True), 60, "starting", clock=FakeClock()) is True
    assert terminal.getvalue() == "\r\033[Kstarting ...    0s\r\033[Kstarting ...    1s\r\033[K"


def test_a_wait_that_holds_at_once_shows_nothing(capsys):
    assert wait_until(checks(True), 60, "starting", clock=FakeClock()) is True
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- the waits

class FakeProc:
    """A started process as wait_healthy / wait_engine see it: exits with `code` at `exits_at`
    on the clock (never when None)."""

    def __init__(self, clock: FakeClock, exits_at: Optional[float] = None, code: int = 1):
        self.clock, self.exits_at, self.code = clock, exits_at, code
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.exits_at is not None and self.clock.now >= self.exits_at:
            self.returncode = self.code
        return self.returncode


def log_dir_with(stack: Stack, name: str, text: str) -> Path:
    logs = Path(stack.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{name}.log").write_text(text)
    return logs


def test_start_fails_as_soon_as_a_process_exits(tmp_path):
    stack = local_stack(tmp_path, engines=((1, free_port()),), proxy=(2, free_port()))
    logs = log_dir_with(stack, "engine", "loading\nValueError: no memory\n")
    clock = FakeClock()
    procs = {"engine": FakeProc(clock, exits_at=2), "proxy": FakeProc(clock)}
    with pytest.raises(UserError) as caught:
        local.wait_healthy(stack, procs, 600, clock=clock)
    assert caught.value.message == (f"the engine exited (code 1) while starting; last lines of "
                                    f"{logs / 'engine.log'}:\nloading\nValueError: no memory")
    assert clock.sleeps == [1.0, 1.0]


def test_start_gives_up_on_the_service_not_healthy_by_the_deadline(tmp_path, running_stack):
    # The engines answer; the proxy's port is taken by nothing.
    running_stack.proxy.port = free_port()
    clock = FakeClock()
    procs = {name: FakeProc(clock) for name in ("engine", "engine-2", "proxy")}
    with pytest.raises(UserError) as caught:
        local.wait_healthy(running_stack, procs, 5, clock=clock)
    assert caught.value.message == (f"the proxy was not healthy after 5s (MMS_START_TIMEOUT); "
                                    f"see {running_stack.log_dir}/proxy.log")
    assert clock.now == 6.0  # one deadline for all: checked at 0, 1, ..., 6 s


def test_start_waits_for_every_service(running_stack):
    clock = FakeClock()
    procs = {name: FakeProc(clock) for name in ("engine", "engine-2", "proxy")}
    local.wait_healthy(running_stack, procs, 5, clock=clock)
    assert clock.sleeps == []


def test_switch_stops_waiting_for_a_new_engine_that_exits_or_never_answers(tmp_path):
    log = tmp_path / "engine.log"
    log.write_text("=== switch: starting smollm2 ===\nValueError: max_model_len\n")
    clock = FakeClock()
    with pytest.raises(UserError) as caught:
        switch.wait_engine(FakeProc(clock, exits_at=3), free_port(), log, 600, clock=clock)
    assert caught.value.message == (
        f"the new engine exited (code 1) while loading; last lines of {log}:\n"
        f"=== switch: starting smollm2 ===\nValueError: max_model_len")
    assert clock.now == 3.0
    clock = FakeClock()
    with pytest.raises(UserError) as caught:
        switch.wait_engine(FakeProc(clock), free_port(), log, 10, clock=clock)
    assert caught.value.message == (
        f"the new engine was not healthy after 10s (MMS_START_TIMEOUT); last lines of {log}:\n"
        f"=== switch: starting smollm2 ===\nValueError: max_model_len")
    assert clock.now == 11.0


def test_switch_waits_until_the_proxy_lists_the_new_model(tmp_path):
    seen: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers["Authorization"])
            ids = ["old", "vllm_agent"] if len(seen) < 3 else ["new", "vllm_agent"]
            body = json.dumps({"data": [{"id": i} for i in ids]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        stack = local_stack(tmp_path, proxy=(1, server.server_address[1]))
        clock = FakeClock()
        assert switch.proxy_serves(stack, "sk-m", ["new", "vllm_agent"], 30, clock=clock)
        assert (seen, clock.sleeps) == (["Bearer sk-m"] * 3, [0.5, 0.5])
    finally:
        server.shutdown()
        server.server_close()
    stack = local_stack(tmp_path, proxy=(1, free_port()))
    clock = FakeClock()
    assert not switch.proxy_serves(stack, "sk-m", ["new"], 30, clock=clock)
    assert clock.now == 30.5


def inspections(*states: str, code: int = 0):
    """`docker inspect` of the engine container answering `states` in turn (then the last)."""
    given = list(states)

    def docker(argv, **kwargs):
        state = given.pop(0) if len(given) > 1 else given[0]
        return subprocess.CompletedProcess(argv, code, state + "\n", "")

    return docker


@pytest.mark.parametrize("states, code, why, sleeps", [
    (("running 0 starting", "running 0 starting", "running 0 healthy"), 0, None, [5, 5]),
    (("running 0 starting", "restarting 2 starting"), 0,
     "vLLM exited and the engine container restarted (2x)", [5]),
    (("exited 0",), 0, "the engine container is exited", []),
    (("running 0 unhealthy",), 0, "the engine container is running unhealthy", []),
    (("",), 1, "the engine container is gone", []),
    (("running 0 starting",), 0, "the engine was not healthy after 12s (MMS_START_TIMEOUT)",
     [5, 5, 5]),
], ids=["healthy", "restarted", "exited", "unhealthy", "gone", "deadline"])
def test_compose_switch_waits_for_the_engine_container(monkeypatch, states, code, why, sleeps):
    monkeypatch.setattr(switch, "_docker", inspections(*states, code=code))
    clock = FakeClock()
    assert switch.wait_container_healthy(12, clock=clock) == why
    assert clock.sleeps == sleeps


def test_a_replica_waits_for_the_key_replica_one_writes(tmp_path):
    key = tmp_path / ".engine_api_key"

    def replica_one_writes(now: float) -> None:
        if now >= 3:
            key.write_text("sk-engine\n")

    clock = FakeClock(on_sleep=replica_one_writes)
    assert container.wait_for_key(key, clock=clock) == "sk-engine"
    assert clock.sleeps == [1.0, 1.0, 1.0]
    key.unlink()
    with pytest.raises(UserError) as caught:
        container.wait_for_key(key, 120, clock=FakeClock())
    assert caught.value.message == (f"{key} did not appear within 120s: replica 1 (the "
                                    f"vllm-node service) has not started")
