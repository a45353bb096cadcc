"""The CLI's plain shapes: the model list with usage, and `down` with nothing running."""

from __future__ import annotations

import pytest

from .conftest import container, docker_stand_in, run_cli


def test_no_arguments_lists_models_with_descriptions_and_usage(project_dir):
    result = run_cli(project=project_dir)
    assert result.code == 0 and result.err == ""
    lines = result.out.splitlines()
    assert lines[:8] == [
        "models:",
        "  glm47-flash            GLM-4.7-Flash (zai-org): 30B MoE, ~3B active, agentic coding "
        "with tools and reasoning",
        "  minilm-l6-cpu          all-MiniLM-L6-v2 on CPU: 384-dimension sentence embeddings "
        "behind /v1/embeddings, beside a chat model in local mode",
        "  qwen3-next-coder       Qwen3-Coder-Next (Qwen): 80B MoE, 3B active, FP8, a coding "
        "agent model with tools",
        "  smollm2-135m-cpu       SmolLM2-135M-Instruct on CPU: the embedded default for "
        "./runMe.sh --local and the tests",
        "  smollm2-135m-cpu-fast  SmolLM2-135M-Instruct on CPU, short context, greedy: the "
        "second model of local mode's multi-model stack",
        "  step-3.5-flash         Step-3.5-Flash (StepFun): 197B MoE, ~11B active, FP8, "
        "long-context reasoning and tools",
        "  step-3.5-flash-hcsw    Step-3.5-Flash, high-concurrency short-window variant: 8K "
        "context, 64 sequences",
    ]
    assert "usage:" in lines and "  ./runMe.sh down                     stop what runs " \
        "(compose and local mode)" in lines


def test_an_invalid_model_file_is_listed_as_invalid_not_a_crash(project_dir):
    (project_dir / "models" / "broken.yml").write_text("description: x\n")
    result = run_cli("list", project=project_dir)
    assert result.code == 0
    assert ("  broken                 (invalid: models/broken.yml: command: required field is "
            "missing)") in result.out.splitlines()


def test_down_with_nothing_running(project_dir, tmp_path):
    # No docker on PATH, whatever this machine has (a stand-in plays it in the tests below).
    result = run_cli("down", project=project_dir,
                     env={"MMS_STATE_DIR": str(tmp_path), "PATH": "/nonexistent"})
    assert (result.code, result.out) == (0, "nothing is running\n")


def test_down_removes_a_stale_stack_file(project_dir, tmp_path):
    from .test_stack_state import local_stack

    # Above Linux's PID_MAX_LIMIT (2**22): no process has these ids, on any machine; an id
    # such as 999999 can be a live process where pid_max is high, and `down` would stop it.
    engine, proxy = 2**22 + 1, 2**22 + 2
    local_stack(tmp_path, engines=((engine, 1),), proxy=(proxy, 2))
    result = run_cli("down", project=project_dir, env={"MMS_STATE_DIR": str(tmp_path)})
    assert (result.code, result.out) == (0, "local stack was not running (stale state removed)\n")
    assert not (tmp_path / "stack.json").exists()


def test_compose_start_without_a_docker_engine_is_one_line(project_dir, tmp_path):
    """A stand-in `docker` client whose engine is down, as on a machine without the daemon."""
    docker = tmp_path / "docker"
    docker.write_text("#!/bin/sh\n[ \"$1 $2\" = \"compose version\" ] && exit 0\n"
                      "echo 'Cannot connect to the Docker daemon' >&2; exit 1\n")
    docker.chmod(0o755)
    # Only the stand-in on PATH: no nvidia-smi of this machine changes the fit check first.
    result = run_cli("qwen3-next-coder", "-d", project=project_dir, env={"PATH": str(tmp_path)})
    assert (result.code, result.err) == (
        1, "error: no Docker engine is reachable ('docker ps' failed): start Docker (sudo "
           "systemctl start docker), or run without it: ./runMe.sh --local\n")
    assert result.out == ""


def test_compose_start_runs_compose_up_with_model_in_its_environment(project_dir, tmp_path):
    """A stand-in `docker` records the exact command and the MODEL it was given."""
    record = tmp_path / "record"
    docker = tmp_path / "docker"
    docker.write_text(f"#!/bin/sh\ncase \"$1 $2\" in \"compose version\"|\"ps -q\") exit 0;; esac\n"
                      f"echo \"$MODEL|$*\" > {record}\n")
    docker.chmod(0o755)
    result = run_cli("qwen3-next-coder", "-d", "--build", project=project_dir,
                     env={"PATH": str(tmp_path)})  # the stand-in only: no nvidia-smi
    assert result.code == 0, result.err
    files = f"-f {project_dir / 'docker-compose.yml'} -f {project_dir / 'docker-compose.gpu.yml'}"
    assert record.read_text() == f"qwen3-next-coder|compose {files} up --remove-orphans -d --build\n"
    result = run_cli(project=project_dir, env={"PATH": str(tmp_path), "MODEL": "glm47-flash"})
    assert result.code == 0, result.err
    assert record.read_text() == f"glm47-flash|compose {files} up --remove-orphans\n"


def fake_docker(tmp_path, record):
    docker = tmp_path / "docker"
    docker.write_text(f"#!/bin/sh\ncase \"$1 $2\" in \"compose version\"|\"ps -q\") exit 0;; esac\n"
                      f"echo \"$*\" >> {record}\n")
    docker.chmod(0o755)
    return {"PATH": f"{tmp_path}:/usr/bin:/bin", "MMS_STATE_DIR": str(tmp_path / "state")}


def test_status_and_logs_in_compose_mode_issue_the_exact_commands(project_dir, tmp_path):
    record = tmp_path / "record"
    env = fake_docker(tmp_path, record)
    compose_file = project_dir / "docker-compose.yml"
    result = run_cli("status", project=project_dir, env=env)
    assert (result.code, result.out) == (
        1, "nothing is running (start with ./runMe.sh --local, or MODEL=NAME ./runMe.sh)\n")
    assert run_cli("logs", "proxy", "-f", project=project_dir, env=env).code == 0
    assert run_cli("logs", project=project_dir, env=env).code == 0
    assert record.read_text().splitlines() == [
        "ps -a -q --filter label=com.docker.compose.project=project",
        f"compose -f {compose_file} logs -f litellm",
        f"compose -f {compose_file} logs",
    ]


def _started(seconds_ago: float) -> str:
    from datetime import datetime, timedelta, timezone

    moment = datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"   # docker's nanoseconds


def test_compose_status_shows_each_service_the_engine_queue_and_recent_requests(
        project_dir, tmp_path):
    metrics = ('vllm:num_requests_running{model_name="vllm_agent"} 2.0\n'
               'vllm:num_requests_waiting{model_name="vllm_agent"} 1.0\n'
               'vllm:kv_cache_usage_perc{model_name="vllm_agent"} 0.25\n')
    bin_dir = docker_stand_in(tmp_path, tmp_path / "record", [
        container("vllm-node", "vllm-container", "running", "healthy", "smollm2-135m-cpu",
                  _started(3725)),
        container("litellm", "litellm-container", "running", "healthy", started=_started(7390)),
        container("litellm_db", "litellm_db", "running", "healthy", started=_started(3800))],
        metrics=metrics, recent="7")
    result = run_cli("status", project=project_dir, env={"PATH": f"{bin_dir}:/nonexistent"})
    assert (result.code, result.out.splitlines()) == (0, [
        "mode:     compose",
        "model:    smollm2-135m-cpu",
        "vllm-node:   healthy  running (healthy)  container vllm-container  up 1h02m",
        "litellm:     healthy  running (healthy)  container litellm-container  up 2h03m",
        "litellm_db:  healthy  running (healthy)  container litellm_db  up 1h03m",
        "requests running: 2",
        "requests waiting: 1",
        "KV-cache use:     25.0%",
        "proxy requests, last 5 min:  7",
        "logs:     ./runMe.sh logs engine|proxy|db",
    ])


def test_compose_status_says_down_while_the_engine_restarts(project_dir, tmp_path):
    bin_dir = docker_stand_in(tmp_path, tmp_path / "record", [
        container("vllm-node", "vllm-container", "running", "starting", "smollm2-135m-cpu",
                  _started(125)),
        container("litellm", "litellm-container", "running", "healthy", started=_started(65)),
        container("litellm_db", "litellm_db", "running", "healthy", started=_started(65))])
    result = run_cli("status", project=project_dir, env={"PATH": f"{bin_dir}:/nonexistent"})
    assert result.code == 1
    assert result.out.splitlines()[2].startswith(
        "vllm-node:   DOWN  running (starting)  container vllm-container  up 2m")
    assert "proxy requests, last 5 min:  ?" in result.out.splitlines()


def test_down_with_nothing_of_ours_running_says_so_and_runs_no_compose_down(
        project_dir, tmp_path):
    record = tmp_path / "record"
    bin_dir = docker_stand_in(tmp_path, record, [])
    result = run_cli("down", project=project_dir,
                     env={"PATH": f"{bin_dir}:/nonexistent", "MMS_STATE_DIR": str(tmp_path / "s")})
    assert (result.code, result.out) == (0, "nothing is running\n")
    # the probes and the look for our containers; no compose down
    assert record.read_text().splitlines() == [
        "compose version", "ps -q", "ps -a -q --filter label=com.docker.compose.project=project"]


def test_down_stops_the_stack_and_drops_its_generated_config_volume(project_dir, tmp_path):
    record = tmp_path / "record"
    bin_dir = docker_stand_in(tmp_path, record, [
        container("vllm-node", "vllm-container", "running", "healthy")])
    result = run_cli("down", project=project_dir,
                     env={"PATH": f"{bin_dir}:/nonexistent", "MMS_STATE_DIR": str(tmp_path / "s")})
    assert result.code == 0, result.err
    compose_file = project_dir / "docker-compose.yml"
    assert record.read_text().splitlines()[-3:] == [
        f"compose -f {compose_file} down --remove-orphans",
        "volume ls -q --filter label=com.docker.compose.project=project "
        "--filter label=com.docker.compose.volume=generated_configs",
        "volume rm project_generated_configs",
    ]


def test_logs_with_a_bad_service_exits_2(project_dir):
    result = run_cli("logs", "bogus", project=project_dir)
    assert (result.code, result.err) == (
        2, "error: unknown service 'bogus'; choose one of: engine, proxy, db\n")


def test_local_mode_refuses_a_gpu_model_in_one_line(project_dir, tmp_path):
    result = run_cli("--local", "glm47-flash", project=project_dir,
                     env={"MMS_STATE_DIR": str(tmp_path)})
    assert (result.code, result.err) == (
        1, "error: glm47-flash is not a CPU model (One DGX Spark (128 GB unified): BF16 weights "
           "~63 GB, the rest for KV cache); local mode serves: minilm-l6-cpu, smollm2-135m-cpu, "
           "smollm2-135m-cpu-fast. On a GPU box: MODEL=glm47-flash ./runMe.sh\n")
    assert not (tmp_path / "stack.json").exists()


@pytest.mark.parametrize("machine, version, fine", [
    ("x86_64", (3, 11), True), ("aarch64", (3, 11), False), ("x86_64", (3, 12), False),
])
def test_the_engine_environment_is_refused_where_its_lock_does_not_install(
        machine, version, fine, capsys):
    from vllm_mms.bootstrap import check_engine_platform

    if fine:
        check_engine_platform(machine, version)
        return
    with pytest.raises(SystemExit) as stopped:
        check_engine_platform(machine, version)
    assert stopped.value.code == 1
    assert capsys.readouterr().err == (
        "[runMe] local mode's vLLM CPU lock (requirements/engine-cpu.txt) installs on x86_64 "
        f"with CPython 3.11; this is {machine} with Python {version[0]}.{version[1]}. On x86_64 "
        "set MMS_PYTHON to a Python 3.11; elsewhere run the model in Docker (MODEL=NAME "
        "./runMe.sh) or regenerate the lock (README, Installation details)\n")


@pytest.mark.parametrize("directory, environ, name", [
    ("vllm-mms", {}, "vllm-mms"), ("My Checkout.v2", {}, "mycheckoutv2"),
    ("x", {"COMPOSE_PROJECT_NAME": "Stack_1"}, "stack_1"),
])
def test_compose_project_name_as_compose_derives_it(directory, environ, name, monkeypatch,
                                                    tmp_path):
    from vllm_mms.stack.compose import project_name

    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    assert project_name(tmp_path / directory) == name
