"""The exact engine argv and environment for every catalog model (compose and local mode)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vllm_mms.config.resolve import Project, resolve
from vllm_mms.engine import serve

from .conftest import ROOT, run_cli

TAIL = ["--host", "0.0.0.0", "--port", "8000", "--served-model-name", "vllm_agent"]

EXPECTED_ARGV = {
    "glm47-flash": [
        "vllm", "serve", "zai-org/GLM-4.7-Flash", "--tool-call-parser", "glm47",
        "--reasoning-parser", "glm45", "--enable-auto-tool-choice", "--speculative-config",
        '{"method": "mtp", "num_speculative_tokens": 1}', "--max-model-len", "131072",
        "--max-num-seqs", "8", "--gpu-memory-utilization", "0.80", *TAIL],
    "step-3.5-flash": [
        "vllm", "serve", "stepfun-ai/Step-3.5-Flash-FP8", "--tool-call-parser", "step3p5",
        "--reasoning-parser", "step3p5", "--enable-auto-tool-choice", "--trust-remote-code",
        "--tensor-parallel-size", "2", "--distributed-executor-backend", "ray",
        "--kv-cache-dtype", "fp8", "--no-enable-prefix-caching", "--max-model-len", "65536",
        "--max-num-seqs", "8", "--gpu-memory-utilization", "0.82", *TAIL],
    "step-3.5-flash-hcsw": [
        "vllm", "serve", "stepfun-ai/Step-3.5-Flash-FP8", "--tool-call-parser", "step3p5",
        "--reasoning-parser", "step3p5", "--enable-auto-tool-choice", "--trust-remote-code",
        "--tensor-parallel-size", "2", "--distributed-executor-backend", "ray",
        "--kv-cache-dtype", "fp8", "--no-enable-prefix-caching", "--max-model-len", "8192",
        "--max-num-seqs", "64", "--gpu-memory-utilization", "0.82", *TAIL],
    "qwen3-next-coder": [
        "vllm", "serve", "Qwen/Qwen3-Coder-Next-FP8", "--tool-call-parser", "qwen3_coder",
        "--enable-auto-tool-choice", "--kv-cache-dtype", "fp8", "--max-model-len", "204800",
        "--max-num-seqs", "4", "--gpu-memory-utilization", "0.80", *TAIL],
    "smollm2-135m-cpu": [
        "vllm", "serve", "HuggingFaceTB/SmolLM2-135M-Instruct", "--enable-auto-tool-choice",
        "--tool-call-parser", "hermes", "--dtype", "bfloat16", "--max-model-len", "8192",
        "--max-num-seqs", "8", "--gpu-memory-utilization", "0.3", "--enforce-eager", *TAIL],
    "minilm-l6-cpu": [
        "vllm", "serve", "sentence-transformers/all-MiniLM-L6-v2", "--runner", "pooling",
        "--dtype", "float32", "--max-model-len", "256", "--max-num-seqs", "8",
        "--gpu-memory-utilization", "0.15", "--enforce-eager", *TAIL],
    "smollm2-135m-cpu-fast": [
        "vllm", "serve", "HuggingFaceTB/SmolLM2-135M-Instruct", "--enable-auto-tool-choice",
        "--tool-call-parser", "hermes", "--dtype", "bfloat16", "--max-model-len", "2048",
        "--max-num-seqs", "4", "--gpu-memory-utilization", "0.2", "--enforce-eager", *TAIL],
}


def test_every_catalog_file_is_covered():
    assert sorted(p.stem for p in (ROOT / "models").glob("*.yml")) == sorted(EXPECTED_ARGV)


@pytest.mark.parametrize("name", sorted(EXPECTED_ARGV))
def test_exact_container_argv(name, project_dir):
    resolved = resolve(Project(project_dir), name, environ={})
    assert serve.engine_argv(resolved, host="0.0.0.0", port=8000) == EXPECTED_ARGV[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_ARGV))
def test_render_prints_the_argv_and_only_env_names(name, project_dir, tmp_path):
    (project_dir / "secrets" / "HF_TOKEN").write_text("hf_canary_value_123\n")
    result = run_cli("render", name, "--out", str(tmp_path / "gen"), project=project_dir)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    argv_line = lines[lines.index("engine argv (exec'd by the container entrypoint):") + 1]
    assert json.loads(argv_line.strip()) == EXPECTED_ARGV[name]
    env_line = lines[lines.index("engine environment (names only; values stay secret):") + 1]
    expected_env = {"glm47-flash": [], "step-3.5-flash": [], "step-3.5-flash-hcsw": [],
                    "qwen3-next-coder": [], "smollm2-135m-cpu": ["VLLM_CPU_OMP_THREADS_BIND"],
                    "smollm2-135m-cpu-fast": ["VLLM_CPU_OMP_THREADS_BIND"],
                    "minilm-l6-cpu": ["VLLM_CPU_OMP_THREADS_BIND"]}
    assert env_line.split() == sorted(["HF_TOKEN", "VLLM_API_KEY", *expected_env[name]])
    assert "hf_canary_value_123" not in result.out + result.err
    for path in (tmp_path / "gen").iterdir():
        assert "hf_canary_value_123" not in path.read_text()


def test_agent_models_start_with_a_tool_call_parser():
    """Every chat model (not the embedding one, which has no chat at all)."""
    chat = {name: argv for name, argv in EXPECTED_ARGV.items() if not serve.is_pooling(argv)}
    assert sorted(set(EXPECTED_ARGV) - set(chat)) == ["minilm-l6-cpu"]
    for name, argv in chat.items():
        assert "--enable-auto-tool-choice" in argv, name
        assert argv[argv.index("--tool-call-parser") + 1], name


def test_local_cpu_argv_uses_the_api_server_module_and_the_prepared_weights(project_dir):
    resolved = resolve(Project(project_dir), "smollm2-135m-cpu", environ={})
    argv = serve.engine_argv(resolved, host="127.0.0.1", port=8123,
                              cpu_python="/venv/bin/python", weights=Path("/cache/smollm2"))
    assert argv == [
        "/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model",
        "/cache/smollm2", "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--dtype", "bfloat16", "--max-model-len", "8192", "--max-num-seqs", "8",
        "--gpu-memory-utilization", "0.3", "--enforce-eager", "--host", "127.0.0.1",
        "--port", "8123", "--served-model-name", "vllm_agent"]


@pytest.mark.parametrize("line, expected_tail", [
    ("vllm serve m --port 9 --host 1.2.3.4 --dtype auto",
     ["--dtype", "auto"]),
    ("vllm serve m --port=9 --api-key=secret --dtype auto",
     ["--dtype", "auto"]),
    ("vllm serve m --served-model-name a b c --api-key k --dtype auto",
     ["--dtype", "auto"]),
    ("vllm serve m --dtype auto --served-model-name=x",
     ["--dtype", "auto"]),
])
def test_dynamic_flags_replace_values_already_in_the_line(line, expected_tail, project_dir):
    (project_dir / "models" / "custom.yml").write_text(
        f"description: d\ncommand: {line}\nenv: {{}}\nlitellm: {{}}\n")
    resolved = resolve(Project(project_dir), "custom", environ={})
    assert serve.engine_argv(resolved, host="0.0.0.0", port=8000) == [
        "vllm", "serve", "m", *expected_tail, *TAIL]


def test_engine_environment_layers_and_secrets(project_dir):
    (project_dir / "vars.env").write_text("NCCL_SOCKET_IFNAME=eth0\nNCCL_IB_DISABLE=1\n")
    (project_dir / "models" / "custom.yml").write_text(
        "description: d\ncommand: vllm serve m\nenv:\n  NCCL_IB_DISABLE: 0\n  VLLM_X: true\n")
    (project_dir / "secrets" / "HF_TOKEN").write_text("hf_abc\n")
    (project_dir / "secrets" / "VLLM_API_KEY").write_text("internal-key\r\n")
    resolved = resolve(Project(project_dir), "custom",
                       environ={"NCCL_SOCKET_IFNAME": "ib0", "UNRELATED": "1"})
    key = serve.internal_api_key(resolved)
    env = serve.engine_environment(resolved, key, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "NCCL_SOCKET_IFNAME": "ib0", "NCCL_IB_DISABLE": "0",
                   "VLLM_X": "1", "HF_TOKEN": "hf_abc", "VLLM_API_KEY": "internal-key"}


def test_internal_key_is_fresh_per_start_without_a_secret(project_dir):
    resolved = resolve(Project(project_dir), "glm47-flash", environ={})
    first, second = serve.internal_api_key(resolved), serve.internal_api_key(resolved)
    assert first != second and first.startswith("sk-engine-") and len(first) > 30
