#!/usr/bin/env python3
"""Cut the model-API part out of OpenAI's OpenAPI spec, for the spec fuzzing in CI (which
cannot fetch it): tests/specs/openai-model-api.yaml and tests/specs/openai-other-operations.txt.

The spec: github.com/openai/openai-openapi (MIT, tests/specs/OPENAI-OPENAPI-LICENSE), file
openapi.yaml. Kept: every operation whose path the proxy's route gate hands to the model APIs
(vllm_mms.proxy.gateway.MODEL_API_ROUTES, under /v1) with every component they reference,
directly or not (paths with a query in their key, such as "/responses/compact?beta=true",
are duplicates of their plain path and dropped); the other operations are listed by method
and path (the gate must answer them without a server error, whatever the key).

    python scripts/extract_openai_spec.py PATH/TO/openapi.yaml COMMIT
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vllm_mms.proxy.gateway import MODEL_API_ROUTES  # noqa: E402

OUT = ROOT / "tests" / "specs"
METHODS = ("get", "put", "post", "delete", "patch")
SOURCE = "https://github.com/openai/openai-openapi"


def references(node: Any) -> set[str]:
    """The '#/components/...' targets named anywhere in node."""
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= references(value)
        return found
    if isinstance(node, list):
        return set().union(*map(references, node)) if node else set()
    return set()


def resolve_pointer(spec: dict[str, Any], ref: str) -> Any:
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def extract(spec: dict[str, Any], commit: str) -> tuple[dict[str, Any], list[str]]:
    paths: dict[str, Any] = {}
    others = []
    for path, item in spec["paths"].items():
        if "?" in path:  # "/responses/compact?beta=true": a query in a path key, same operation
            continue
        for method in METHODS:
            if method not in item:
                continue
            if MODEL_API_ROUTES.match("/v1" + path):
                paths.setdefault(path, {k: v for k, v in item.items() if k not in METHODS})
                paths[path][method] = item[method]
            else:
                others.append(f"{method.upper()} {path}")
    # Every component reachable from the kept operations.
    wanted: set[str] = set()
    todo = references(paths)
    while todo:
        ref = todo.pop()
        if ref in wanted:
            continue
        wanted.add(ref)
        todo |= references(resolve_pointer(spec, ref)) - wanted
    components: dict[str, dict[str, Any]] = {}
    for ref in sorted(wanted):
        section, name = ref.removeprefix("#/components/").split("/", 1)
        components.setdefault(section, {})[name] = resolve_pointer(spec, ref)
    components["securitySchemes"] = spec["components"]["securitySchemes"]
    info = dict(spec["info"])
    info["x-extracted-from"] = (f"{SOURCE} openapi.yaml at commit {commit} "
                                f"(spec version {info['version']})")
    cut = {"openapi": spec["openapi"], "info": info, "servers": spec["servers"],
           "security": spec["security"], "paths": paths, "components": components}
    return cut, others


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    spec = yaml.safe_load(Path(argv[0]).read_text())
    cut, others = extract(spec, argv[1])
    header = (f"# The model-API operations of OpenAI's OpenAPI spec ({SOURCE}, MIT licence: "
              f"OPENAI-OPENAPI-LICENSE),\n# cut by scripts/extract_openai_spec.py; do not edit.\n")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "openai-model-api.yaml").write_text(
        header + yaml.safe_dump(cut, sort_keys=False, allow_unicode=True, width=100))
    (OUT / "openai-other-operations.txt").write_text(
        f"# The other operations of the same spec ({cut['info']['x-extracted-from']}),\n"
        f"# cut by scripts/extract_openai_spec.py; do not edit.\n" + "\n".join(others) + "\n")
    kept = sum(1 for item in cut["paths"].values() for m in METHODS if m in item)
    print(f"kept {kept} operations and {sum(map(len, cut['components'].values()))} components; "
          f"{len(others)} other operations listed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
