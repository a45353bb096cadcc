"""The rendered LiteLLM config: exact content, and accepted by LiteLLM's own loader."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from vllm_mms.config.resolve import Project, resolve
from vllm_mms.stack.render import COMPOSE_API_BASE, render

from .conftest import run_cli


def test_rendered_config_for_glm(project_dir, tmp_path):
    project = Project(project_dir)
    resolved = resolve(project, "glm47-flash", environ={})
    written = render(project, resolved, tmp_path)
    config = yaml.safe_load(written["config.yaml"].read_text())
    assert [m["model_name"] for m in config["model_list"]] == [
        "glm47-flash", "vllm_agent", "glm-4.7-flash"]
    for entry in config["model_list"]:
        assert entry["litellm_params"] == {
            "model": "hosted_vllm/vllm_agent", "api_base": "http://vllm-node:8000/v1",
            "api_key": "os.environ/VLLM_API_KEY", "timeout": 600, "stream_timeout": 600,
            "max_retries": 0, "use_chat_completions_api": True}
        assert entry["model_info"] == {"catalog_name": "glm47-flash", "replica": 1,
                                       "input_cost_per_token": 0, "output_cost_per_token": 0,
                                       "max_input_tokens": 131072, "max_output_tokens": 32768}
    assert config["litellm_settings"] == {
        "drop_params": True, "request_timeout": 600, "num_retries": 0,
        "callbacks": ["vllm_mms.proxy.hooks.proxy_handler", "prometheus"]}
    assert config["router_settings"] == {"routing_strategy": "simple-shuffle", "num_retries": 0,
                                         "timeout": 600, "allowed_fails": 0, "cooldown_time": 10,
                                         "allowed_fails_policy": {
                                             "NotFoundErrorAllowedFails": 1000000,
                                             "BadRequestErrorAllowedFails": 1000000}}
    assert config["general_settings"] == {
        "master_key": "os.environ/LITELLM_MASTER_KEY",
        "custom_auth": "vllm_mms.proxy.hooks.custom_auth"}
    models = yaml.safe_load(written["models.yml"].read_text())
    assert models["sampling"] == {"temperature": {"value": 0.7, "enforce": False},
                                  "top_p": {"value": 1.0, "enforce": False},
                                  "max_tokens": {"value": 32768, "enforce": False}}
    assert models["max_output_tokens"] == 32768
    assert models["limits"] == {"max_parallel_requests": 8, "request_timeout": 600,
                                "num_retries": 0, "rpm": None}
    assert models["api_base"] == COMPOSE_API_BASE
    assert models["api_bases"] == [COMPOSE_API_BASE]
    assert models["priority_scheduling"] is False


@pytest.mark.parametrize("flag, expected", [
    ("--scheduling-policy priority", True), ("--scheduling-policy=priority", True),
    ("--scheduling-policy fcfs", False)])
def test_priority_scheduling_follows_the_engine_flag(project_dir, tmp_path, flag, expected):
    model = project_dir / "models" / "glm47-flash.yml"
    model.write_text(model.read_text().replace("--max-num-seqs 8", f"--max-num-seqs 8 {flag}"))
    project = Project(project_dir)
    written = render(project, resolve(project, "glm47-flash"), tmp_path)
    assert yaml.safe_load(written["models.yml"].read_text())["priority_scheduling"] is expected


def test_proxy_metrics_can_be_turned_off(project_dir, tmp_path):
    project = Project(project_dir)
    resolved = resolve(project, "glm47-flash", environ={"PROXY_METRICS": "false"})
    config = yaml.safe_load(render(project, resolved, tmp_path)["config.yaml"].read_text())
    assert config["litellm_settings"]["callbacks"] == ["vllm_mms.proxy.hooks.proxy_handler"]


def test_unresolved_placeholder_is_an_error(project_dir, tmp_path):
    template = project_dir / "litellm_config.template.yaml"
    template.write_text(template.read_text() + "\nextra: {{ not_a_variable }}\n")
    result = run_cli("render", "glm47-flash", "--out", str(tmp_path), project=project_dir)
    assert result.code == 1
    assert result.err == ("error: litellm_config.template.yaml: unresolved placeholder: "
                          "'not_a_variable' is undefined\n")
    assert not (tmp_path / "config.yaml").exists()


def test_secrets_never_reach_generated_files(project_dir, tmp_path):
    (project_dir / "secrets" / "LITELLM_MASTER_KEY").write_text("sk-canary-master\n")
    (project_dir / "secrets" / "VLLM_API_KEY").write_text("sk-canary-engine\n")
    out = tmp_path / "gen"
    result = run_cli("render", "smollm2-135m-cpu", "--out", str(out), project=project_dir)
    assert result.code == 0, result.err
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "models.yml"]
    for path in out.iterdir():
        text = path.read_text()
        assert "sk-canary" not in text, path.name
    assert "sk-canary" not in result.out + result.err


@pytest.mark.parametrize("name", ["glm47-flash", "step-3.5-flash", "step-3.5-flash-hcsw",
                                  "qwen3-next-coder", "smollm2-135m-cpu"])
def test_litellm_own_loader_accepts_the_rendered_config(name, project_dir, tmp_path, monkeypatch):
    from litellm.proxy.proxy_server import ProxyConfig
    from litellm.router import Router

    project = Project(project_dir)
    written = render(project, resolve(project, name, environ={}), tmp_path)
    monkeypatch.setenv("VLLM_API_KEY", "sk-test-engine")
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-test-master")
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    loaded = asyncio.run(ProxyConfig().get_config(config_file_path=str(written["config.yaml"])))
    router = Router(model_list=loaded["model_list"])
    names = sorted(router.get_model_names())
    assert names == sorted(yaml.safe_load(written["models.yml"].read_text())["model_names"])
    deployment = router.get_model_list()[0]["litellm_params"]
    assert deployment["model"] == "hosted_vllm/vllm_agent"
    assert deployment["api_base"] == "http://vllm-node:8000/v1"
