"""Generated docs are current; dependency locks are hashed, consistent and safe."""

from __future__ import annotations

import json
import re

import pytest

from vllm_mms.docs import SCHEMA_FILE, configuration_markdown, model_schema

from .conftest import ROOT, run_cli


def test_configuration_md_is_current():
    assert (ROOT / "CONFIGURATION.md").read_text() == configuration_markdown(), \
        "CONFIGURATION.md is stale: run ./runMe.sh docs"


def test_schema_file_is_current():
    assert json.loads((ROOT / SCHEMA_FILE).read_text()) == model_schema(), \
        f"{SCHEMA_FILE} is stale: run ./runMe.sh docs"


def test_schema_validates_every_catalog_model_and_rejects_a_bad_one():
    import jsonschema
    import yaml

    schema = model_schema()
    for path in sorted((ROOT / "models").glob("*.yml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"description": "x", "command": "vllm serve m", "bogus": 1}, schema)


def test_schema_command_prints_the_schema():
    result = run_cli("schema")
    assert result.code == 0
    assert json.loads(result.out) == model_schema()


def pins(name: str) -> dict[str, tuple[str, list[str]]]:
    text = (ROOT / "requirements" / name).read_text()
    found = {}
    for block in re.split(r"\n(?=[a-z0-9])", text):
        block = block.strip()
        if not block or block.startswith("#"):
            continue
        head = block.split()[0]
        package, version = head.split("==")
        found[package] = (version, re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return found


@pytest.mark.parametrize("lock", ["proxy.txt", "dev.txt", "engine-cpu.txt", "model.txt"])
def test_every_pin_is_exact_and_hashed(lock):
    found = pins(lock)
    assert found
    for package, (version, hashes) in found.items():
        assert version and hashes, f"{lock}: {package} is not pinned with a hash"


@pytest.mark.parametrize("lock", ["proxy.txt", "dev.txt"])
def test_no_compromised_litellm(lock):
    version = pins(lock)["litellm"][0]
    assert version == "1.106.12"
    assert version not in ("1.82.7", "1.82.8")


def test_proxy_image_and_tests_use_the_same_versions():
    proxy, dev = pins("proxy.txt"), pins("dev.txt")
    for package, pin in proxy.items():
        assert dev.get(package) == pin, f"{package}: proxy.txt {pin[0]} vs dev.txt {dev.get(package)}"
