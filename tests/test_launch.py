"""The exact configuration each launcher generates, and its refusals (no proxy, no client,
context too small). The clients themselves run in tests/e2e/test_agents.py."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from vllm_mms.errors import UserError
from vllm_mms.ops.agents import Target, check_context, client_setup, clients_dir

from .conftest import ROOT, run_cli
from .e2e.upstream import RecordingUpstream

TARGET = Target(base_url="http://127.0.0.1:4000", key="sk-test", model="qwen3-next-coder",
                context=204800, max_output=32768)


def test_claude_environment(tmp_path):
    env, args = client_setup("claude", TARGET, tmp_path)
    assert args == []
    assert env == {
        "MMS_PROXY_KEY": "sk-test",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:4000",
        "ANTHROPIC_AUTH_TOKEN": "sk-test",
        "ANTHROPIC_API_KEY": "",
        "ANTHROPIC_MODEL": "qwen3-next-coder",
        "ANTHROPIC_DEFAULT_OPUS_MODEL": "qwen3-next-coder",
        "ANTHROPIC_DEFAULT_SONNET_MODEL": "qwen3-next-coder",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": "qwen3-next-coder",
        "ANTHROPIC_SMALL_FAST_MODEL": "qwen3-next-coder",
        "CLAUDE_CODE_SUBAGENT_MODEL": "qwen3-next-coder",
        "CLAUDE_CONFIG_DIR": str(tmp_path),
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "32768",
        "CLAUDE_CODE_MAX_CONTEXT_TOKENS": "204800",
        "CLAUDE_CODE_AUTO_COMPACT_WINDOW": "204800",
    }
    assert list(tmp_path.iterdir()) == []


def test_codex_config(tmp_path):
    env, args = client_setup("codex", TARGET, tmp_path)
    assert env == {"MMS_PROXY_KEY": "sk-test", "CODEX_HOME": str(tmp_path)}
    assert (tmp_path / "config.toml").read_text() == (
        'model = "qwen3-next-coder"\n'
        'model_provider = "mms"\n'
        "model_context_window = 204800\n"
        'web_search = "disabled"\n'
        "\n"
        "[model_providers.mms]\n"
        'name = "vLLM Multi-Model Server"\n'
        'base_url = "http://127.0.0.1:4000/v1"\n'
        'env_key = "MMS_PROXY_KEY"\n'
        'wire_api = "responses"\n')
    assert "sk-test" not in (tmp_path / "config.toml").read_text()


def test_opencode_config(tmp_path):
    env, args = client_setup("opencode", TARGET, tmp_path)
    assert env == {"MMS_PROXY_KEY": "sk-test",
                   "OPENCODE_CONFIG": str(tmp_path / "opencode.json"),
                   "XDG_CONFIG_HOME": str(tmp_path / "config"),
                   "XDG_DATA_HOME": str(tmp_path / "data"),
                   "XDG_STATE_HOME": str(tmp_path / "state"),
                   "XDG_CACHE_HOME": str(tmp_path / "cache"),
                   "OPENCODE_DISABLE_AUTOUPDATE": "1"}
    assert json.loads((tmp_path / "opencode.json").read_text()) == {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "model": "mms/qwen3-next-coder",
        "provider": {"mms": {
            "npm": "@ai-sdk/openai-compatible",
            "name": "vLLM Multi-Model Server",
            "options": {"baseURL": "http://127.0.0.1:4000/v1", "apiKey": "{env:MMS_PROXY_KEY}"},
            "models": {"qwen3-next-coder": {"name": "qwen3-next-coder",
                                            "limit": {"context": 204800, "output": 32768}}},
        }},
    }


def test_small_context_is_refused_unless_forced():
    small = Target("http://x", "k", "smollm2-135m-cpu", 8192, 2048)
    with pytest.raises(UserError) as caught:
        check_context("claude", small, force=False)
    assert caught.value.message == (
        "smollm2-135m-cpu has a 8192-token context; claude needs at least 32768 (its prompt "
        "and tools alone are large). Use a model with a longer context, or --force to try anyway")
    check_context("claude", small, force=True)
    check_context("codex", TARGET, force=False)


def fake_npm(bin_dir: Path, record: Path) -> None:
    """A stand-in `npm` that records its argv and directory and "installs" a claude that
    records how it was started (argv, the proxy it was pointed at)."""
    npm = bin_dir / "npm"
    npm.write_text(f"""#!{sys.executable}
import json, os, sys
with open({str(record)!r}, "a") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
client = os.path.join("node_modules", ".bin", "claude")
os.makedirs(os.path.dirname(client))
with open(client, "w") as script:
    script.write("#!{sys.executable}\\nimport json, os, sys\\n"
                 "json.dump({{'argv': sys.argv[1:], 'base': os.environ['ANTHROPIC_BASE_URL']}}, "
                 "open({str(record.with_suffix('.client'))!r}, 'w'))\\n")
os.chmod(client, 0o755)
""")
    npm.chmod(0o755)


def test_launch_without_a_proxy_is_one_clear_line_and_installs_nothing(tmp_path, project_dir):
    port = 9  # discard port: nothing listens
    record = tmp_path / "npm.jsonl"
    fake_npm(tmp_path, record)
    env = {"MMS_PROXY_URL": f"http://127.0.0.1:{port}", "PATH": f"{tmp_path}:/usr/bin:/bin",
           "MMS_CACHE_DIR": str(tmp_path / "cache")}
    result = run_cli("launch", "codex", project=project_dir, env=env)
    # The proxy is asked first: no client is installed for a stack that is not there.
    assert (result.code, result.err) == (
        1, f"error: no proxy answers at http://127.0.0.1:{port}: start one with ./runMe.sh "
           "--local (or MODEL=NAME ./runMe.sh), or point MMS_PROXY_URL at a remote one\n")
    assert not record.exists()


def test_first_launch_installs_the_pinned_clients_then_starts_the_client(tmp_path, project_dir):
    record = tmp_path / "npm.jsonl"
    fake_npm(tmp_path, record)
    with RecordingUpstream() as upstream:
        upstream.model_entries = [{"id": "qwen3-next-coder", "max_input_tokens": 204800,
                                   "max_output_tokens": 32768}]
        env = {"MMS_PROXY_URL": f"http://127.0.0.1:{upstream.port}",
               "PATH": f"{tmp_path}:/usr/bin:/bin", "MMS_CACHE_DIR": str(tmp_path / "cache")}
        first = run_cli("launch", "claude", "-p", "hi", project=project_dir, env=env)
        second = run_cli("launch", "claude", "-p", "again", project=project_dir, env=env)
    assert (first.code, second.code) == (0, 0), first.err
    installed = tmp_path / "cache" / clients_dir().name  # keyed by the lock file
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert calls == [{"argv": ["install", "--no-save", "--no-audit", "--no-fund", "--loglevel",
                               "error"], "cwd": str(installed)}]  # once: the second found it
    assert (installed / "package-lock.json").read_bytes() == (
        ROOT / "launchers" / "package-lock.json").read_bytes()
    assert (installed / ".complete").exists()
    assert json.loads(record.with_suffix(".client").read_text()) == {
        "argv": ["-p", "again"], "base": f"http://127.0.0.1:{upstream.port}"}
    label = (f"[launch] installing @anthropic-ai/claude-code, @openai/codex, opencode-ai into "
             f"{installed}")
    lines = first.err.splitlines()
    assert re.fullmatch(re.escape(label) + r" \.\.\. done in \d+s", lines[-2]), lines
    assert all(line.startswith(label + " ... ") for line in lines[:-1])
    assert lines[-1].startswith(f"[launch] claude → http://127.0.0.1:{upstream.port} model "
                                "qwen3-next-coder (context 204800, output cap 32768)")
    assert not any(line.startswith("[launch] installing") for line in second.err.splitlines())


def test_unknown_client_exits_2(project_dir):
    result = run_cli("launch", "vim", project=project_dir)
    assert (result.code, result.err) == (
        2, "error: unknown client 'vim'; choose one of: claude, codex, opencode\n")


def test_launcher_passes_config_to_the_client_and_removes_it_after(tmp_path, project_dir):
    """A stand-in client records what it got; the model data comes from the proxy's answer."""
    record = tmp_path / "record.json"
    fake = tmp_path / "codex"
    fake.write_text(f"""#!/usr/bin/env python3
import json, os, sys
home = os.environ["CODEX_HOME"]
json.dump({{"argv": sys.argv[1:], "home": home,
            "config": open(os.path.join(home, "config.toml")).read(),
            "key": os.environ["MMS_PROXY_KEY"]}}, open({str(record)!r}, "w"))
""")
    fake.chmod(0o755)
    with RecordingUpstream() as upstream:
        upstream.model_entries = [{"id": "qwen3-next-coder", "max_input_tokens": 204800,
                                   "max_output_tokens": 32768}, {"id": "vllm_agent"}]
        result = run_cli("launch", "codex", "exec", "--", "--force", "hi", project=project_dir,
                         env={"MMS_PROXY_URL": f"http://127.0.0.1:{upstream.port}/v1",
                              "MMS_PROXY_KEY": "sk-remote",
                              "PATH": f"{tmp_path}:/usr/bin:/bin",
                              "MMS_CACHE_DIR": str(tmp_path)})
        assert upstream.headers[-1]["Authorization"] == "Bearer sk-remote"
    assert result.code == 0, result.err
    seen = json.loads(record.read_text())
    assert seen["argv"] == ["exec", "--force", "hi"]
    assert seen["key"] == "sk-remote"
    assert f'base_url = "http://127.0.0.1:{upstream.port}/v1"' in seen["config"]
    assert "model_context_window = 204800" in seen["config"]
    assert not Path(seen["home"]).exists()  # nothing left behind


def test_claude_codes_background_slot_goes_to_the_smallest_other_model(tmp_path, project_dir,
                                                                       monkeypatch):
    """A stack serving several models: the haiku slot (titles, summaries) on the smallest
    model other than the main one, so background calls do not queue behind the main work."""
    from vllm_mms.config.resolve import Project
    from vllm_mms.ops import agents
    from vllm_mms.stack.state import Service, Stack

    monkeypatch.setenv("MMS_STATE_DIR", str(tmp_path / "state"))
    listed = {name: {} for name in ("qwen3-next-coder", "glm47-flash", "smollm2-135m-cpu-fast")}
    project = Project(project_dir)
    assert agents._background_model(project, "qwen3-next-coder", listed) is None  # no stack
    Stack(model="qwen3-next-coder", log_dir=str(tmp_path), started=0, services=[
        Service("engine", 1, 1, 8001), Service("proxy", 1, 2, 4000),
        Service("engine", 1, 3, 8002, model="glm47-flash"),
        Service("engine", 1, 4, 8003, model="smollm2-135m-cpu-fast")]).save()
    # weights_gb: qwen3-next-coder 78, glm47-flash 63, smollm2-135m-cpu-fast 0.27
    assert agents._background_model(project, "qwen3-next-coder", listed) == \
        "smollm2-135m-cpu-fast"
    assert agents._background_model(project, "smollm2-135m-cpu-fast", listed) == "glm47-flash"
    del listed["smollm2-135m-cpu-fast"]  # not served (yet): not chosen
    assert agents._background_model(project, "qwen3-next-coder", listed) == "glm47-flash"
    env, _ = client_setup("claude", Target("http://x", "k", "qwen3-next-coder", 204800, 32768,
                                           background="glm47-flash"), tmp_path)
    assert [env[k] for k in ("ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL",
                             "ANTHROPIC_DEFAULT_HAIKU_MODEL", "ANTHROPIC_SMALL_FAST_MODEL",
                             "CLAUDE_CODE_SUBAGENT_MODEL")] == [
        "qwen3-next-coder", "qwen3-next-coder", "glm47-flash", "glm47-flash", "qwen3-next-coder"]
