"""Replicas, routing, fallbacks and the shared Redis: exact generated config, compose file,
engine argv and errors. The running behaviour is proven in e2e/test_replicas_local.py."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

import pytest
import yaml

from vllm_mms.config.resolve import Project, resolve
from vllm_mms.engine import serve
from vllm_mms.stack import replicas
from vllm_mms.stack.render import render

from .conftest import ROOT, run_cli
from .test_switch import calls, fake_docker

ROUTED = """\
  routing:
    strategy: least-busy
    weights: [3, 1]
    cooldown_time: 20
    allowed_fails: 1
    fallbacks:
      - model: qwen3-next-coder
        api_base: http://spark-2:8000/v1
"""


def write_model(project_dir, name: str, command: str) -> None:
    (project_dir / "models" / f"{name}.yml").write_text(
        f"description: test\ncommand: {command}\nenv: {{}}\nlitellm: {{}}\n")


def with_routing(project_dir, name: str, routing: str = ROUTED) -> None:
    path = project_dir / "models" / f"{name}.yml"
    text = path.read_text()
    assert "\nlitellm:\n" in text
    path.write_text(text.replace("\nlitellm:\n", "\nlitellm:\n" + routing, 1))


def rendered(project_dir, tmp_path, name: str, environ: dict[str, str], bases) -> dict:
    project = Project(project_dir)
    written = render(project, resolve(project, name, environ=environ), tmp_path, api_base=bases)
    return {n: yaml.safe_load(p.read_text()) for n, p in written.items()}


def test_two_replicas_render_one_deployment_each_with_weights_routing_and_fallbacks(
        project_dir, tmp_path):
    with_routing(project_dir, "glm47-flash")
    out = rendered(project_dir, tmp_path, "glm47-flash", {"REPLICAS": "2"},
                   ["http://vllm-node:8000/v1", "http://vllm-node-2:8000/v1"])
    config = out["config.yaml"]
    assert [(m["model_name"], m["litellm_params"]["api_base"], m["litellm_params"].get("weight"),
             m["model_info"].get("replica")) for m in config["model_list"]] == [
        ("glm47-flash", "http://vllm-node:8000/v1", 3, 1),
        ("glm47-flash", "http://vllm-node-2:8000/v1", 1, 2),
        ("vllm_agent", "http://vllm-node:8000/v1", 3, 1),
        ("vllm_agent", "http://vllm-node-2:8000/v1", 1, 2),
        ("glm-4.7-flash", "http://vllm-node:8000/v1", 3, 1),
        ("glm-4.7-flash", "http://vllm-node-2:8000/v1", 1, 2),
        ("qwen3-next-coder", "http://spark-2:8000/v1", None, None),
    ]
    assert config["model_list"][-1]["model_info"] == {"catalog_name": "qwen3-next-coder",
                                                      "fallback_for": "glm47-flash",
                                                      "input_cost_per_token": 0,
                                                      "output_cost_per_token": 0}
    assert config["model_list"][-1]["litellm_params"]["api_key"] == "os.environ/VLLM_API_KEY"
    assert config["router_settings"] == {
        "routing_strategy": "least-busy", "num_retries": 1, "timeout": 600, "allowed_fails": 1,
        "cooldown_time": 20,
        "allowed_fails_policy": {"NotFoundErrorAllowedFails": 1000000,
                                 "BadRequestErrorAllowedFails": 1000000},
        "fallbacks": [{"glm47-flash": ["qwen3-next-coder"]}, {"vllm_agent": ["qwen3-next-coder"]},
                      {"glm-4.7-flash": ["qwen3-next-coder"]}]}
    # With replicas, one retry: the router picks again and a replica in cooldown is left out.
    assert config["litellm_settings"]["num_retries"] == 1
    assert out["models.yml"]["api_bases"] == ["http://vllm-node:8000/v1",
                                              "http://vllm-node-2:8000/v1"]


def test_litellm_router_takes_the_replicas_and_weights(project_dir, tmp_path, monkeypatch):
    from litellm.proxy.proxy_server import ProxyConfig
    from litellm.router import Router

    with_routing(project_dir, "glm47-flash")
    project = Project(project_dir)
    written = render(project, resolve(project, "glm47-flash", environ={"REPLICAS": "2"}), tmp_path,
                     api_base=["http://a:8000/v1", "http://b:8000/v1"])
    monkeypatch.setenv("VLLM_API_KEY", "sk-test-engine")
    loaded = asyncio.run(ProxyConfig().get_config(config_file_path=str(written["config.yaml"])))
    settings = loaded["router_settings"]
    router = Router(model_list=loaded["model_list"], **settings)
    group = router.get_model_list(model_name="vllm_agent")
    assert [(d["litellm_params"]["api_base"], d["litellm_params"]["weight"]) for d in group] == [
        ("http://a:8000/v1", 3), ("http://b:8000/v1", 1)]
    assert router.routing_strategy == "least-busy"
    assert router.cooldown_time == 20
    assert router.allowed_fails == 1
    assert router.fallbacks == [{"glm47-flash": ["qwen3-next-coder"]},
                                {"vllm_agent": ["qwen3-next-coder"]},
                                {"glm-4.7-flash": ["qwen3-next-coder"]}]


@pytest.mark.parametrize("environ, message", [
    ({"REPLICAS": "3"}, "error: models/glm47-flash.yml: litellm.routing.weights: 2 weight(s) "
                        "for 3 replica(s) (REPLICAS=3)\n"),
    ({"REPLICAS": "0"}, "error: environment: REPLICAS: Input should be greater than or equal "
                        "to 1\n"),
])
def test_replica_errors_are_one_line(project_dir, tmp_path, environ, message):
    with_routing(project_dir, "glm47-flash", ROUTED.replace("fallbacks:\n      - model: qwen3-next-coder\n"
                          "        api_base: http://spark-2:8000/v1\n", "fallbacks: []\n"))
    result = run_cli("render", "glm47-flash", "--out", str(tmp_path / "out"), project=project_dir,
                     env=environ)
    assert (result.code, result.err) == (1, message)
    assert not (tmp_path / "out" / "config.yaml").exists()


@pytest.mark.parametrize("fallback, message", [
    ("no-such-model", "litellm.routing.fallbacks: no-such-model is not a catalog model "
                      "(models/no-such-model.yml does not exist)"),
    ("glm47-flash", "litellm.routing.fallbacks: glm47-flash is this model itself"),
])
def test_fallbacks_must_be_other_catalog_models(project_dir, tmp_path, fallback, message):
    with_routing(project_dir, "glm47-flash", ROUTED.replace("qwen3-next-coder", fallback))
    result = run_cli("render", "glm47-flash", "--out", str(tmp_path), "--replicas", "2",
                     project=project_dir)
    assert (result.code, result.err) == (1, f"error: models/glm47-flash.yml: {message}\n")


def test_render_replicas_flag_prints_the_shared_memory_split(project_dir, tmp_path):
    result = run_cli("render", "glm47-flash", "--out", str(tmp_path), "--replicas", "2",
                     project=project_dir)
    assert result.code == 0, result.err
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert sorted({m["litellm_params"]["api_base"] for m in config["model_list"]}) == [
        "http://vllm-node-2:8000/v1", "http://vllm-node:8000/v1"]
    # glm47-flash asks for 0.80 of the GPU: two replicas on it get 0.4 each.
    assert '"--gpu-memory-utilization", "0.4"' in result.out


@pytest.mark.parametrize("command, sharing, expected", [
    ("vllm serve m --gpu-memory-utilization 0.85", 2, "0.425"),
    ("vllm serve m --gpu-memory-utilization=0.3", 3, "0.1"),
    ("vllm serve m", 2, "0.45"),             # vLLM's default 0.9, split
    ("vllm serve m --gpu-memory-utilization 0.9", 1, "0.9"),
])
def test_replicas_sharing_a_device_split_its_memory(project_dir, command, sharing, expected):
    write_model(project_dir, "split", command=command)
    argv = serve.engine_argv(resolve(Project(project_dir), "split", environ={}), host="h",
                              port=1, sharing=sharing)
    assert serve.flag_value(argv, "--gpu-memory-utilization") == expected
    assert argv.count("--gpu-memory-utilization") + sum(
        a.startswith("--gpu-memory-utilization=") for a in argv) == 1


@pytest.mark.parametrize("replica, count, cores, expected", [
    (1, 2, [0, 1], "0"), (2, 2, [0, 1], "1"),
    (1, 2, [0, 1, 2, 3], "0,1"), (2, 2, [0, 1, 2, 3], "2,3"),
    (2, 3, [0, 1, 2, 3, 4], "1,2"),
    (1, 2, [0], None),                        # fewer cores than replicas: leave vLLM's auto
])
def test_cpu_replicas_get_their_own_cores(replica, count, cores, expected):
    assert replicas.cpu_binding(replica, count, cores) == expected


def test_compose_override_one_gpu_per_replica(project_dir):
    resolved = resolve(Project(project_dir), "glm47-flash",
                       environ={"REPLICAS": "2", "REPLICA_GPUS": "0 1"})
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    override = replicas.compose_override(resolved, base)
    assert override["services"]["vllm-node"] == {"environment": {
        "REPLICAS": "2", "MMS_REPLICA": "1", "CUDA_VISIBLE_DEVICES": "0"}}
    second = override["services"]["vllm-node-2"]
    expected = {k: v for k, v in base["services"]["vllm-node"].items() if k != "build"}
    expected.update(container_name="vllm-container-2",
                    environment={**base["services"]["vllm-node"]["environment"],
                                 "REPLICAS": "2", "MMS_REPLICA": "2", "CUDA_VISIBLE_DEVICES": "1"},
                    depends_on={"vllm-node": {"condition": "service_started"}})
    assert second == expected
    assert replicas.sharing(resolved) == 1
    assert list(override["services"]) == ["vllm-node", "vllm-node-2"]


def test_compose_override_without_gpu_ids_shares_the_gpus(project_dir):
    resolved = resolve(Project(project_dir), "glm47-flash", environ={"REPLICAS": "3"})
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    override = replicas.compose_override(resolved, base)
    assert list(override["services"]) == ["vllm-node", "vllm-node-2", "vllm-node-3"]
    assert "CUDA_VISIBLE_DEVICES" not in override["services"]["vllm-node-3"]["environment"]
    assert replicas.sharing(resolved) == 3


@pytest.mark.parametrize("environ, message", [
    ({"REPLICAS": "2", "REPLICA_GPUS": "0"},
     "REPLICA_GPUS='0' names 1 GPU group(s) for 2 replica(s); give one group per replica, "
     "e.g. REPLICA_GPUS=\"0 1\""),
    ({"REPLICAS": "2", "REPLICA_GPUS": "0 1", "MODEL_TP": "2"},
     "REPLICA_GPUS='0 1': group '0' has 1 GPU(s); each replica of tp2 needs 2 (tensor x "
     "pipeline parallel size)"),
])
def test_replica_gpus_must_match(project_dir, environ, message):
    from vllm_mms.errors import UserError

    name = "glm47-flash"
    if environ.pop("MODEL_TP", None):
        write_model(project_dir, "tp2", command="vllm serve m --tensor-parallel-size 2")
        name = "tp2"
    with pytest.raises(UserError) as caught:
        replicas.gpu_groups(resolve(Project(project_dir), name, environ=environ))
    assert caught.value.message == message


def test_the_compose_override_is_valid_for_docker_compose(project_dir, tmp_path):
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (./runMe.sh test installs it)")
        pytest.skip("docker-compose is not installed here")
    resolved = resolve(Project(project_dir), "glm47-flash",
                       environ={"REPLICAS": "2", "REPLICA_GPUS": "0 1"})
    files = [ROOT / "docker-compose.yml", ROOT / "docker-compose.gpu.yml"]
    override = replicas.write_compose_override(resolved, files, tmp_path / "compose.replicas.yml")
    env = {k: v for k, v in os.environ.items() if k != "MODEL"}
    proc = subprocess.run([tool, "-f", str(files[0]), "-f", str(files[1]), "-f", str(override),
                           "config"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert services["vllm-node"]["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert services["vllm-node-2"]["environment"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert services["vllm-node-2"]["container_name"] == "vllm-container-2"
    assert services["vllm-node-2"].get("ports", []) == []   # not published, like replica 1
    assert services["vllm-node-2"]["healthcheck"] == services["vllm-node"]["healthcheck"]
    # the device file's settings reach every replica, not only the first
    assert services["vllm-node-2"]["deploy"] == services["vllm-node"]["deploy"]
    assert services["vllm-node-2"]["ulimits"] == {"memlock": -1, "stack": 67108864}


def test_up_with_replicas_adds_the_override_file(project_dir, tmp_path):
    bin_dir, state = fake_docker(tmp_path, "glm47-flash")
    for name in ("docker-compose.yml", "docker-compose.gpu.yml"):
        shutil.copy(ROOT / name, project_dir / name)
    # Only the stand-in on PATH: no nvidia-smi of this machine changes the fit check.
    result = run_cli("qwen3-next-coder", "-d", "--replicas", "2", project=project_dir,
                     env={"PATH": str(bin_dir), "REPLICA_GPUS": "0 1"})
    assert result.code == 0, result.err
    compose = str(project_dir / "docker-compose.yml")
    gpu = str(project_dir / "docker-compose.gpu.yml")
    override = os.path.join(os.environ["MMS_STATE_DIR"], "compose.replicas.yml")
    assert calls(state) == [(["compose", "-f", compose, "-f", gpu, "-f", override, "up",
                              "--remove-orphans", "-d"], "qwen3-next-coder")]
    text = open(override).read()
    assert text.startswith("# Generated by ./runMe.sh --replicas; do not edit.")
    assert yaml.safe_load(text)["services"]["vllm-node-2"]["environment"]["MMS_REPLICA"] == "2"


def test_shared_limits_redis_url_stays_out_of_generated_files(project_dir, tmp_path):
    url = "redis://:s3cret-canary@127.0.0.1:6379/0"
    (project_dir / "secrets" / "PROXY_REDIS_URL").write_text(url + "\n")
    project = Project(project_dir)
    resolved = resolve(project, "glm47-flash", environ={})
    assert resolved.settings.PROXY_REDIS_URL == url
    written = render(project, resolved, tmp_path)
    config = yaml.safe_load(written["config.yaml"].read_text())
    assert config["general_settings"]["coordination_redis"] == {
        "url": "os.environ/PROXY_REDIS_URL"}
    for path in written.values():
        assert "s3cret-canary" not in path.read_text()


def test_bad_redis_url_is_refused(project_dir, tmp_path):
    result = run_cli("render", "glm47-flash", "--out", str(tmp_path), project=project_dir,
                     env={"PROXY_REDIS_URL": "127.0.0.1:6379"})
    assert result.code == 1
    assert result.err == ("error: environment: PROXY_REDIS_URL: String should match pattern "
                          "'^rediss?://\\S+$'\n")


def test_replicas_sharing_a_gpu_must_each_fit_in_their_share(project_dir, tmp_path):
    bin_dir, state = fake_docker(tmp_path, "glm47-flash")
    # Only the stand-in on PATH: the budget below is the assumed Spark's, not this machine's.
    result = run_cli("glm47-flash", "-d", "--replicas", "4", project=project_dir,
                     env={"PATH": str(bin_dir)})
    assert result.code == 1
    lines = result.err.splitlines()
    assert lines[0] == "error: glm47-flash does not fit this machine (4 replicas share it):"
    assert "  budget       24.3 GiB  gpu-memory-utilization 0.2 x 1 GPU(s), 10 GiB kept for " \
           "the OS" in lines
    assert calls(state) == []
    # On their own GPUs, each replica has the whole share again.
    for name in ("docker-compose.yml", "docker-compose.gpu.yml"):
        shutil.copy(ROOT / name, project_dir / name)
    ok = run_cli("glm47-flash", "-d", "--replicas", "2", project=project_dir,
                 env={"PATH": str(bin_dir), "REPLICA_GPUS": "0 1"})
    assert ok.code == 0, ok.err


def test_prompt_tokens_are_counted_on_a_live_replica_when_the_first_is_down(monkeypatch):
    import http.server
    import json
    import threading

    from vllm_mms.proxy.hooks import count_prompt_tokens
    from vllm_mms.stack.processes import free_port

    seen = []

    class Tokenizer(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            body = json.dumps({"count": 7}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    monkeypatch.setenv("VLLM_API_KEY", "sk-engine")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tokenizer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = {"served_model_name": "vllm_agent",
                    "api_bases": [f"http://127.0.0.1:{free_port()}/v1",
                                  f"http://127.0.0.1:{server.server_address[1]}/v1"]}
        data = {"messages": [{"role": "user", "content": "hi"}]}
        assert asyncio.run(count_prompt_tokens(data, settings)) == 7
        assert seen[0]["messages"] == data["messages"]
    finally:
        server.shutdown()
        server.server_close()


def test_switch_refuses_a_stack_with_replicas(project_dir, tmp_path):
    from .test_stack_state import local_stack

    state = tmp_path / "state"
    alive = os.getpid()  # this test process stands in for the running services
    local_stack(state, engines=((alive, 1), (alive, 3)), proxy=(alive, 2))
    result = run_cli("switch", "glm47-flash", project=project_dir,
                     env={"MMS_STATE_DIR": str(state)})
    assert (result.code, result.err) == (1, (
        "error: switch moves one engine, and smollm2-135m-cpu runs 2 replicas: ./runMe.sh down "
        "&& ./runMe.sh --local glm47-flash --replicas 2\n"))


def test_replica_entrypoint_uses_replica_ones_key_and_its_share(project_dir, tmp_path):
    import json

    from .test_container import run_entrypoint, stand_in

    stand_in(tmp_path / "bin", "vllm", tmp_path / "one.json")
    first, _, err = run_entrypoint("entrypoint", project_dir, tmp_path,
                                   {"MODEL": "glm47-flash", "REPLICAS": "2", "MMS_REPLICA": "1"})
    assert first.returncode == 0, err
    config = yaml.safe_load((tmp_path / "generated" / "config.yaml").read_text())
    assert sorted({m["litellm_params"]["api_base"] for m in config["model_list"]}) == [
        "http://vllm-node-2:8000/v1", "http://vllm-node:8000/v1"]
    stand_in(tmp_path / "bin", "vllm", tmp_path / "two.json")
    before = (tmp_path / "generated" / "config.yaml").stat().st_mtime_ns
    second, out, err = run_entrypoint("entrypoint", project_dir, tmp_path,
                                      {"MODEL": "glm47-flash", "REPLICAS": "2",
                                       "MMS_REPLICA": "2"})
    assert second.returncode == 0, err
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["engine_key"] == one["engine_key"]   # the key the proxy holds
    assert (tmp_path / "generated" / "config.yaml").stat().st_mtime_ns == before  # not rendered
    for seen in (one, two):                          # sharing the GPUs: 0.80 split in two
        assert seen["argv"][seen["argv"].index("--gpu-memory-utilization") + 1] == "0.4"
    assert "replica 2 of 2" in out
