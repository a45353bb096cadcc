"""The container entrypoints really exec: a stand-in `vllm` / `litellm` on PATH records the
argv and environment it was started with (the process id stays the same across exec)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT
from .e2e.upstream import RecordingUpstream

RECORDER = """#!{python}
import json, os, sys
names = sorted(k for k in os.environ if k.startswith(("VLLM_", "HF_", "NCCL_", "LITELLM_", "MMS_", "GLOO_", "RAY_", "CUDA_")))
json.dump({{"argv": sys.argv, "pid": os.getpid(), "env": names,
           "engine_key": os.environ.get("VLLM_API_KEY"),
           "master_key": os.environ.get("LITELLM_MASTER_KEY"),
           "database_url": os.environ.get("DATABASE_URL")}}, open({out!r}, "w"))
"""


def stand_in(bin_dir: Path, name: str, out: Path) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(RECORDER.format(python=sys.executable, out=str(out)))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def run_entrypoint(command: str, project_dir: Path, tmp_path: Path, extra_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM_", "VLLM_"))}
    env.update({"PATH": f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}",
                "PYTHONPATH": str(ROOT / "src"), "MMS_PROJECT_DIR": str(project_dir),
                "MMS_GENERATED_DIR": str(tmp_path / "generated"), "MODEL": "qwen3-next-coder",
                **(extra_env or {})})
    proc = subprocess.Popen([sys.executable, "-m", "vllm_mms", command], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    return proc, out, err


def test_engine_entrypoint_renders_then_execs_vllm(project_dir, tmp_path):
    (project_dir / "secrets" / "HF_TOKEN").write_text("hf_canary_123\n")
    (project_dir / "vars.env").write_text("NCCL_SOCKET_IFNAME=eth0\n")
    record = tmp_path / "record.json"
    stand_in(tmp_path / "bin", "vllm", record)
    proc, out, err = run_entrypoint("entrypoint", project_dir, tmp_path)
    assert proc.returncode == 0, err
    seen = json.loads(record.read_text())
    assert seen["pid"] == proc.pid  # exec'd in place: vLLM is the container's main process
    assert seen["argv"][1:] == [
        "serve", "Qwen/Qwen3-Coder-Next-FP8", "--tool-call-parser", "qwen3_coder",
        "--enable-auto-tool-choice", "--kv-cache-dtype", "fp8", "--max-model-len", "204800",
        "--max-num-seqs", "4", "--gpu-memory-utilization", "0.80", "--host", "0.0.0.0",
        "--port", "8000", "--served-model-name", "vllm_agent"]
    assert "HF_TOKEN" in seen["env"] and "NCCL_SOCKET_IFNAME" in seen["env"]
    assert seen["engine_key"].startswith("sk-engine-")
    generated = tmp_path / "generated"
    assert sorted(p.name for p in generated.iterdir()) == [".engine_api_key", "config.yaml",
                                                            "models.yml"]
    key_file = generated / ".engine_api_key"
    assert key_file.read_text() == seen["engine_key"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    for name in ("config.yaml", "models.yml"):
        text = (generated / name).read_text()
        assert "hf_canary_123" not in text and seen["engine_key"] not in text
    assert "hf_canary_123" not in out + err and seen["engine_key"] not in out + err


def test_recreated_engine_keeps_the_key_the_running_proxy_holds(project_dir, tmp_path):
    """`switch` in compose recreates only the engine: the proxy keeps its key, so must it."""
    generated = tmp_path / "generated"
    generated.mkdir()
    (generated / ".engine_api_key").write_text("sk-engine-from-the-first-start")
    record = tmp_path / "record.json"
    stand_in(tmp_path / "bin", "vllm", record)
    proc, out, err = run_entrypoint("entrypoint", project_dir, tmp_path,
                                    {"MODEL": "glm47-flash"})
    assert proc.returncode == 0, err
    assert json.loads(record.read_text())["engine_key"] == "sk-engine-from-the-first-start"
    assert "model_name: \"glm47-flash\"" in (generated / "config.yaml").read_text()


def test_proxy_entrypoint_execs_the_gated_proxy_with_keys_in_its_environment(project_dir, tmp_path):
    (project_dir / "secrets" / "LITELLM_MASTER_KEY").write_text("sk-master-canary\n")
    stand_in(tmp_path / "bin", "vllm", tmp_path / "engine.json")
    run_entrypoint("entrypoint", project_dir, tmp_path)
    record = tmp_path / "proxy.json"
    stand_in(tmp_path / "bin", "python3", record)  # the gate in front of LiteLLM: python3 -m
    proc, out, err = run_entrypoint("proxy-entrypoint", project_dir, tmp_path)
    assert proc.returncode == 0, err
    seen = json.loads(record.read_text())
    generated = tmp_path / "generated"
    assert seen["pid"] == proc.pid
    assert seen["argv"][1:] == ["-m", "vllm_mms.proxy.gateway", "--config", str(generated / "config.yaml"), "--host", "0.0.0.0",
                                "--port", "4000", "--workers", "1"]  # no Redis: one worker
    assert seen["master_key"] == "sk-master-canary"
    assert seen["engine_key"] == (generated / ".engine_api_key").read_text()
    assert seen["database_url"] is None  # LiteLLM's Prisma layer must not start
    assert "sk-master-canary" not in out + err


def test_proxy_entrypoint_runs_the_configured_workers(project_dir, tmp_path):
    (project_dir / "secrets" / "PROXY_REDIS_URL").write_text("redis://redis-host:6379/0\n")
    (project_dir / "vars.env").write_text("PROXY_WORKERS=4\n")
    stand_in(tmp_path / "bin", "vllm", tmp_path / "engine.json")
    run_entrypoint("entrypoint", project_dir, tmp_path)
    stand_in(tmp_path / "bin", "python3", tmp_path / "proxy.json")
    proc, out, err = run_entrypoint("proxy-entrypoint", project_dir, tmp_path)
    assert proc.returncode == 0, err
    assert json.loads((tmp_path / "proxy.json").read_text())["argv"][-2:] == ["--workers", "4"]


def test_proxy_entrypoint_refuses_workers_without_redis(project_dir, tmp_path):
    (project_dir / "vars.env").write_text("PROXY_WORKERS=4\n")
    stand_in(tmp_path / "bin", "vllm", tmp_path / "engine.json")
    run_entrypoint("entrypoint", project_dir, tmp_path)
    stand_in(tmp_path / "bin", "python3", tmp_path / "proxy.json")
    proc, out, err = run_entrypoint("proxy-entrypoint", project_dir, tmp_path)
    assert (proc.returncode, err) == (1, "error: PROXY_WORKERS=4 needs PROXY_REDIS_URL: each "
                                         "worker would count the per-key limits alone (a key "
                                         "could make 4x its requests); set PROXY_REDIS_URL or "
                                         "PROXY_WORKERS=1\n")
    assert not (tmp_path / "proxy.json").exists()


def test_proxy_entrypoint_before_render_is_one_clear_line(project_dir, tmp_path):
    proc, out, err = run_entrypoint("proxy-entrypoint", project_dir, tmp_path)
    assert proc.returncode == 1
    assert err == (f"error: {tmp_path / 'generated' / 'config.yaml'} is missing: the engine "
                   "container has not rendered yet\n")


def test_entrypoint_without_model(project_dir, tmp_path):
    proc, out, err = run_entrypoint("entrypoint", project_dir, tmp_path, {"MODEL": ""})
    assert (proc.returncode, err) == (1, "error: MODEL is not set for the container "
                                         "(./runMe.sh sets it)\n")


@pytest.mark.parametrize("served, expected", [("vllm_agent", 0), ("other", 1)])
def test_healthcheck_asks_the_engine_for_vllm_agent(project_dir, tmp_path, served, expected):
    stand_in(tmp_path / "bin", "vllm", tmp_path / "engine.json")
    run_entrypoint("entrypoint", project_dir, tmp_path)
    with RecordingUpstream() as upstream:
        upstream.model_id = served
        proc, out, err = run_entrypoint("healthcheck", project_dir, tmp_path,
                                        {"MMS_ENGINE_PORT": str(upstream.port)})
    assert proc.returncode == expected, err


def test_healthcheck_fails_before_render(project_dir, tmp_path):
    proc, out, err = run_entrypoint("healthcheck", project_dir, tmp_path)
    assert (proc.returncode, err) == (1, "unhealthy: generated config missing\n")
