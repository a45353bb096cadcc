"""Two nodes on Ray: the exact commands and environment of both roles, the compose files, the
fit check over both nodes, and the errors. The Ray cluster itself forms for real in
e2e/test_ray_cluster.py."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from vllm_mms.config.resolve import Project, resolve
from vllm_mms.errors import UserError
from vllm_mms.stack import cluster

from .conftest import ROOT, run_cli
from .fake_clock import FakeClock
from .test_switch import calls, fake_docker

HEAD_VARS = """\
VLLM_HOST_IP=192.168.100.1
NCCL_SOCKET_IFNAME=enp1s0f1np1
GLOO_SOCKET_IFNAME=enp1s0f1np1
NCCL_IB_HCA=rocep1s0f1
NCCL_IB_DISABLE=0
"""
WORKER_VARS = HEAD_VARS.replace("VLLM_HOST_IP=192.168.100.1",
                                "VLLM_HOST_IP=192.168.100.2\nCLUSTER_HEAD_IP=192.168.100.1")


def node(project_dir, vars_env: str, name: str = "glm47-flash", **environ: str):
    (project_dir / "vars.env").write_text(vars_env)
    return resolve(Project(project_dir), name, environ=environ)


def test_head_and_worker_commands(project_dir):
    head = node(project_dir, HEAD_VARS)
    assert cluster.ray_head_argv(head) == [
        "ray", "start", "--head", "--node-ip-address", "192.168.100.1", "--port", "6379",
        "--include-dashboard", "false", "--disable-usage-stats"]
    worker = node(project_dir, WORKER_VARS)
    assert cluster.ray_worker_argv(worker) == [
        "ray", "start", "--address", "192.168.100.1:6379", "--node-ip-address", "192.168.100.2",
        "--disable-usage-stats", "--block"]
    assert cluster.head_address(head, "head") == "192.168.100.1:6379"


def test_network_variables_reach_both_roles_from_vars_env(project_dir):
    from vllm_mms.engine import serve

    for vars_env, ip in ((HEAD_VARS, "192.168.100.1"), (WORKER_VARS, "192.168.100.2")):
        env = serve.engine_environment(node(project_dir, vars_env), "sk-x", {})
        assert {k: env[k] for k in ("VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME",
                                    "NCCL_IB_HCA", "NCCL_IB_DISABLE")} == {
            "VLLM_HOST_IP": ip, "NCCL_SOCKET_IFNAME": "enp1s0f1np1",
            "GLOO_SOCKET_IFNAME": "enp1s0f1np1", "NCCL_IB_HCA": "rocep1s0f1",
            "NCCL_IB_DISABLE": "0"}


def test_head_engine_spans_both_nodes_tensor_parallel(project_dir):
    argv = cluster.cluster_engine_argv(node(project_dir, HEAD_VARS, "step-3.5-flash"))
    assert argv[:3] == ["vllm", "serve", "stepfun-ai/Step-3.5-Flash-FP8"]
    tail = argv[argv.index("--served-model-name"):]
    assert tail == ["--served-model-name", "vllm_agent", "--distributed-executor-backend", "ray",
                    "--tensor-parallel-size", "2", "--pipeline-parallel-size", "1"]
    # The catalog's own parallel flags are replaced, never doubled.
    assert argv.count("--tensor-parallel-size") == 1
    assert argv.count("--distributed-executor-backend") == 1


def test_pipeline_mode_keeps_tensor_parallel_inside_a_node(project_dir):
    resolved = node(project_dir, HEAD_VARS + "CLUSTER_PARALLEL=pipeline\nCLUSTER_GPUS_PER_NODE=4\n"
                                             "CLUSTER_NODES=2\n")
    argv = cluster.cluster_engine_argv(resolved)
    assert argv[-6:] == ["--distributed-executor-backend", "ray", "--tensor-parallel-size", "4",
                         "--pipeline-parallel-size", "2"]


@pytest.mark.parametrize("vars_env, role, message", [
    ("", "head", "VLLM_HOST_IP is not set: put this node's address on the cluster link in "
                 "vars.env (e.g. VLLM_HOST_IP=192.168.100.1), see MULTINODE.md"),
    (HEAD_VARS, "worker", "CLUSTER_HEAD_IP is not set: put the head node's address on the "
                          "cluster link in vars.env (e.g. CLUSTER_HEAD_IP=192.168.100.1), see "
                          "MULTINODE.md"),
])
def test_missing_addresses_are_one_line(project_dir, vars_env, role, message):
    (project_dir / "vars.env").write_text(vars_env)
    result = run_cli("cluster", role, "glm47-flash", project=project_dir,
                     env={"PATH": "/usr/bin:/bin"})
    assert (result.code, result.err) == (1, f"error: {message}\n")


def test_cluster_commands_are_exact(project_dir, tmp_path):
    bin_dir, state = fake_docker(tmp_path, "glm47-flash")
    root = str(project_dir)
    (project_dir / "vars.env").write_text(HEAD_VARS)
    # Only the stand-in on PATH: no nvidia-smi of this machine changes the head's fit check.
    head = run_cli("cluster", "head", "step-3.5-flash", "-d", project=project_dir,
                   env={"PATH": str(bin_dir)})
    assert head.code == 0, head.err
    files = ["-f", f"{root}/docker-compose.yml", "-f", f"{root}/docker-compose.gpu.yml",
             "-f", f"{root}/docker-compose.cluster.yml"]
    assert head.out == (f"starting the Ray head for step-3.5-flash with: docker compose "
                        f"{' '.join(files)} up -d\n")
    (project_dir / "vars.env").write_text(WORKER_VARS)
    worker = run_cli("cluster", "worker", "step-3.5-flash", project=project_dir,
                     env={"PATH": str(bin_dir)})
    assert worker.code == 0, worker.err
    assert calls(state) == [
        (["compose", *files, "up", "-d"], "step-3.5-flash"),
        (["compose", *files, "--profile", "cluster-worker", "up", "--no-deps", "ray-worker"],
         "step-3.5-flash"),
    ]


def test_fit_counts_both_nodes(project_dir, tmp_path):
    """step-3.5-flash does not fit one Spark; the head's check counts both."""
    bin_dir, state = fake_docker(tmp_path, "glm47-flash")
    (project_dir / "vars.env").write_text(HEAD_VARS + "CLUSTER_NODES=1\n")
    one = run_cli("cluster", "head", "step-3.5-flash", project=project_dir,
                  env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert (one.code, one.err) == (1, "error: vars.env: CLUSTER_NODES: Input should be greater "
                                      "than or equal to 2\n")
    from vllm_mms.engine import fit

    # (no GPU detected here: the conftest pins it, so these are assumed Sparks)
    single = fit.check(node(project_dir, HEAD_VARS, "step-3.5-flash"))
    double = fit.check(node(project_dir, HEAD_VARS, "step-3.5-flash"), nodes=2, parallel=2)
    assert (single.fits, double.fits) == (False, True)
    assert double.lines[1] == ("  memory     DGX Spark (GB10), 121.69 GiB unified, assumed: no "
                               "GPU detected, 2 nodes")


def test_head_waits_for_every_node_then_says_what_is_missing(monkeypatch, capsys):
    # One node, then Ray does not answer (the last answer stands), then one node again ...
    answers = iter([(1, 1.0), None, (1, 1.0)])
    asked = []

    def size(python, address):
        asked.append(address)
        return next(answers, (1, 1.0))

    monkeypatch.setattr(cluster, "cluster_size", size)
    clock = FakeClock()
    with pytest.raises(UserError) as caught:
        cluster.wait_for_nodes("python3", "10.0.0.1:6379", 2, 2, deadline_s=20, clock=clock)
    assert caught.value.message == (
        "the Ray cluster at 10.0.0.1:6379 has 1 node(s), 1 GPU(s) after 20s; it needs 2 node(s) "
        "with 2 GPU(s): start the worker (./runMe.sh cluster worker) on each other node, check "
        "VLLM_HOST_IP / CLUSTER_HEAD_IP and that the nodes reach each other (MULTINODE.md)")
    assert (clock.sleeps, len(asked)) == ([3] * 7, 8)  # asked at 0, 3, ..., 21 s
    # The log says how many nodes have joined, every 10 s.
    assert capsys.readouterr().err.splitlines() == [
        "[cluster] waiting for 2 node(s) with 2 GPU(s) at 10.0.0.1:6379: 1 joined ... 0s",
        "[cluster] waiting for 2 node(s) with 2 GPU(s) at 10.0.0.1:6379: 1 joined ... 12s"]


def test_head_goes_on_once_the_nodes_have_joined(monkeypatch):
    answers = iter([None, (1, 1.0), (2, 2.0)])
    monkeypatch.setattr(cluster, "cluster_size", lambda python, address: next(answers))
    clock = FakeClock()
    assert cluster.wait_for_nodes("python3", "10.0.0.1:6379", 2, 2, deadline_s=60,
                                  clock=clock) == 6.0


def docker_compose() -> str:
    """Debian's docker-compose: required in CI, a loud skip elsewhere."""
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (./runMe.sh test installs it)")
        pytest.skip("docker-compose is not installed here")
    return tool


def test_cluster_compose_files_parse_for_both_roles():
    tool = docker_compose()
    env = {k: v for k, v in os.environ.items() if k != "MODEL"}
    env["MODEL"] = "step-3.5-flash"
    proc = subprocess.run([tool, "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml",
                           "-f", "docker-compose.cluster.yml",
                           "--profile", "cluster-worker", "config"], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    head, worker, proxy = services["vllm-node"], services["ray-worker"], services["litellm"]
    assert (head["network_mode"], worker["network_mode"]) == ("host", "host")
    assert head["environment"]["CLUSTER_ROLE"] == "head"
    assert worker["environment"] == {"MODEL": "step-3.5-flash", "CLUSTER_ROLE": "worker",
                                     "HF_HOME": "/root/.cache/huggingface"}
    assert worker["image"] == head["image"]
    assert worker["build"] == head["build"]            # `cluster worker --build` builds it
    assert worker["init"] is True and head["init"] is True   # Ray daemons get an init
    caches = {"vllm_compile_cache:/root/.cache/vllm:rw",
              "flashinfer_cache:/root/.cache/flashinfer:rw", "triton_cache:/root/.triton:rw"}
    assert caches <= set(worker["volumes"]) and caches <= set(head["volumes"])
    assert not any("infiniband" in str(s.get("devices", "")) for s in services.values())
    assert worker["deploy"] == head["deploy"]          # the GPUs, like the head's engine
    assert proxy["extra_hosts"] == {"vllm-node": "host-gateway"}
    assert worker.get("ports", []) == []
    assert proxy["ports"] == ["127.0.0.1:4000:4000/tcp"]   # the proxy stays on loopback
    # secrets reach the worker as files, never through the compose environment
    assert all("TOKEN" not in k for k in worker["environment"])
    assert ROOT.joinpath("MULTINODE.md").is_file()


# ----------------------------------------------------------------------------- entrypoints

CLUSTER_SIZE = """#!/bin/sh
# Stands in for python3 running cluster.NODES_SCRIPT: two nodes, two GPUs.
echo "2 2.0"
"""


def test_head_entrypoint_starts_ray_waits_for_the_nodes_then_execs_vllm_on_ray(project_dir,
                                                                               tmp_path):
    import json
    import stat

    from .test_container import run_entrypoint, stand_in

    (project_dir / "vars.env").write_text(HEAD_VARS)
    (project_dir / "secrets" / "HF_TOKEN").write_text("hf_canary_head\n")
    bin_dir = tmp_path / "bin"
    stand_in(bin_dir, "ray", tmp_path / "ray.json")
    stand_in(bin_dir, "vllm", tmp_path / "vllm.json")
    size = bin_dir / "python3"
    size.write_text(CLUSTER_SIZE)
    size.chmod(size.stat().st_mode | stat.S_IEXEC)
    proc, out, err = run_entrypoint("entrypoint", project_dir, tmp_path,
                                    {"MODEL": "step-3.5-flash", "CLUSTER_ROLE": "head"})
    assert proc.returncode == 0, err
    ray = json.loads((tmp_path / "ray.json").read_text())
    assert ray["argv"][1:] == ["start", "--head", "--node-ip-address", "192.168.100.1", "--port",
                               "6379", "--include-dashboard", "false", "--disable-usage-stats"]
    vllm = json.loads((tmp_path / "vllm.json").read_text())
    assert vllm["pid"] == proc.pid  # exec'd: vLLM is the container's main process
    assert vllm["argv"][-8:] == ["--served-model-name", "vllm_agent",
                                 "--distributed-executor-backend", "ray",
                                 "--tensor-parallel-size", "2", "--pipeline-parallel-size", "1"]
    network = {"VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "NCCL_IB_HCA",
               "HF_TOKEN", "VLLM_API_KEY"}
    assert network <= set(ray["env"]) and network <= set(vllm["env"])
    # Ray's memory monitor is off for the Ray head and vLLM's driver (unified memory).
    assert "RAY_memory_monitor_refresh_ms" in ray["env"]
    assert "RAY_memory_monitor_refresh_ms" in vllm["env"]
    # vLLM joins the head's cluster; `ray start --head` must not be pointed at one.
    assert "RAY_ADDRESS" in vllm["env"] and "RAY_ADDRESS" not in ray["env"]
    generated = tmp_path / "generated"
    assert (generated / ".engine_api_key").read_text() == vllm["engine_key"]
    assert "model_name: \"step-3.5-flash\"" in (generated / "config.yaml").read_text()
    assert "hf_canary_head" not in out + err


def test_worker_entrypoint_joins_the_head_with_the_engine_environment(project_dir, tmp_path):
    import json

    from .test_container import run_entrypoint, stand_in

    (project_dir / "vars.env").write_text(WORKER_VARS)
    (project_dir / "secrets" / "HF_TOKEN").write_text("hf_canary_worker\n")
    stand_in(tmp_path / "bin", "ray", tmp_path / "ray.json")
    proc, out, err = run_entrypoint("entrypoint", project_dir, tmp_path,
                                    {"MODEL": "step-3.5-flash", "CLUSTER_ROLE": "worker"})
    assert proc.returncode == 0, err
    ray = json.loads((tmp_path / "ray.json").read_text())
    assert ray["pid"] == proc.pid
    assert ray["argv"][1:] == ["start", "--address", "192.168.100.1:6379", "--node-ip-address",
                               "192.168.100.2", "--disable-usage-stats", "--block"]
    assert {"HF_TOKEN", "VLLM_HOST_IP", "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME",
            "NCCL_IB_HCA"} <= set(ray["env"])
    assert "RAY_memory_monitor_refresh_ms" in ray["env"]
    assert "VLLM_API_KEY" not in ray["env"]       # the worker serves no HTTP
    assert not (tmp_path / "generated").exists()  # nor renders anything
    assert "hf_canary_worker" not in out + err


def test_ray_memory_monitor_default_yields_to_vars_env_and_the_container(project_dir):
    resolved = node(project_dir, WORKER_VARS)
    assert cluster.cluster_environment(resolved, "", {})["RAY_memory_monitor_refresh_ms"] == "0"
    assert cluster.cluster_environment(resolved, "", {"RAY_memory_monitor_refresh_ms": "250"})[
        "RAY_memory_monitor_refresh_ms"] == "250"
    resolved = node(project_dir, WORKER_VARS + "RAY_memory_monitor_refresh_ms=500\n")
    assert cluster.cluster_environment(resolved, "", {"RAY_memory_monitor_refresh_ms": "250"})[
        "RAY_memory_monitor_refresh_ms"] == "500"


@pytest.mark.parametrize("role, service", [("head", "vllm-node"), ("worker", "ray-worker")])
def test_infiniband_override_only_when_the_device_exists(tmp_path, role, service):
    target = tmp_path / "state" / "compose.infiniband.yml"
    assert cluster.infiniband_override(role, target, str(tmp_path / "absent")) is None
    assert not target.exists()
    device = tmp_path / "infiniband"
    device.mkdir()
    assert cluster.infiniband_override(role, target, str(device)) == target
    assert yaml.safe_load(target.read_text()) == {
        "services": {service: {"devices": [f"{device}:{device}"]}}}
    # gone again on a later start without the device (a stale file would fail compose)
    device.rmdir()
    assert cluster.infiniband_override(role, target, str(device)) is None
    assert not target.exists()


def test_cluster_commands_add_the_infiniband_override_when_present(project_dir, tmp_path):
    bin_dir, state = fake_docker(tmp_path, "glm47-flash")
    device = tmp_path / "infiniband"
    device.mkdir()
    (project_dir / "vars.env").write_text(WORKER_VARS)
    worker = run_cli("cluster", "worker", "step-3.5-flash", "-d", "--build", project=project_dir,
                     env={"PATH": str(bin_dir), "MMS_INFINIBAND_DEVICE": str(device),
                          "MMS_STATE_DIR": str(tmp_path / "st")})
    assert worker.code == 0, worker.err
    override = tmp_path / "st" / "compose.infiniband.yml"
    root = str(project_dir)
    assert calls(state) == [
        (["compose", "-f", f"{root}/docker-compose.yml", "-f", f"{root}/docker-compose.gpu.yml",
          "-f", f"{root}/docker-compose.cluster.yml", "-f", str(override), "--profile",
          "cluster-worker", "up", "-d", "--build", "--no-deps", "ray-worker"], "step-3.5-flash")]
    assert worker.out.splitlines()[0] == f"[cluster] {device} found: passed to the container " \
                                         f"({override})"


def test_the_infiniband_override_parses_with_the_cluster_files(tmp_path):
    tool = docker_compose()
    device = tmp_path / "infiniband"
    device.mkdir()
    override = cluster.infiniband_override("worker", tmp_path / "compose.infiniband.yml",
                                           str(device))
    env = {**os.environ, "MODEL": "step-3.5-flash"}
    proc = subprocess.run([tool, "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml",
                           "-f", "docker-compose.cluster.yml", "-f", str(override),
                           "--profile", "cluster-worker", "config"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert services["ray-worker"]["devices"] == [f"{device}:{device}"]


def test_ucx_openmpi_and_torch_distributed_variables_pass_through(project_dir):
    from vllm_mms.engine import serve

    extra = ("UCX_NET_DEVICES=enp1s0f1np1\nOMPI_MCA_btl_tcp_if_include=enp1s0f1np1\n"
             "TP_SOCKET_IFNAME=enp1s0f1np1\nMASTER_ADDR=192.168.100.1\n")
    env = serve.engine_environment(node(project_dir, WORKER_VARS + extra), "", {})
    assert {k: env[k] for k in ("UCX_NET_DEVICES", "OMPI_MCA_btl_tcp_if_include",
                                "TP_SOCKET_IFNAME", "MASTER_ADDR")} == {
        "UCX_NET_DEVICES": "enp1s0f1np1", "OMPI_MCA_btl_tcp_if_include": "enp1s0f1np1",
        "TP_SOCKET_IFNAME": "enp1s0f1np1", "MASTER_ADDR": "192.168.100.1"}
    with pytest.raises(UserError, match="unknown setting 'MASTER_PORTX'"):
        node(project_dir, WORKER_VARS + "MASTER_PORTX=1\n")
