"""Precedence: built-in < vars.env < models/MODEL.yml < environment, asserted exactly."""

from __future__ import annotations

import pytest

from vllm_mms.config.resolve import Project, resolve
from vllm_mms.config.schema import parse_size

MODEL = """\
description: test model
context_length: 8192
command: vllm serve org/m --max-model-len 8192
env: {}
litellm:
%s
"""


def write(project_dir, vars_env: str, litellm: str) -> Project:
    (project_dir / "vars.env").write_text(vars_env)
    (project_dir / "models" / "t.yml").write_text(MODEL % (litellm or "  {}"))
    return Project(project_dir)


def test_built_in_defaults_only(project_dir):
    resolved = resolve(write(project_dir, "", ""), "t", environ={})
    assert resolved.sampling == {}
    assert resolved.limits == {"max_parallel_requests": 8, "request_timeout": 600,
                               "num_retries": 0, "rpm": None}
    assert resolved.settings.LITELLM_MASTER_KEY == "sk-FAKE"
    assert (resolved.settings.LITELLM_PORT, resolved.settings.VLLM_PORT) == (4000, 8000)


def test_vars_env_beats_built_in(project_dir):
    project = write(project_dir, "LITELLM_TEMPERATURE=0.5\nMAX_PARALLEL_REQUESTS=3\n"
                                 "LITELLM_MAX_TOKENS=4K\nLITELLM_PORT=4100\n", "")
    resolved = resolve(project, "t", environ={})
    assert resolved.sampling == {"temperature": {"value": 0.5, "enforce": False},
                                 "max_tokens": {"value": 4096, "enforce": False}}
    assert resolved.limits["max_parallel_requests"] == 3
    assert resolved.settings.LITELLM_PORT == 4100


def test_model_file_beats_vars_env(project_dir):
    project = write(project_dir, "LITELLM_TEMPERATURE=0.5\nLITELLM_TOP_P=0.5\n"
                                 "MAX_PARALLEL_REQUESTS=3\n",
                    "  temperature: 0.9\n  max_parallel_requests: 5\n")
    resolved = resolve(project, "t", environ={})
    assert resolved.sampling == {"temperature": {"value": 0.9, "enforce": False},
                                 "top_p": {"value": 0.5, "enforce": False}}
    assert resolved.limits["max_parallel_requests"] == 5


def test_environment_beats_model_file_and_keeps_enforcement(project_dir):
    project = write(project_dir, "LITELLM_TEMPERATURE=0.5\n",
                    "  temperature: {value: 0.9, enforce: true}\n  top_k: 40\n"
                    "  max_parallel_requests: 5\n")
    resolved = resolve(project, "t", environ={"LITELLM_TEMPERATURE": "0.1",
                                               "LITELLM_TOP_K": "7",
                                               "MAX_PARALLEL_REQUESTS": "2"})
    assert resolved.sampling == {"temperature": {"value": 0.1, "enforce": True},
                                 "top_k": {"value": 7, "enforce": False}}
    assert resolved.limits["max_parallel_requests"] == 2


def test_enforced_and_default_parameters(project_dir):
    project = write(project_dir, "", "  temperature: {value: 0.3, enforce: true}\n"
                                     "  top_p: 0.8\n  repetition_penalty: 1.1\n"
                                     "  max_tokens: {value: 1K, enforce: true}\n")
    resolved = resolve(project, "t", environ={})
    assert resolved.sampling == {
        "temperature": {"value": 0.3, "enforce": True},
        "top_p": {"value": 0.8, "enforce": False},
        "repetition_penalty": {"value": 1.1, "enforce": False},
        "max_tokens": {"value": 1024, "enforce": True},
    }


def test_master_key_secret_beats_vars_env_and_environment_beats_both(project_dir):
    project = write(project_dir, "LITELLM_MASTER_KEY=sk-from-vars\n", "")
    (project_dir / "secrets" / "LITELLM_MASTER_KEY").write_text("sk-from-secret\n")
    assert resolve(project, "t", environ={}).settings.LITELLM_MASTER_KEY == "sk-from-secret"
    resolved = resolve(project, "t", environ={"LITELLM_MASTER_KEY": "sk-from-env"})
    assert resolved.settings.LITELLM_MASTER_KEY == "sk-from-env"


def test_empty_value_in_vars_env_means_unset(project_dir):
    resolved = resolve(write(project_dir, "LITELLM_KEY_RPM=\n", ""), "t", environ={})
    assert resolved.limits["rpm"] is None


@pytest.mark.parametrize("text, value", [
    ("32000", 32000), ("128K", 131072), ("1M", 1048576), ("32k", 32000), ("1m", 1000000),
    (" 4K ", 4096), (512, 512),
])
def test_sizes(text, value):
    assert parse_size(text) == value


def test_all_catalog_models_resolve_with_the_shipped_vars_env(project_dir):
    contexts = {}
    for path in sorted((project_dir / "models").glob("*.yml")):
        resolved = resolve(Project(project_dir), path.stem, environ={})
        assert resolved.model.description, path.name
        contexts[path.stem] = resolved.context_length
    assert contexts == {"glm47-flash": 131072, "qwen3-next-coder": 204800,
                        "smollm2-135m-cpu": 8192, "smollm2-135m-cpu-fast": 2048,
                        "minilm-l6-cpu": 256,
                        "step-3.5-flash": 65536,
                        "step-3.5-flash-hcsw": 8192}


def test_stop_sequences_default_and_enforced(project_dir):
    project = write(project_dir, "", '  stop: ["\\n\\n", "###"]\n')
    assert resolve(project, "t", environ={}).sampling == {
        "stop": {"value": ["\n\n", "###"], "enforce": False}}
    project = write(project_dir, "", '  stop: {value: ["\\n\\n"], enforce: true}\n')
    assert resolve(project, "t", environ={}).sampling == {
        "stop": {"value": ["\n\n"], "enforce": True}}


def test_the_command_is_split_once_per_resolve(project_dir, monkeypatch):
    """Resolved.argv is the one split of the command line: the engine argv, the memory fit,
    the replicas' GPU groups and pull's hub id all use it."""
    from vllm_mms.config import schema
    from vllm_mms.engine import fit, serve
    from vllm_mms.stack import replicas

    calls = []
    split = schema.parse_command
    monkeypatch.setattr(schema, "parse_command", lambda line: calls.append(line) or split(line))
    project = write(project_dir, "REPLICAS=2\nREPLICA_GPUS=0 1\n", "")
    resolved = resolve(project, "t", environ={})
    assert resolved.argv == ["vllm", "serve", "org/m", "--max-model-len", "8192"]
    serve.engine_argv(resolved, host="h", port=1)
    serve.shared_utilization(resolved, 2)
    fit.plan_from_command(resolved, None, None, None)
    replicas.gpu_groups(resolved)
    assert (resolved.hf_model, calls) == ("org/m", ["vllm serve org/m --max-model-len 8192"])
