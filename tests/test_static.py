"""Static checks with real tools: Debian's docker-compose parses the compose file, hadolint
lints the Dockerfiles, shellcheck the shell scripts. Plus the project's own conventions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

pytestmark = pytest.mark.static
TOOLS_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (./runMe.sh test installs it)")
        pytest.skip(f"{name} is not installed here (./runMe.sh test installs it as root)")
    return found


@pytest.fixture(scope="module")
def compose() -> dict:
    """The GPU stack as docker-compose itself resolves it (variables, defaults, paths)."""
    return resolved_compose("docker-compose.gpu.yml", MODEL="qwen3-next-coder")


IMAGE_VARIABLES = ("ENGINE_BASE_IMAGE", "PROXY_BASE_IMAGE", "POSTGRES_IMAGE", "PROMETHEUS_IMAGE",
                   "MMS_WEIGHTS_HOST_DIR")


def resolved_compose(device_file: str, **variables: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MODEL", "VLLM_PORT", "LITELLM_PORT", "HF_CACHE_DIR", "POSTGRES_PASSWORD",
                        *IMAGE_VARIABLES)}
    env.update(variables)
    proc = subprocess.run([tool("docker-compose"), "-f", str(ROOT / "docker-compose.yml"),
                           "-f", str(ROOT / device_file), "config"], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_base_images_default_to_the_public_ones_and_can_be_replaced(compose):
    services = compose["services"]
    assert services["vllm-node"]["build"]["args"] == {
        "BASE_IMAGE": "scitrera/dgx-spark-vllm:0.16.0-t5"}
    assert services["litellm"]["build"]["args"] == {"BASE_IMAGE": "python:3.11-slim"}
    assert services["litellm_db"]["image"] == "postgres:16"
    assert services["prometheus"]["image"] == "prom/prometheus:v3.5.0"
    assert services["vllm-node"]["ulimits"] == {"memlock": -1, "stack": 67108864}
    replaced = resolved_compose("docker-compose.gpu.yml", MODEL="glm47-flash",
                                ENGINE_BASE_IMAGE="e:1", PROXY_BASE_IMAGE="p:1",
                                POSTGRES_IMAGE="db:1", PROMETHEUS_IMAGE="prom:1")["services"]
    assert replaced["vllm-node"]["build"]["args"] == {"BASE_IMAGE": "e:1"}
    assert replaced["litellm"]["build"]["args"] == {"BASE_IMAGE": "p:1"}
    assert replaced["litellm_db"]["image"] == "db:1"
    assert replaced["prometheus"]["image"] == "prom:1"


def test_cpu_stack_has_no_gpu_reservation_and_serves_the_mounted_checkpoint(tmp_path):
    engine = resolved_compose("docker-compose.cpu.yml", MODEL="smollm2-135m-cpu",
                              MMS_WEIGHTS_HOST_DIR=str(tmp_path))["services"]["vllm-node"]
    assert "deploy" not in engine
    assert engine["ulimits"] == {"stack": 67108864}   # no memlock: not needed without CUDA
    assert engine["image"] == "vllm-mms-engine-cpu:latest"
    assert engine["build"]["args"] == {
        "BASE_IMAGE": "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.16.0"}
    assert engine["environment"]["MMS_SERVE_WEIGHTS"] == "/app/weights"
    assert mounts(engine)["/app/weights"] == (str(tmp_path), "ro")
    env = {k: v for k, v in os.environ.items() if k not in IMAGE_VARIABLES}
    proc = subprocess.run([tool("docker-compose"), "-f", "docker-compose.yml", "-f",
                           "docker-compose.cpu.yml", "config"], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    assert proc.returncode == 1
    assert "runMe.sh sets it to the prepared checkpoint" in proc.stderr


def ports(service: dict) -> list[str]:
    return service.get("ports", [])


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """target -> (source, mode) from docker-compose 1.29's `source:target[:mode]` form."""
    result = {}
    for spec in service["volumes"]:
        source, target, *mode = spec.split(":")
        result[target] = (source, mode[0] if mode else "rw")
    return result


def test_services_and_names(compose):
    assert sorted(compose["services"]) == ["grafana", "litellm", "litellm_db", "prometheus",
                                           "vllm-node"]
    # the monitoring pair only starts with the `metrics` profile
    assert {n: s.get("profiles") for n, s in compose["services"].items()} == {
        "grafana": ["metrics"], "prometheus": ["metrics"], "litellm": None, "litellm_db": None,
        "vllm-node": None}
    assert compose["services"]["vllm-node"]["container_name"] == "vllm-container"
    assert compose["services"]["litellm_db"]["image"] == "postgres:16"


def test_model_reaches_both_containers(compose):
    for name in ("vllm-node", "litellm"):
        assert compose["services"][name]["environment"]["MODEL"] == "qwen3-next-coder"


def test_ports_bound_to_loopback_only(compose):
    services = compose["services"]
    assert ports(services["litellm_db"]) == []
    assert ports(services["litellm"]) == ["127.0.0.1:4000:4000/tcp"]
    assert ports(services["vllm-node"]) == []  # reachable inside the compose network only
    assert services["vllm-node"]["expose"] == ["8000"]
    assert ports(services["prometheus"]) == ["127.0.0.1:9090:9090/tcp"]
    assert ports(services["grafana"]) == ["127.0.0.1:3000:3000/tcp"]


def test_metrics_profile_scrapes_both_services_inside_the_network(compose):
    prometheus = compose["services"]["prometheus"]
    assert mounts(prometheus)["/etc/prometheus/prometheus.yml"] == (
        str(ROOT / "monitoring" / "prometheus.yml"), "ro")
    assert mounts(prometheus)["/etc/prometheus/litellm_master_key"] == (
        str(ROOT / "secrets" / "LITELLM_MASTER_KEY"), "ro")
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["vllm"]["static_configs"] == [{"targets": ["vllm-node:8000"]}]
    assert jobs["litellm"]["static_configs"] == [{"targets": ["litellm:4000"]}]
    assert jobs["litellm"]["metrics_path"] == "/metrics/"
    assert jobs["litellm"]["authorization"] == {
        "type": "Bearer", "credentials_file": "/etc/prometheus/litellm_master_key"}
    grafana = compose["services"]["grafana"]
    assert mounts(grafana)["/etc/grafana/provisioning"] == (
        str(ROOT / "monitoring" / "grafana" / "provisioning"), "ro")
    assert mounts(grafana)["/var/lib/grafana/dashboards"] == (
        str(ROOT / "monitoring" / "grafana" / "dashboards"), "ro")
    provider = yaml.safe_load(
        (ROOT / "monitoring/grafana/provisioning/dashboards/dashboards.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    sources = yaml.safe_load(
        (ROOT / "monitoring/grafana/provisioning/datasources/datasources.yml").read_text())
    assert [(d["uid"], d["url"]) for d in sources["datasources"]] == [
        ("prometheus", "http://prometheus:9090"), ("usage", "litellm_db:5432")]


def test_dashboard_has_the_panels_the_issue_names():
    import json

    dashboard = json.loads((ROOT / "monitoring/grafana/dashboards/vllm-mms.json").read_text())
    assert [p["title"] for p in dashboard["panels"]] == [
        "Requests per second", "Tokens per second", "Time to first token", "Queue depth",
        "KV-cache use", "Request latency through the proxy", "Errors by key"]
    uids = {"prometheus", "usage"}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids


def test_engine_health_check_gpu_and_mounts(compose):
    engine = compose["services"]["vllm-node"]
    assert engine["healthcheck"] == {"test": ["CMD", "/app/scripts/healthcheck.sh"],
                                     "interval": "10s", "timeout": "5s", "retries": 3,
                                     "start_period": "30m"}  # unhealthy within 30 s
    assert engine["restart"] == "unless-stopped"
    assert engine["ipc"] == "host"
    devices = engine["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    binds = mounts(engine)
    for target, name in (("/app/models", "models"), ("/app/secrets", "secrets"),
                         ("/app/scripts", "scripts"), ("/app/vars.env", "vars.env")):
        assert binds[target] == (str(ROOT / name), "ro"), target
    assert binds["/root/.cache/huggingface"][0].endswith("/.cache/huggingface")
    assert binds["/app/generated_configs"] == ("generated_configs", "rw")


def test_proxy_waits_for_healthy_engine_and_database(compose):
    proxy = compose["services"]["litellm"]
    assert proxy["depends_on"] == {"vllm-node": {"condition": "service_healthy"},
                                   "litellm_db": {"condition": "service_healthy"}}
    assert (proxy["healthcheck"]["interval"], proxy["healthcheck"]["retries"]) == ("10s", 3)
    assert proxy["healthcheck"]["start_period"] == "30s"
    assert "/health/liveliness" in " ".join(proxy["healthcheck"]["test"])
    assert mounts(proxy)["/app/generated_configs"] == ("generated_configs", "ro")
    assert "DATABASE_URL" not in proxy["environment"]  # would start LiteLLM's Prisma layer


def test_database_health_and_volume(compose):
    db = compose["services"]["litellm_db"]
    assert db["healthcheck"]["test"] == ["CMD-SHELL", "pg_isready -U litellm -d litellm"]
    assert db["healthcheck"]["interval"] == "1s"
    assert mounts(db) == {"/var/lib/postgresql/data": ("postgres_data", "rw")}


def test_generated_configs_volume_is_tmpfs(compose):
    volume = compose["volumes"]["generated_configs"]
    assert volume["driver_opts"]["type"] == "tmpfs"
    assert "postgres_data" in compose["volumes"]


def test_compose_parse_fails_on_a_broken_file(tmp_path):
    """The parser is real: a wrong shape is refused."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  x:\n    ports: 5\n")
    proc = subprocess.run([tool("docker-compose"), "-f", str(broken), "config"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        "services.x.ports contains an invalid type, it should be an array")


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.proxy"])
def test_hadolint(dockerfile):
    proc = subprocess.run([tool("hadolint"), str(ROOT / dockerfile)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_engine_dockerfile_base_image_is_a_build_arg():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=scitrera/dgx-spark-vllm:0.16.0-t5\nFROM ${BASE_IMAGE}\n" in text
    assert "WORKDIR /app" in text
    proxy = (ROOT / "Dockerfile.proxy").read_text()
    assert "pip install --no-cache-dir --require-hashes -r requirements/proxy.txt" in proxy


def shell_scripts() -> list[Path]:
    return sorted([ROOT / "runMe.sh", *ROOT.glob("scripts/*.sh"), *ROOT.glob("launchers/*.sh"),
                   ROOT / ".ci" / "run"])


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck(script):
    proc = subprocess.run([tool("shellcheck"), "-x", str(script)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout
    assert os.access(script, os.X_OK) or script.name == "run"
