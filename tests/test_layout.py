"""The package layout is the architecture: what runs inside the LiteLLM process (proxy/) imports
nothing else of the project, so the proxy image and the hooks stay small and independent."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vllm_mms"
# Leaf modules every package may use: they import nothing of the project but other leaves
# (paths reads its variables through environment, which imports nothing at all).
LEAVES = {"vllm_mms.errors", "vllm_mms.paths", "vllm_mms.environment"}
IMPORTS_OF_LEAVES = {"vllm_mms.errors": set(), "vllm_mms.environment": set(),
                     "vllm_mms.paths": {"vllm_mms.environment"}}


def project_imports(path: Path) -> set[str]:
    """The vllm_mms names `path` imports, at any depth, relative imports resolved: for
    `from X import y` both X and X.y (y may be a module or a name in X)."""
    package = ["vllm_mms", *path.relative_to(SRC).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module.startswith("vllm_mms"):
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vllm_mms"))
    return found - {"vllm_mms"}  # the package itself is empty


def allowed_in_proxy(name: str) -> bool:
    return any(name == ok or name.startswith(ok + ".") for ok in ("vllm_mms.proxy", *LEAVES))


def test_the_proxy_package_imports_only_itself_and_the_leaves():
    outside = {}
    for path in sorted((SRC / "proxy").glob("*.py")):
        stray = {m for m in project_imports(path) if not allowed_in_proxy(m)}
        if stray:
            outside[path.name] = sorted(stray)
    assert outside == {}


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_the_leaves_import_nothing_of_the_project_but_leaves(leaf):
    path = SRC / (leaf.split(".", 1)[1].replace(".", "/") + ".py")
    # `from .environment import ROOT` also reports vllm_mms.environment.ROOT: a name, no module
    modules = {m for m in project_imports(path) if m.rsplit(".", 1)[0] not in LEAVES}
    assert modules == IMPORTS_OF_LEAVES[leaf]


def test_the_rule_sees_a_stray_import():
    """The check itself can fail: a proxy module importing the stack is reported."""
    fake = SRC / "proxy" / "hooks.py"
    assert "vllm_mms.stack.local" in project_imports_of_text(fake, "from ..stack import local\n")
    assert "vllm_mms.config.resolve" in project_imports_of_text(
        fake, "def f():\n    from ..config.resolve import resolve\n")


def project_imports_of_text(path: Path, text: str) -> set[str]:
    probe = path.with_name("_layout_probe.py")
    probe.write_text(text)
    try:
        return project_imports(probe)
    finally:
        probe.unlink()


def test_every_module_lives_in_a_role_package_or_is_a_named_top_level_module():
    top_level = {p.stem for p in SRC.glob("*.py")}
    assert top_level == {"__init__", "__main__", "bootstrap", "cli", "environment", "errors",
                         "paths", "progress"}
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert packages == {"config", "engine", "proxy", "stack", "ops", "dev"}
