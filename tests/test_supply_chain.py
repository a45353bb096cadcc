"""Supply chain: every environment installs from a hash-locked file; no known-compromised
release can be resolved from the inputs or sits in a lock; the images and the npm clients are
locked the same way. (The proxy starting with no network at all: e2e/test_offline.py.)"""

from __future__ import annotations

import json
import re

import pytest
from packaging.requirements import Requirement

from .conftest import ROOT

# Releases known to be malicious uploads. Add to this list; never remove from it.
KNOWN_COMPROMISED = {("litellm", "1.82.7"), ("litellm", "1.82.8")}
REQUIREMENTS = ROOT / "requirements"
LOCKS = sorted(REQUIREMENTS.glob("*.txt"))
INPUTS = sorted(REQUIREMENTS.glob("*.in"))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock) -> dict[str, tuple[str, list[str]]]:
    """Each pin of a (universal) lock: 'name' or, for a pin with environment markers,
    'name ; marker' (a package may be pinned at two versions for different Pythons)."""
    found = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock.read_text()):
        block = block.strip()
        if not block or block.startswith("#"):
            continue
        requirement, _, marker = block.split("\n", 1)[0].rstrip("\\").partition(";")
        package, version = requirement.strip().split("==")
        key = canonical(package) + (f" ; {marker.strip()}" if marker.strip() else "")
        assert key not in found, f"{lock.name}: {key} pinned twice"
        found[key] = (version, re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return found


def test_every_environment_has_a_lock():
    assert [p.stem for p in INPUTS] == [p.stem for p in LOCKS] == [
        "cluster", "dev", "engine-cpu", "fuzz", "model", "proxy"]
    # and the bootstrap installs each from its lock, with hashes required
    bootstrap = (ROOT / "src" / "vllm_mms" / "bootstrap.py").read_text()
    assert '"--require-hashes"' in bootstrap


@pytest.mark.parametrize("lock", LOCKS, ids=[p.name for p in LOCKS])
def test_every_pin_is_exact_and_hashed(lock):
    found = pins(lock)
    assert found
    for package, (version, hashes) in found.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), f"{lock.name}: {package}"
        assert hashes, f"{lock.name}: {package} has no sha256 hash"


@pytest.mark.parametrize("lock", LOCKS, ids=[p.name for p in LOCKS])
def test_no_known_compromised_release_in_a_lock(lock):
    found = {(name.split(" ;")[0], version) for name, (version, _) in pins(lock).items()}
    assert found & KNOWN_COMPROMISED == set()


@pytest.mark.parametrize("source", INPUTS, ids=[p.name for p in INPUTS])
def test_no_input_admits_a_known_compromised_release(source):
    for line in source.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        for name, version in KNOWN_COMPROMISED:
            if canonical(requirement.name) == name:
                assert not requirement.specifier.contains(version, prereleases=True), (
                    f"{source.name}: '{line}' admits {name} {version}")


def test_the_compromised_check_can_fail():
    assert Requirement("litellm[proxy]>=1.80").specifier.contains("1.82.7")
    assert not Requirement("litellm[proxy]==1.106.12").specifier.contains("1.82.7")


def test_images_install_from_the_locks():
    proxy = (ROOT / "Dockerfile.proxy").read_text()
    engine = (ROOT / "Dockerfile").read_text()
    for text in (proxy, engine):
        for command in re.findall(r"pip install[^\n]*", text):
            # our own package goes in without dependencies; everything else from a lock
            assert "--require-hashes" in command or "--no-deps" in command, command
    assert "--require-hashes -r requirements/proxy.txt" in proxy


def test_npm_clients_are_locked_with_integrity_hashes():
    manifest = json.loads((ROOT / "launchers" / "package.json").read_text())
    lock = json.loads((ROOT / "launchers" / "package-lock.json").read_text())
    for name, version in manifest["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name} is not pinned: {version}"
    packages = {k: v for k, v in lock["packages"].items() if k}
    assert packages
    for path, entry in packages.items():
        assert entry.get("integrity", "").startswith("sha512-"), path
