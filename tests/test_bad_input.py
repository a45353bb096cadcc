"""Every bad input: non-zero exit, one clear line naming the file and the line or field,
never a traceback, never a secret's value."""

from __future__ import annotations

import pytest

from vllm_mms.cli import usage_text

from .conftest import run_cli

AVAILABLE = ("glm47-flash, minilm-l6-cpu, qwen3-next-coder, smollm2-135m-cpu, "
             "smollm2-135m-cpu-fast, step-3.5-flash, step-3.5-flash-hcsw")
SECRET = "sk-canary-never-shown"


def model(body: str) -> dict[str, bytes]:
    return {"models/bad.yml": body.encode()}


MODEL_CASES = [
    ("malformed yaml", model("description: x\ncommand: [unclosed\n"),
     "models/bad.yml: line 3: invalid YAML: expected ',' or ']', but got '<stream end>'"),
    ("wrong type", model("description: x\ncommand: vllm serve m\nlitellm:\n  temperature: hot\n"),
     "models/bad.yml: litellm.temperature: Input should be a valid number, unable to parse "
     "string as a number"),
    ("out of range", model("description: x\ncommand: vllm serve m\nlitellm:\n  temperature: 5\n"),
     "models/bad.yml: litellm.temperature: Input should be less than or equal to 2"),
    ("enforce must be true",
     model("description: x\ncommand: vllm serve m\nlitellm:\n  top_p: {value: 0.5, enforce: no}\n"),
     "models/bad.yml: litellm.top_p.enforce: Input should be True"),
    ("bad size", model("description: x\ncommand: vllm serve m\nlitellm:\n  max_tokens: lots\n"),
     "models/bad.yml: litellm.max_tokens: Input should be a valid integer, unable to parse "
     "string as an integer"),
    ("missing command", model("description: x\nenv: {}\n"),
     "models/bad.yml: command: required field is missing"),
    ("not vllm serve", model("description: x\ncommand: python -m http.server\n"),
     "models/bad.yml: command: must start with 'vllm serve', got 'python -m'"),
    ("no model id", model("description: x\ncommand: vllm serve --port 1\n"),
     "models/bad.yml: command: 'vllm serve' needs the model id right after it"),
    ("shell operator", model("description: x\ncommand: vllm serve m; rm -rf /\n"),
     "models/bad.yml: command: ';' is shell syntax; the command is run without a shell"),
    ("command substitution", model("description: x\ncommand: vllm serve m `id`\n"),
     "models/bad.yml: command: '`' is shell syntax; the command is run without a shell"),
    ("unbalanced quote", model("description: x\ncommand: vllm serve m \"open\n"),
     "models/bad.yml: command: cannot split the line: No closing quotation"),
    ("unknown section", model("description: x\ncommand: vllm serve m\nextras: 1\n"),
     "models/bad.yml: extras: unknown field"),
    ("unknown litellm field", model("description: x\ncommand: vllm serve m\nlitellm:\n  temprature: 1\n"),
     "models/bad.yml: litellm.temprature: unknown field"),
    ("duplicate key", model("description: x\ncommand: vllm serve m\ncommand: vllm serve n\n"),
     "models/bad.yml: line 3: duplicate key 'command' (first defined on line 2)"),
    ("binary file", {"models/bad.yml": b"\xff\xfe\x00\x01binary"},
     "models/bad.yml: not UTF-8 text"),
    ("not a mapping", model("- a\n- b\n"),
     "models/bad.yml: expected a mapping with 'description', 'command', 'env' and 'litellm', "
     "got list"),
    ("empty file", model(""),
     "models/bad.yml: expected a mapping with 'description', 'command', 'env' and 'litellm', "
     "got NoneType"),
    ("bad env name", model("description: x\ncommand: vllm serve m\nenv:\n  BAD NAME: 1\n"),
     "models/bad.yml: env: Value error, 'BAD NAME' is not a valid environment variable name"),
    ("context mismatch",
     model("description: x\ncontext_length: 4096\ncommand: vllm serve m --max-model-len 8192\n"),
     "models/bad.yml: context_length: 4096 disagrees with --max-model-len 8192 in command"),
]


@pytest.mark.parametrize("label, files, message", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_model_files(label, files, message, project_dir, tmp_path):
    for rel, content in files.items():
        (project_dir / rel).write_bytes(content)
    result = run_cli("render", "bad", "--out", str(tmp_path / "out"), project=project_dir)
    assert (result.code, result.err, result.out) == (1, f"error: {message}\n", "")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, message", [
    ("nope", f"unknown model 'nope'; available: {AVAILABLE}"),
    ("../models/glm47-flash", "invalid model name '../models/glm47-flash': use lower-case "
     f"letters, digits, '.', '-' and '_' only (available: {AVAILABLE})"),
    ("a/b", f"invalid model name 'a/b': use lower-case letters, digits, '.', '-' and '_' only "
     f"(available: {AVAILABLE})"),
    ("x;rm -rf", "invalid model name 'x;rm -rf': use lower-case letters, digits, '.', '-' and "
     f"'_' only (available: {AVAILABLE})"),
    ("$(id)", f"invalid model name '$(id)': use lower-case letters, digits, '.', '-' and '_' "
     f"only (available: {AVAILABLE})"),
    ("GLM47-FLASH", f"invalid model name 'GLM47-FLASH': use lower-case letters, digits, '.', "
     f"'-' and '_' only (available: {AVAILABLE})"),
])
def test_bad_model_names_exit_2(name, message, project_dir):
    result = run_cli("render", name, project=project_dir)
    assert (result.code, result.err) == (2, f"error: {message}\n")


def test_unknown_model_for_compose_exits_2_before_docker(project_dir):
    result = run_cli("nope", project=project_dir)
    assert (result.code, result.err) == (2, f"error: unknown model 'nope'; available: {AVAILABLE}\n")
    result = run_cli(project=project_dir, env={"MODEL": "../x"})
    assert (result.code, result.err) == (
        2, "error: invalid model name '../x': use lower-case letters, digits, '.', '-' and '_' "
           f"only (available: {AVAILABLE})\n")


@pytest.mark.parametrize("vars_env, message", [
    ("this is bad\n", "vars.env: line 1: cannot parse 'this is bad': expected NAME=VALUE"),
    ("A_OK=\nLITELLM_TOP_P=0.5\nB=\"open\n", "vars.env: line 3: cannot parse 'B': expected NAME=VALUE"),
    ("LITELLM_TEMPRATURE=1\n", "vars.env: unknown setting 'LITELLM_TEMPRATURE' (settings: see "
     "CONFIGURATION.md; engine variables must start with one of NCCL_, GLOO_, UCX_, OMPI_MCA_, "
     "VLLM_, HF_, CUDA_, TORCH_, OMP_, RAY_ or be one of TP_SOCKET_IFNAME, MASTER_ADDR)"),
    ("MAX_PARALLEL_REQUESTS=many\n", "vars.env: MAX_PARALLEL_REQUESTS: Input should be a valid "
     "integer, unable to parse string as an integer"),
    ("LITELLM_MAX_TOKENS=-5\n", "vars.env: LITELLM_MAX_TOKENS: Input should be greater than 0"),
    ("LITELLM_MAX_TOKENS=5G\n", "vars.env: LITELLM_MAX_TOKENS: Input should be a valid integer, "
     "unable to parse string as an integer"),
    ("LITELLM_PORT=70000\n", "vars.env: LITELLM_PORT: Input should be less than 65536"),
])
def test_bad_vars_env(vars_env, message, project_dir):
    (project_dir / "vars.env").write_text(vars_env)
    result = run_cli("render", "glm47-flash", project=project_dir)
    assert (result.code, result.err) == (1, f"error: {message}\n")


def test_vars_env_binary(project_dir):
    (project_dir / "vars.env").write_bytes(b"\xff\xfe\x00")
    result = run_cli("render", "glm47-flash", project=project_dir)
    assert (result.code, result.err) == (1, "error: vars.env: not UTF-8 text\n")


@pytest.mark.parametrize("name, content, message", [
    ("HF_TOKEN", b"", "secrets/HF_TOKEN: the file is empty"),
    ("HF_TOKEN", b"\n", "secrets/HF_TOKEN: the file is empty"),
    ("HF_TOKEN", b"\x00\xff\xfe" + SECRET.encode(), "secrets/HF_TOKEN: binary content (not UTF-8 text)"),
    ("HF_TOKEN", SECRET.encode() + b"\nsecond line\n",
     "secrets/HF_TOKEN: contains control characters or several lines"),
    ("bad-name", SECRET.encode(), "secrets/bad-name: the file name must be an environment "
     "variable name (letters, digits, '_')"),
])
def test_bad_secret_files(name, content, message, project_dir):
    (project_dir / "secrets" / name).write_bytes(content)
    result = run_cli("render", "glm47-flash", project=project_dir)
    assert (result.code, result.err) == (1, f"error: {message}\n")
    assert SECRET not in result.out + result.err


def test_environment_override_out_of_range(project_dir):
    result = run_cli("render", "glm47-flash", project=project_dir,
                     env={"LITELLM_TEMPERATURE": "9"})
    assert (result.code, result.err) == (
        1, "error: environment: LITELLM_TEMPERATURE: Input should be less than or equal to 2\n")


@pytest.mark.parametrize("args, error", [
    (["render"], "./runMe.sh render: error: the following arguments are required: model"),
    (["render", "glm47-flash", "--bogus"], "./runMe.sh: error: unrecognized arguments: --bogus"),
    (["glm47-flash", "--bogus"], "./runMe.sh: error: unrecognized arguments: --bogus"),
])
def test_bad_arguments_exit_2_with_usage(args, error, project_dir):
    result = run_cli(*args, project=project_dir)
    assert (result.code, result.out) == (2, "")
    # argparse's own usage line and error, then the whole help: nothing else
    argparse_usage, found, rest = result.err.partition(f"\n{error}\n")
    assert found, result.err
    assert argparse_usage.startswith("usage: ./runMe.sh")
    assert rest == usage_text()
