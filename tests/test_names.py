"""One definition of each name the code shares with the compose files and the catalog: the
services, containers and volume (stack/compose.py), the generated-config directory and the
default models (vllm_mms.environment), checked against the files that define them too."""

from __future__ import annotations

import ast
import re

import yaml

from vllm_mms import environment, paths
from vllm_mms.config.schema import load_model_file
from vllm_mms.stack import cluster, compose

from .conftest import ROOT

SRC = ROOT / "src" / "vllm_mms"
COMPOSE_NAMES = (compose.ENGINE_SERVICE, compose.ENGINE_CONTAINER, compose.PROXY_CONTAINER,
                 compose.DB_SERVICE, compose.WORKER_SERVICE)
# Where each shared name is defined; everywhere else the code imports it.
HOMES = {name: SRC / "stack" / "compose.py" for name in COMPOSE_NAMES}
HOMES.update({paths.GENERATED_CONFIGS: SRC / "environment.py",
              environment.DEFAULT_COMPOSE_MODEL: SRC / "environment.py",
              environment.DEFAULT_LOCAL_MODEL: SRC / "environment.py"})
# cli.py's help text names the default models; the last test keeps it in step.
WRITTEN_ELSEWHERE = {(SRC / "cli.py", environment.DEFAULT_COMPOSE_MODEL),
                     (SRC / "cli.py", environment.DEFAULT_LOCAL_MODEL)}


def test_the_compose_files_define_the_names_the_code_uses():
    base = yaml.safe_load((ROOT / compose.BASE_FILE).read_text())
    services = base["services"]
    assert list(services)[:3] == list(compose.SERVICE_ORDER)
    assert services[compose.ENGINE_SERVICE]["container_name"] == compose.ENGINE_CONTAINER
    assert services[compose.PROXY_SERVICE]["container_name"] == compose.PROXY_CONTAINER
    assert services[compose.DB_SERVICE]["container_name"] == compose.DB_SERVICE
    mount = f"{compose.GENERATED_VOLUME}:{paths.CONTAINER_GENERATED_DIR}"
    assert mount in services[compose.ENGINE_SERVICE]["volumes"]
    assert f"{mount}:ro" in services[compose.PROXY_SERVICE]["volumes"]
    assert compose.GENERATED_VOLUME in base["volumes"]
    ray = yaml.safe_load((ROOT / cluster.CLUSTER_COMPOSE).read_text())["services"]
    assert {cluster.HEAD_SERVICE, cluster.WORKER_SERVICE} <= set(ray)
    for dockerfile in ("Dockerfile", "Dockerfile.proxy"):
        assert re.findall(r"MMS_GENERATED_DIR=(\S+)", (ROOT / dockerfile).read_text()) == [
            str(paths.CONTAINER_GENERATED_DIR)], dockerfile


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants: documentation may name a service."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def spelled_out(text: str, names: dict) -> list[tuple[int, str]]:
    """(line, name) of each shared name written in a string of the code, docstrings aside."""
    tree = ast.parse(text)
    skip = _docstrings(tree)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w])")
    return sorted((node.lineno, match)
                  for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and id(node) not in skip
                  for match in pattern.findall(node.value))


def test_shared_names_are_written_only_where_they_are_defined():
    stray = {}
    for path in sorted(SRC.rglob("*.py")):
        names = {name for name, home in HOMES.items()
                 if home != path and (path, name) not in WRITTEN_ELSEWHERE}
        found = spelled_out(path.read_text(), names)
        if found:
            stray[str(path.relative_to(ROOT))] = found
    assert stray == {}


def test_the_names_check_sees_a_name_in_a_message():
    text = ('"""Talks to vllm-node."""\nx = f"docker logs {n} vllm-container"\n'
            'y = "http://vllm-node:8000"\nz = "vllm-node-2 and litellm_dbx"\n')
    assert spelled_out(text, HOMES) == [(2, "vllm-container"), (3, "vllm-node"),
                                        (4, "vllm-node")]


def test_the_default_models_are_in_the_catalog_and_in_the_help():
    from vllm_mms.cli import usage_text

    usage = usage_text()

    compose_model = load_model_file(ROOT / "models" / f"{environment.DEFAULT_COMPOSE_MODEL}.yml")
    local_model = load_model_file(ROOT / "models" / f"{environment.DEFAULT_LOCAL_MODEL}.yml")
    assert (compose_model.local_weights, local_model.local_weights) == (
        None, "smollm2-135m-instruct")
    assert f"(default {environment.DEFAULT_COMPOSE_MODEL})" in usage
    assert f"(default {environment.DEFAULT_LOCAL_MODEL}" in usage
