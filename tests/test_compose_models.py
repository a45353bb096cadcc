"""Several models at once in compose mode (vllm_mms.stack.compose_models): the override file
of engine services, the exact compose command, the refusals, the first engine rendering for
all of them, `ps` and `switch` on such a stack. Docker is the recording stand-in of
tests/test_switch.py; the Compose suite runs the same on the real engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from vllm_mms.ops import status
from vllm_mms.stack import compose_models
from vllm_mms.stack.compose import Container
from vllm_mms.stack.replicas import merged_engine_service

from .conftest import ROOT, run_cli
from .test_container import run_entrypoint, stand_in
from .test_switch import calls, fake_docker, run_switch

CPU_FILES = [ROOT / "docker-compose.yml", ROOT / "docker-compose.cpu.yml"]


def resolved(project_dir: Path, name: str):
    from vllm_mms.config.resolve import Project, resolve

    return resolve(Project(project_dir), name, {})


def test_the_override_adds_one_engine_per_model_with_its_share_and_checkpoint(project_dir):
    models = [resolved(project_dir, n) for n in ("smollm2-135m-cpu", "minilm-l6-cpu")]
    base = merged_engine_service(CPU_FILES)
    override = compose_models.compose_override(
        models, [0.11, 0.05], base, [Path("/cache/smollm2"), Path("/cache/minilm")])
    services = override["services"]
    assert list(services) == ["vllm-node", "vllm-node-minilm-l6-cpu", "litellm"]
    assert services["vllm-node"] == {"environment": {"MMS_ALSO_SERVED": "minilm-l6-cpu",
                                                     "MMS_MEMORY_SHARE": "0.11"}}
    other = services["vllm-node-minilm-l6-cpu"]
    assert other["container_name"] == "vllm-container-minilm-l6-cpu"
    assert other["environment"] == {"MODEL": "minilm-l6-cpu", "HF_HOME": "/root/.cache/huggingface",
                                    "MMS_SERVE_WEIGHTS": "/app/weights", "MMS_BESIDE": "1",
                                    "MMS_MEMORY_SHARE": "0.05"}
    # its own checkpoint where the CPU file mounts the first model's; the rest as the first's
    weights = [v for v in other["volumes"] if ":/app/weights" in v]
    assert weights == ["/cache/minilm:/app/weights:ro"]
    assert [v for v in other["volumes"] if ":/app/weights" not in v] == \
        [v for v in base["volumes"] if ":/app/weights" not in v]
    assert "build" not in other and other["image"] == base["image"] == "vllm-mms-engine-cpu:latest"
    assert other["healthcheck"] == base["healthcheck"] and other.get("ports") is None
    assert other["depends_on"] == {"vllm-node": {"condition": "service_started"}}
    assert services["litellm"] == {"depends_on": {
        "vllm-node-minilm-l6-cpu": {"condition": "service_healthy"}}}


@pytest.mark.parametrize("names, message", [
    (["smollm2-135m-cpu", "glm47-flash"],
     "several models in compose mode share one engine image, and these mix CPU models "
     "(smollm2-135m-cpu) with GPU models (glm47-flash): run one kind at a time"),
])
def test_a_set_compose_cannot_run_is_refused(project_dir, names, message):
    from vllm_mms.errors import UserError

    with pytest.raises(UserError) as caught:
        compose_models.check_set([resolved(project_dir, n) for n in names])
    assert caught.value.message == message


def needs_checkpoints() -> None:
    from vllm_mms.engine.prepare_model import weights_dir

    for name in ("smollm2-135m-instruct", "all-minilm-l6-v2"):
        if not (weights_dir(name) / ".complete").exists():   # ./runMe.sh test prepares them
            if os.environ.get("CI"):
                pytest.fail(f"the prepared checkpoint is missing: {weights_dir(name)}")
            pytest.skip("the prepared checkpoints are not there (./runMe.sh test prepares them)")


def start(project_dir: Path, tmp_path: Path, *args: str, env=None):
    tmp_path.mkdir(exist_ok=True)
    bin_dir, state = fake_docker(tmp_path, "glm47-flash")
    for name in ("docker-compose.yml", "docker-compose.cpu.yml", "docker-compose.gpu.yml"):
        shutil.copy(ROOT / name, project_dir / name)
    meminfo = tmp_path / "meminfo"  # fit's free-memory check: pinned, not this host's
    meminfo.write_text("MemTotal:       24576000 kB\nMemAvailable:   20480000 kB\n")
    node = tmp_path / "node-meminfo"
    node.write_text("Node 0 MemTotal:       24576000 kB\n")
    result = run_cli(*args, project=project_dir,
                     env={"PATH": f"{bin_dir}:/usr/bin:/bin", "MMS_MEMINFO": str(meminfo),
                          "MMS_NODE_MEMINFO": str(node), **(env or {})})
    return result, state


def test_up_with_several_models_adds_their_engines(project_dir, tmp_path):
    from vllm_mms.engine.prepare_model import weights_dir

    needs_checkpoints()
    result, state = start(project_dir, tmp_path, "smollm2-135m-cpu", "minilm-l6-cpu", "-d")
    assert result.code == 0, result.err
    files = [str(project_dir / n) for n in ("docker-compose.yml", "docker-compose.cpu.yml")]
    override = os.path.join(os.environ["MMS_STATE_DIR"], "compose.models.yml")
    argv = ["compose", "-f", files[0], "-f", files[1], "-f", override, "up", "--remove-orphans",
            "-d"]
    assert result.out == f"starting smollm2-135m-cpu, minilm-l6-cpu with: docker {' '.join(argv)}\n"
    seen = json.loads(state.read_text())["calls"][-1]
    assert (seen["argv"], seen["MODEL"]) == (argv, "smollm2-135m-cpu")
    assert seen["MMS_WEIGHTS_HOST_DIR"] == str(weights_dir("smollm2-135m-instruct"))
    text = Path(override).read_text()
    assert text.startswith("# Generated by ./runMe.sh with several models; do not edit. The "
                           "engines of minilm-l6-cpu beside smollm2-135m-cpu.\n")
    services = yaml.safe_load(text)["services"]
    assert f"{weights_dir('all-minilm-l6-v2')}:/app/weights:ro" in \
        services["vllm-node-minilm-l6-cpu"]["volumes"]
    shares = [services[s]["environment"]["MMS_MEMORY_SHARE"]
              for s in ("vllm-node", "vllm-node-minilm-l6-cpu")]
    assert all(0 < float(s) < 1 for s in shares), shares


def test_models_from_vars_env_and_the_refusals_before_docker(project_dir, tmp_path):
    (project_dir / "vars.env").write_text("MODELS=smollm2-135m-cpu,glm47-flash\n")
    result, state = start(project_dir, tmp_path, "-d")
    assert (result.code, result.err) == (1, (
        "error: several models in compose mode share one engine image, and these mix CPU "
        "models (smollm2-135m-cpu) with GPU models (glm47-flash): run one kind at a time\n"))
    assert calls(state) == []
    (project_dir / "vars.env").write_text("MODELS=smollm2-135m-cpu,smollm2-135m-cpu\n")
    result, state = start(project_dir, tmp_path / "again", "-d")
    assert (result.code, result.err) == (
        1, "error: smollm2-135m-cpu is named twice: each model runs once\n")
    assert calls(state) == []


def test_on_demand_models_get_profiled_services_and_a_host_supervisor(project_dir, tmp_path):
    from vllm_mms.engine.prepare_model import weights_dir
    from vllm_mms.stack.processes import alive, terminate

    needs_checkpoints()
    state_dir = tmp_path / "state"
    (project_dir / "vars.env").write_text("ON_DEMAND_MODELS=minilm-l6-cpu\nON_DEMAND_TTL=120\n")
    result, state = start(project_dir, tmp_path, "smollm2-135m-cpu", "-d",
                          env={"MMS_STATE_DIR": str(state_dir)})
    assert result.code == 0, result.err
    stack = json.loads((state_dir / "compose-stack.json").read_text())
    try:
        files = [str(project_dir / n) for n in ("docker-compose.yml", "docker-compose.cpu.yml")]
        override = str(state_dir / "compose.models.yml")
        argv = ["compose", "-f", files[0], "-f", files[1], "-f", override, "up",
                "--remove-orphans", "-d"]
        assert result.out == (
            "on demand (loaded when a request names one, unloaded after 120s idle, by a "
            "supervisor on this host): minilm-l6-cpu\n"
            f"starting smollm2-135m-cpu with: docker {' '.join(argv)}\n")
        assert json.loads(state.read_text())["calls"][-1]["argv"] == argv
        services = yaml.safe_load(Path(override).read_text())["services"]
        od = services["vllm-node-minilm-l6-cpu"]
        assert (od["profiles"], od["restart"]) == (["on-demand"], "no")
        assert services["vllm-node"]["environment"]["MMS_ON_DEMAND"] == "minilm-l6-cpu"
        # the proxy waits for no on-demand engine, and reads the board from the host
        assert services["litellm"] == {
            "environment": {"MMS_LOAD_BOARD": "/app/loads"},
            "volumes": [f"{state_dir / 'loads'}:/app/loads"]}
        assert (state_dir / "loads").is_dir()
        assert [(o["model"], o["port"]) for o in stack["on_demand"]] == [("minilm-l6-cpu", 8000)]
        assert [(s["role"], s["model"]) for s in stack["services"]] == [("engine", ""),
                                                                       ("proxy", "")]
        assert stack["compose"] == ["docker", *argv[:7]]
        assert stack["budget"] > 0 and stack["share_unit"] > 0
        assert alive(stack["supervisor_pid"])
        assert str(weights_dir("all-minilm-l6-v2")) in Path(override).read_text()
    finally:
        terminate([stack["supervisor_pid"]], grace=5)


def test_several_models_with_replicas_are_refused(project_dir, tmp_path):
    result, state = start(project_dir, tmp_path, "glm47-flash", "qwen3-next-coder",
                          "--replicas", "2")
    assert (result.code, result.err) == (1, (
        "error: --replicas runs copies of one model; with several models each runs one engine "
        "(glm47-flash, qwen3-next-coder asks for 2): drop --replicas, or run one model\n"))
    assert calls(state) == []


def test_a_set_that_does_not_fit_is_refused_before_docker(project_dir, tmp_path):
    needs_checkpoints()
    meminfo = tmp_path / "small"
    meminfo.write_text("MemTotal:       24576000 kB\nMemAvailable:   1048576 kB\n")
    result, state = start(project_dir, tmp_path, "smollm2-135m-cpu", "smollm2-135m-cpu-fast",
                          env={"MMS_MEMINFO": str(meminfo)})
    assert (result.code, result.err) == (1, (
        "error: smollm2-135m-cpu does not fit in its share: does not fit: the engine may use "
        "2.6 GiB, the OS has 1.0 GiB available: smollm2-135m-cpu, smollm2-135m-cpu-fast: 2.6 + "
        "1.4 = 4.0 GiB (shares 0.11 + 0.06 of 23.4 GiB), 1.0 GiB available (MemAvailable); "
        "start anyway with --force, or run fewer models (./runMe.sh fit NAME shows one)\n"))
    assert calls(state) == []


def test_the_first_engine_renders_every_model_and_takes_its_share(project_dir, tmp_path):
    record = tmp_path / "record.json"
    stand_in(tmp_path / "bin", "vllm", record)
    proc, out, err = run_entrypoint("entrypoint", project_dir, tmp_path, {
        "MODEL": "glm47-flash", "MMS_ALSO_SERVED": "qwen3-next-coder",
        "MMS_MEMORY_SHARE": "0.45"})
    assert proc.returncode == 0, err
    argv = json.loads(record.read_text())["argv"]
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.45"
    assert argv.count("--gpu-memory-utilization") == 1
    config = yaml.safe_load((tmp_path / "generated" / "config.yaml").read_text())
    bases = {m["model_name"]: m["litellm_params"]["api_base"] for m in config["model_list"]}
    assert bases["glm47-flash"] == "http://vllm-node:8000/v1"
    assert bases["qwen3-next-coder"] == "http://vllm-node-qwen3-next-coder:8000/v1"
    models = yaml.safe_load((tmp_path / "generated" / "models.yml").read_text())
    assert [(m["model"], m["api_base"]) for m in models["also_served"]] == [
        ("qwen3-next-coder", "http://vllm-node-qwen3-next-coder:8000/v1")]


def test_an_engine_beside_the_first_renders_nothing_and_waits_for_the_key(project_dir, tmp_path):
    generated = tmp_path / "generated"
    generated.mkdir()
    (generated / ".engine_api_key").write_text("sk-engine-of-the-first")
    record = tmp_path / "record.json"
    stand_in(tmp_path / "bin", "vllm", record)
    proc, out, err = run_entrypoint("entrypoint", project_dir, tmp_path, {
        "MODEL": "qwen3-next-coder", "MMS_BESIDE": "1", "MMS_MEMORY_SHARE": "0.4"})
    assert proc.returncode == 0, err
    assert sorted(p.name for p in generated.iterdir()) == [".engine_api_key"]
    seen = json.loads(record.read_text())
    assert seen["engine_key"] == "sk-engine-of-the-first"
    assert seen["argv"][seen["argv"].index("--gpu-memory-utilization") + 1] == "0.4"
    assert "[entrypoint] model qwen3-next-coder: served beside the first model" in out


def test_switch_refuses_a_stack_of_several_models(project_dir, tmp_path):
    bin_dir, state = fake_docker(tmp_path, "glm47-flash")
    docker = bin_dir / "docker"  # the engine container also names the model beside it
    docker.write_text(docker.read_text().replace(
        'MODEL=" + data["model"] + "\\n"',
        'MODEL=" + data["model"] + "\\nMMS_ALSO_SERVED=step-3.5-flash\\n"'))
    assert "MMS_ALSO_SERVED" in docker.read_text()
    result = run_switch(project_dir, bin_dir, "qwen3-next-coder")
    assert (result.code, result.err) == (1, (
        "error: switch replaces the one model a stack serves, and this one serves glm47-flash, "
        "step-3.5-flash: ./runMe.sh down && ./runMe.sh qwen3-next-coder step-3.5-flash\n"))


def test_ps_in_compose_mode_shows_each_engine_container(monkeypatch, capsys):
    found = [Container("p", "vllm-node", "vllm-container", "running", "healthy", "", 41),
             Container("p", "vllm-node-minilm-l6-cpu", "vllm-container-minilm-l6-cpu",
                       "running", "starting", "", 42),
             Container("p", "litellm", "litellm-container", "running", "healthy", "", 43)]
    envs = {"vllm-container": {"MODEL": "smollm2-135m-cpu", "MMS_MEMORY_SHARE": "0.11"},
            "vllm-container-minilm-l6-cpu": {"MODEL": "minilm-l6-cpu",
                                             "MMS_MEMORY_SHARE": "0.05"}}
    from vllm_mms.stack import compose

    monkeypatch.setattr(compose, "containers", lambda _: found)
    monkeypatch.setattr(compose, "container_env", envs.get)
    monkeypatch.setattr(status, "_docker_exec", lambda name, code: (
        'vllm:num_requests_running{model_name="vllm_agent"} 2.0\n'
        'vllm:num_requests_waiting{model_name="vllm_agent"} 1.0\n'))
    monkeypatch.setattr(status.Stack, "load", staticmethod(lambda: None))
    assert status.ps(["docker", "compose", "-f", "x"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "MODEL             STATE    ENGINE                                  PID  MEMORY SHARE  "
        "RUNNING  WAITING  UNLOADS",
        "smollm2-135m-cpu  ready    container vllm-container                41   0.11          "
        "2        1        never (resident)",
        "minilm-l6-cpu     loading  container vllm-container-minilm-l6-cpu  42   0.05          "
        "-        -        never (resident)"]


def test_the_generated_override_is_a_file_compose_accepts(project_dir, tmp_path):
    """docker-compose's own parser (`config`) merges the override with the real files."""
    if not shutil.which("docker-compose"):
        if os.environ.get("CI"):
            pytest.fail("docker-compose (Debian's) is missing: ./runMe.sh test installs it")
        pytest.skip("docker-compose is not installed (./runMe.sh test installs it)")
    models = [resolved(project_dir, n) for n in ("smollm2-135m-cpu", "smollm2-135m-cpu-fast")]
    out = compose_models.write_compose_override(models, [0.11, 0.06], CPU_FILES,
                                                [tmp_path / "a", tmp_path / "b"],
                                                tmp_path / "compose.models.yml")
    merged = subprocess.run(
        ["docker-compose", "-f", str(CPU_FILES[0]), "-f", str(CPU_FILES[1]), "-f", str(out),
         "config"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "MMS_WEIGHTS_HOST_DIR": str(tmp_path / "a")})
    assert merged.returncode == 0, merged.stderr
    services = yaml.safe_load(merged.stdout)["services"]
    assert set(services["litellm"]["depends_on"]) == {"vllm-node", "litellm_db",
                                                       "vllm-node-smollm2-135m-cpu-fast"}
    assert services["vllm-node-smollm2-135m-cpu-fast"]["environment"]["MODEL"] == \
        "smollm2-135m-cpu-fast"
    assert services["vllm-node"]["environment"]["MMS_ALSO_SERVED"] == "smollm2-135m-cpu-fast"


def test_ps_in_compose_mode_shows_the_on_demand_models_from_the_board(monkeypatch, capsys,
                                                                       tmp_path):
    from vllm_mms.proxy import board
    from vllm_mms.stack import compose
    from vllm_mms.stack.compose_ondemand import ComposeStack
    from vllm_mms.stack.state import OnDemand, Service

    monkeypatch.setenv("MMS_STATE_DIR", str(tmp_path / "state"))
    ComposeStack(model="smollm2-135m-cpu", log_dir=str(tmp_path), started=0,
                 services=[Service("engine", 1, 0, 8000, share=0.11),
                           Service("proxy", 1, 0, 4000)],
                 on_demand=[OnDemand("smollm2-135m-cpu-fast", 8000, 0.06, 1.0),
                            OnDemand("minilm-l6-cpu", 8000, 0.05, 1.0)]).save()
    board.save_states({"smollm2-135m-cpu-fast": board.ModelState("ready", 1000.0)})
    found = [Container("p", "vllm-node", "vllm-container", "running", "healthy", "", 41),
             Container("p", "vllm-node-smollm2-135m-cpu-fast",
                       "vllm-container-smollm2-135m-cpu-fast", "running", "healthy", "", 42),
             Container("p", "vllm-node-minilm-l6-cpu", "vllm-container-minilm-l6-cpu",
                       "exited", "", "", 0)]
    envs = {c.name: {"MODEL": c.service.removeprefix("vllm-node-")
                     if c.service != "vllm-node" else "smollm2-135m-cpu"} for c in found}
    monkeypatch.setattr(compose, "containers", lambda _: found)
    monkeypatch.setattr(compose, "container_env", envs.get)
    monkeypatch.setattr(status, "_docker_exec", lambda name, code: (
        'vllm:num_requests_running{model_name="vllm_agent"} 0.0\n'
        'vllm:num_requests_waiting{model_name="vllm_agent"} 0.0\n'))
    monkeypatch.setattr(status.time, "localtime", __import__("time").gmtime)
    assert status.compose_ps_rows(["docker", "compose"], ttl=300) == [
        ("smollm2-135m-cpu", "ready", "container vllm-container", "41", "its own", "0", "0",
         "never (resident)"),
        ("smollm2-135m-cpu-fast", "idle", "container vllm-container-smollm2-135m-cpu-fast",
         "42", "0.06", "0", "0", "00:21:40"),
        ("minilm-l6-cpu", "unloaded", "-", "-", "0.05", "-", "-", "on demand")]
