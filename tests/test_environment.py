"""The registry of the tool's environment variables (vllm_mms.environment): every MMS_* name
the project uses is in it, the code reads them only through it, and each reads as its type
with its default."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from vllm_mms import environment

from .conftest import ROOT

SRC = ROOT / "src" / "vllm_mms"
REGISTRY = SRC / "environment.py"
# Everything of the project that can name an environment variable (not .git, not caches).
PROJECT_FILES = [*ROOT.glob("*.md"), *ROOT.glob("*.yml"), *ROOT.glob("Dockerfile*"),
                 ROOT / "runMe.sh", *(ROOT / "docs").glob("*.md"), *(ROOT / "scripts").iterdir(),
                 *(ROOT / "bench").glob("*.py"), *(ROOT / "launchers").glob("*.sh"),
                 *SRC.rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
# A name the project never uses, spelled so that this file does not use it either.
STRAY = "MMS_" + "NOT_REGISTERED"


def _is_os_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ"
            and isinstance(node.value, ast.Name) and node.value.id == "os")


def _watched(node: ast.AST) -> str | None:
    """The variable name in `node` when it is one the registry owns: MMS_* or registered."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        if node.value.startswith("MMS_") or node.value in environment.BY_NAME:
            return node.value
    return None


def environment_reads(text: str) -> list[tuple[int, str]]:
    """(line, name) of every read of a watched variable straight from the process
    environment: os.environ.get/pop/setdefault(NAME), os.environ[NAME], os.getenv(NAME),
    NAME in os.environ. Writes (os.environ[NAME] = ...) are not reads."""
    found = []
    for node in ast.walk(ast.parse(text)):
        name = None
        if isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute):
            reads_environ = (_is_os_environ(node.func.value)
                             and node.func.attr in ("get", "pop", "setdefault"))
            getenv = (node.func.attr == "getenv" and isinstance(node.func.value, ast.Name)
                      and node.func.value.id == "os")
            if reads_environ or getenv:
                name = _watched(node.args[0])
        elif (isinstance(node, ast.Subscript) and _is_os_environ(node.value)
              and isinstance(node.ctx, ast.Load)):
            name = _watched(node.slice)
        elif (isinstance(node, ast.Compare) and len(node.comparators) == 1
              and isinstance(node.ops[0], (ast.In, ast.NotIn)) and _is_os_environ(node.comparators[0])):
            name = _watched(node.left)
        if name is not None:
            found.append((node.lineno, name))
    return sorted(found)


def test_no_module_reads_a_tool_variable_past_the_registry():
    stray = {}
    for path in sorted(SRC.rglob("*.py")):
        if path != REGISTRY:
            reads = environment_reads(path.read_text())
            if reads:
                stray[str(path.relative_to(ROOT))] = reads
    assert stray == {}


def test_the_scan_sees_every_kind_of_read():
    text = (f'import os\na = os.environ.get("{STRAY}", "1")\nb = os.getenv("MMS_CACHE_DIR")\n'
            'c = os.environ["MODEL"]\nd = "MMS_DEBUG" in os.environ\n'
            'os.environ["MMS_REPLICA"] = "2"\ne = os.environ.get("HOME")\n'
            'f = {"MMS_USAGE": "off"}.get("MMS_USAGE")\n')
    assert environment_reads(text) == [(2, STRAY), (3, "MMS_CACHE_DIR"), (4, "MODEL"),
                                       (5, "MMS_DEBUG")]


def mms_names(text: str) -> set[str]:
    return set(re.findall(r"\bMMS_[A-Z0-9_]*[A-Z0-9]\b", text))


def test_every_mms_name_in_the_project_is_registered():
    unknown = {}
    for path in PROJECT_FILES:
        if path.is_file() and path != Path(__file__).resolve():
            names = mms_names(path.read_text(errors="replace")) - set(environment.BY_NAME)
            if names:
                unknown[str(path.relative_to(ROOT))] = sorted(names)
    assert unknown == {}
    assert mms_names(f"x {STRAY}=1 y") == {STRAY}  # the pattern itself finds a name


ACCESSORS = ("get", "is_set", "variable")


def registry_reads() -> set[str]:
    """The names the package reads through the registry: environment.get("NAME") (is_set,
    variable) anywhere, or get("NAME") inside the registry itself."""
    names = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args
                    and isinstance(node.args[0], ast.Constant)):
                continue
            func = node.func
            qualified = (isinstance(func, ast.Attribute) and func.attr in ACCESSORS
                         and isinstance(func.value, ast.Name) and func.value.id == "environment")
            inside = path == REGISTRY and isinstance(func, ast.Name) and func.id in ACCESSORS
            if qualified or inside:
                names.add(node.args[0].value)
    return names


@pytest.mark.parametrize("var", environment.VARIABLES, ids=lambda v: v.name)
def test_every_registered_variable_is_read_where_the_registry_says(var):
    if not var.read_by:
        assert var.name in registry_reads()
        return
    where = ROOT / var.read_by
    files = where.rglob("*.py") if where.is_dir() else [where]
    assert any(var.name in path.read_text() for path in files), var.read_by


def test_values_are_converted_to_their_type():
    env = {"MMS_START_TIMEOUT": "42.5", "MMS_USAGE_QUEUE_ROWS": "7", "MMS_STATE_DIR": "/s",
           "MMS_USAGE": "OFF", "MMS_DEBUG": "1"}
    assert environment.get("MMS_START_TIMEOUT", env) == 42.5
    assert environment.get("MMS_USAGE_QUEUE_ROWS", env) == 7
    assert environment.get("MMS_STATE_DIR", env) == Path("/s")
    assert environment.get("MMS_USAGE", env) is False
    assert environment.get("MMS_DEBUG", env) is True
    assert environment.get("MMS_DEBUG", {"MMS_DEBUG": "no"}) is False


def test_unset_and_empty_give_the_default_except_where_empty_means_none(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    for env in ({}, {name: "" for name in environment.BY_NAME}):
        assert environment.get("MMS_KEY_CACHE_SECONDS", env) == 10.0
        assert environment.get("MMS_USAGE", env) is True
        assert environment.get("MMS_PROXY_URL", env) is None
        assert environment.get("MMS_CACHE_DIR", env) == Path("/home/someone/.cache/vllm-mms")
        assert environment.get("MMS_DATABASE_URL", env) == (
            "sqlite:////home/someone/.local/state/vllm-mms/usage.db")
        assert environment.get("MMS_PROJECT_DIR", env) == ROOT
        assert environment.get("MMS_MODELS_FILE", env) == Path("/app/generated_configs/models.yml")
    assert environment.get("MMS_TORCH_INDEX_URL", {}) == "https://download.pytorch.org/whl/cpu"
    assert environment.get("MMS_TORCH_INDEX_URL", {"MMS_TORCH_INDEX_URL": ""}) == ""
    assert (environment.is_set("MMS_DATABASE_URL", {"MMS_DATABASE_URL": ""}),
            environment.is_set("MMS_DATABASE_URL", {"MMS_DATABASE_URL": "sqlite:///x"}),
            environment.is_set("MMS_TORCH_INDEX_URL", {"MMS_TORCH_INDEX_URL": ""})) == (
        False, True, True)


def test_a_bad_value_names_the_variable_and_an_unknown_name_is_refused():
    with pytest.raises(ValueError) as bad:
        environment.get("MMS_START_TIMEOUT", {"MMS_START_TIMEOUT": "soon"})
    assert str(bad.value) == "MMS_START_TIMEOUT='soon': expected a number"
    with pytest.raises(KeyError) as unknown:
        environment.get(STRAY, {})
    assert unknown.value.args[0] == f"{STRAY} is not in vllm_mms.environment.VARIABLES"


def test_start_timeout_has_one_default_per_use(monkeypatch):
    monkeypatch.delenv("MMS_START_TIMEOUT", raising=False)
    assert (environment.start_timeout(), environment.start_timeout(compose=True)) == (600, 1800)
    monkeypatch.setenv("MMS_START_TIMEOUT", "90")
    assert (environment.start_timeout(), environment.start_timeout(compose=True)) == (90, 90)


def test_runme_sh_uses_the_registered_default_python():
    found = re.findall(r"\$\{MMS_PYTHON:-([^}]*)\}", (ROOT / "runMe.sh").read_text())
    assert found == [environment.get("MMS_PYTHON", {})]


def test_the_configuration_tables_list_every_variable_once():
    from vllm_mms.config.docs import configuration_markdown

    text = configuration_markdown()
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \|", text.split("## Environment variables")[1],
                      re.MULTILINE)
    assert rows == [v.name for v in environment.VARIABLES]
    assert ("| `MMS_START_TIMEOUT` | number | `600`; `1800` for `switch` in compose mode | "
            in text)
