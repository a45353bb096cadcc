"""PROXY_WORKERS: the derived default, the Redis requirement (per-key limits are counted per
process otherwise), and the exact argv from the setting to uvicorn."""

from __future__ import annotations

import os

import pytest

from vllm_mms.config import schema
from vllm_mms.config.resolve import Project, resolve
from vllm_mms.errors import UserError
from vllm_mms.proxy import gateway
from vllm_mms.stack import local

REDIS = "redis://127.0.0.1:6379/0"


def settings(**values: str) -> schema.Settings:
    return schema.validate_settings(values, "test")


@pytest.mark.parametrize("values, cores, workers", [
    ({}, 16, 1),                                       # no Redis: one worker, whatever the cores
    ({"PROXY_REDIS_URL": REDIS}, 1, 1),
    ({"PROXY_REDIS_URL": REDIS}, 2, 1),
    ({"PROXY_REDIS_URL": REDIS}, 7, 3),                # half the cores ...
    ({"PROXY_REDIS_URL": REDIS}, 20, 8),               # ... at most 8
    ({"PROXY_REDIS_URL": REDIS, "PROXY_WORKERS": "12"}, 2, 12),  # explicit beats derived
    ({"PROXY_WORKERS": "1"}, 16, 1),
])
def test_workers_from_settings_and_cores(values, cores, workers):
    assert schema.proxy_workers(settings(**values), cores) == workers


def test_several_workers_without_redis_is_an_error_naming_both_settings():
    with pytest.raises(UserError) as caught:
        schema.proxy_workers(settings(PROXY_WORKERS="2"), 16)
    assert caught.value.message == (
        "PROXY_WORKERS=2 needs PROXY_REDIS_URL: each worker would count the per-key limits "
        "alone (a key could make 2x its requests); set PROXY_REDIS_URL or PROXY_WORKERS=1")


@pytest.mark.parametrize("value, message", [
    ("0", "vars.env: PROXY_WORKERS: Input should be greater than or equal to 1"),
    ("33", "vars.env: PROXY_WORKERS: Input should be less than or equal to 32"),
    ("two", "vars.env: PROXY_WORKERS: Input should be a valid integer, unable to parse string "
            "as an integer"),
])
def test_bad_worker_counts_are_refused_with_the_setting_named(project_dir, value, message):
    (project_dir / "vars.env").write_text(f"PROXY_WORKERS={value}\n")
    with pytest.raises(UserError) as caught:
        resolve(Project(project_dir), "smollm2-135m-cpu", environ={})
    assert caught.value.message == message


def test_resolved_workers_use_the_cores_this_process_may_run_on(project_dir, monkeypatch):
    (project_dir / "secrets" / "PROXY_REDIS_URL").write_text(REDIS + "\n")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    resolved = resolve(Project(project_dir), "smollm2-135m-cpu", environ={})
    assert (resolved.settings.PROXY_WORKERS, resolved.proxy_workers) == (None, 3)
    resolved = resolve(Project(project_dir), "smollm2-135m-cpu", environ={"PROXY_WORKERS": "2"})
    assert resolved.proxy_workers == 2


def test_local_proxy_argv_carries_the_workers(project_dir, tmp_path, monkeypatch):
    (project_dir / "secrets" / "PROXY_REDIS_URL").write_text(REDIS + "\n")
    resolved = resolve(Project(project_dir), "smollm2-135m-cpu", environ={"PROXY_WORKERS": "2"})
    seen = {}
    monkeypatch.setattr(local, "spawn", lambda label, argv, env, logs: seen.update(
        label=label, argv=argv, redis=env.get("PROXY_REDIS_URL")))
    local.proxy_process(resolved, tmp_path / "generated", "sk-engine", tmp_path / "logs", 4123)
    assert seen["label"] == "proxy"
    assert seen["argv"][1:] == ["-m", "vllm_mms.proxy.gateway", "--config",
                                str(tmp_path / "generated" / "config.yaml"), "--host",
                                "127.0.0.1", "--port", "4123", "--workers", "2"]
    assert seen["redis"] == REDIS  # the workers reach the shared counters


def test_local_start_refuses_several_workers_without_redis_before_the_engine(project_dir,
                                                                            monkeypatch):
    def no_engine(name):
        raise AssertionError("the engine environment was prepared before the check")

    monkeypatch.setattr(local.bootstrap, "ensure_env", no_engine)
    with pytest.raises(UserError) as caught:
        local.start_local(Project(project_dir), "smollm2-135m-cpu", detach=True,
                          environ={"PROXY_WORKERS": "3"})
    assert caught.value.message.startswith("PROXY_WORKERS=3 needs PROXY_REDIS_URL: ")


@pytest.fixture
def uvicorn_run(monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    for name in ("CONFIG_FILE_PATH", "NUM_WORKERS", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_gateway_one_worker(uvicorn_run, monkeypatch):
    monkeypatch.setenv("MMS_PROXY_LOG_LEVEL", "warning")
    gateway.main(["--config", "/x/config.yaml", "--port", "4001"])
    assert uvicorn_run == [(("vllm_mms.proxy.gateway:build_app",), {
        "factory": True, "host": "127.0.0.1", "port": 4001, "workers": 1,
        "server_header": False, "log_level": "warning"})]
    assert os.environ["CONFIG_FILE_PATH"] == "/x/config.yaml"
    assert "NUM_WORKERS" not in os.environ and "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_gateway_several_workers_share_one_metrics_directory(uvicorn_run, monkeypatch):
    monkeypatch.setenv("MMS_PROXY_LOG_LEVEL", "warning")
    gateway.main(["--config", "/x/config.yaml", "--host", "0.0.0.0", "--workers", "3"])
    assert uvicorn_run == [(("vllm_mms.proxy.gateway:build_app",), {
        "factory": True, "host": "0.0.0.0", "port": 4000, "workers": 3,
        "server_header": False, "log_level": "warning"})]
    assert os.environ["NUM_WORKERS"] == "3"
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    assert os.path.basename(metrics_dir).startswith("mms-prometheus-")
    assert os.listdir(metrics_dir) == []  # fresh: no samples of an earlier start
    os.rmdir(metrics_dir)


def test_gateway_keeps_a_given_metrics_directory(uvicorn_run, monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    gateway.main(["--config", "c.yaml", "--workers", "2"])
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)


def test_gateway_refuses_zero_workers(uvicorn_run, capsys):
    with pytest.raises(SystemExit) as caught:
        gateway.main(["--config", "c.yaml", "--workers", "0"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m vllm_mms.proxy.gateway: error: --workers must be at least 1")
    assert uvicorn_run == []
