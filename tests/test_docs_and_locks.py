"""Generated docs are current; dependency locks are hashed, consistent and safe."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vllm_mms.cli import readme_with_commands
from vllm_mms.config.docs import SCHEMA_FILE, configuration_markdown, model_schema
from vllm_mms.dev.lockcheck import parse_lock, select, targets_for

from .conftest import ROOT, run_cli


def test_configuration_md_is_current():
    assert (ROOT / "CONFIGURATION.md").read_text() == configuration_markdown(), \
        "CONFIGURATION.md is stale: run ./runMe.sh docs"


def test_readme_command_list_is_current():
    text = (ROOT / "README.md").read_text()
    assert text == readme_with_commands(text), \
        "README.md's command list is stale: run ./runMe.sh docs"


def test_a_stale_readme_command_list_is_seen_and_docs_rewrites_it(tmp_path):
    """The check above can fail, and `docs` writes what it wants (in a copy of the project)."""
    stale = (ROOT / "README.md").read_text().replace("[--tokens-per-day N]", "")
    assert stale != readme_with_commands(stale)
    (tmp_path / "README.md").write_text(stale)
    result = run_cli("docs", project=tmp_path)
    assert (result.code, result.out, result.err) == (
        0, "wrote CONFIGURATION.md\nwrote README.md\n", "")
    assert (tmp_path / "README.md").read_text() == (ROOT / "README.md").read_text()


def test_schema_file_is_current():
    assert json.loads((ROOT / SCHEMA_FILE).read_text()) == model_schema(), \
        f"{SCHEMA_FILE} is stale: run ./runMe.sh docs"


def test_schema_validates_every_catalog_model_and_rejects_a_bad_one():
    import jsonschema
    import yaml

    schema = model_schema()
    paths = sorted((ROOT / "models").glob("*.yml"))
    assert sorted(p.stem for p in paths) == ["glm47-flash", "minilm-l6-cpu", "qwen3-next-coder",
                                             "smollm2-135m-cpu", "smollm2-135m-cpu-fast",
                                             "step-3.5-flash", "step-3.5-flash-hcsw"]
    for path in paths:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"description": "x", "command": "vllm serve m", "bogus": 1}, schema)


def test_schema_command_prints_the_schema():
    result = run_cli("schema")
    assert result.code == 0
    assert json.loads(result.out) == model_schema()


@pytest.mark.parametrize("target", targets_for(ROOT / "requirements" / "proxy.txt"), ids=str)
def test_proxy_image_and_tests_use_the_same_versions(target):
    """On every platform and Python, what the proxy image installs is what the tests run."""
    proxy, _ = select(parse_lock((ROOT / "requirements" / "proxy.txt").read_text()), target)
    dev, _ = select(parse_lock((ROOT / "requirements" / "dev.txt").read_text()), target)
    assert proxy
    for package, pin in proxy.items():
        assert package in dev, f"{package} is in proxy.txt, not in dev.txt ({target})"
        assert (dev[package].version, sorted(dev[package].hashes)) == (
            pin.version, sorted(pin.hashes)), f"{package}: proxy.txt {pin.version} vs dev.txt " \
            f"{dev[package].version} ({target})"


def test_the_anthropic_spec_is_current():
    # tests/specs/anthropic-messages.yaml comes from the pinned Anthropic SDK's types
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "anthropic_spec.py"),
                             "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_openai_spec_cut_follows_the_gate():
    # every kept operation is one the gate hands to the model APIs; no other one is
    import yaml

    from vllm_mms.proxy.gateway import MODEL_API_ROUTES

    spec = yaml.safe_load((ROOT / "tests" / "specs" / "openai-model-api.yaml").read_text())
    assert spec["info"]["x-extracted-from"].startswith(
        "https://github.com/openai/openai-openapi openapi.yaml at commit f85dbe2")
    assert sorted(spec["paths"]) == [
        "/chat/completions", "/completions", "/embeddings", "/models", "/models/{model}",
        "/responses", "/responses/compact", "/responses/input_tokens",
        "/responses/{response_id}", "/responses/{response_id}/cancel",
        "/responses/{response_id}/input_items"]
    assert all(MODEL_API_ROUTES.match("/v1" + path) for path in spec["paths"])
    others = [line.split()[1] for line in
              (ROOT / "tests" / "specs" / "openai-other-operations.txt").read_text().splitlines()
              if line and not line.startswith("#")]
    assert len(others) == 267 and not any(MODEL_API_ROUTES.match("/v1" + p) for p in others)
