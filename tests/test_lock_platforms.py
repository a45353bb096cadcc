"""Every lock installs on every (platform, Python) pair the README claims: Linux x86_64 and
aarch64 (glibc >= 2.31) x CPython 3.10, 3.11.2 (Debian 12), 3.11, 3.12, 3.13; the engine lock
x86_64 x 3.11 only (its header says why). Needs PyPI the first time; files are cached under
${MMS_CACHE_DIR}/lock-check/, so later runs read no network.

`pip download --platform --python-version` alone is not enough: pip evaluates environment
markers for the interpreter running it, not the target (with 3.11.7 running it, a
`--python-version 3.11.2` download of redis 8.1.0 passes without async-timeout). So
vllm_mms.dev.lockcheck evaluates markers itself and pip only fetches the selected files."""

from __future__ import annotations

import os
import re
import shutil
import urllib.request

import pytest

from vllm_mms.dev import lockcheck
from vllm_mms.dev.lockcheck import (
    Cache,
    Target,
    best_wheel,
    check,
    parse_lock,
    targets_for,
)

from .conftest import ROOT

REQUIREMENTS = ROOT / "requirements"
LOCKS = sorted(REQUIREMENTS.glob("*.txt"))
pytestmark = pytest.mark.locks


@pytest.fixture(scope="module")
def pypi():
    """The checker's cache; PyPI must answer (CI has it; elsewhere the tests skip loudly)."""
    cache = Cache()
    try:
        urllib.request.urlopen(lockcheck.PYPI_SIMPLE + "/pip/", timeout=20,
                               context=lockcheck._tls()).close()
    except OSError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PyPI is required in CI and unreachable: {exc}")
        if not any(cache.wheels.iterdir()):
            pytest.skip(f"PyPI unreachable and nothing cached in {cache.root}: {exc}")
    return cache


def test_the_claimed_pairs():
    assert [str(t) for t in targets_for(REQUIREMENTS / "dev.txt")] == [
        f"{m}/py{p}" for m in ("x86_64", "aarch64") for p in ("3.10", "3.11.2", "3.11", "3.12", "3.13")]
    assert [str(t) for t in targets_for(REQUIREMENTS / "engine-cpu.txt")] == [
        "x86_64/py3.11.2", "x86_64/py3.11"]
    assert [str(t) for t in targets_for(REQUIREMENTS / "fuzz.txt")] == [
        f"{m}/py{p}" for m in ("x86_64", "aarch64") for p in ("3.11.2", "3.11", "3.12", "3.13")]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "Linux x86_64 and aarch64 (glibc ≥ 2.31) × CPython 3.10, 3.11" in readme
    assert "The engine lock covers only x86_64 × CPython 3.11 (3.11.2 included)" in readme
    assert "`requirements/fuzz.txt` (Schemathesis 4.32.5, for the spec fuzzing), the latter " \
           "for CPython ≥ 3.11 only" in readme


@pytest.mark.parametrize("lock", LOCKS, ids=[p.name for p in LOCKS])
def test_lock_installs_on_every_claimed_platform(lock, pypi):
    problems = check(lock, cache=pypi)
    assert not problems, f"{lock.name}:\n" + "\n".join(map(str, problems))


def test_universal_locks_carry_the_markers_that_matter():
    dev = {p.name: p for p in parse_lock((REQUIREMENTS / "dev.txt").read_text())}
    assert dev["async-timeout"].marker == "python_full_version < '3.11.3'"
    assert dev["litellm"].version == "1.106.12"
    aarch64_312 = Target("aarch64", "3.12")
    assert sum(1 for p in parse_lock((REQUIREMENTS / "dev.txt").read_text())
               if p.name == "numpy" and p.applies(aarch64_312)) == 1


def _without_block(text: str, name: str) -> str:
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    kept = [b for b in blocks if not b.startswith(f"{name}==")]
    assert len(kept) == len(blocks) - 1
    return "\n".join(kept)


def test_a_missing_aarch64_hash_is_reported_with_package_platform_and_python(pypi, tmp_path):
    text = (REQUIREMENTS / "dev.txt").read_text()
    target = Target("aarch64", "3.12")
    # pydantic-core has no pure-Python wheel to fall back on (aiohttp has one: pip would take it)
    core = next(p for p in parse_lock(text) if p.name == "pydantic-core")
    wheel, _ = best_wheel(pypi.files(core.name, core.version), set(core.hashes), target)
    assert "aarch64" in wheel["filename"] and "cp312" in wheel["filename"]
    broken = tmp_path / "dev.txt"
    broken.write_text(re.sub(rf" \\\n    --hash=sha256:{wheel['sha256']}", "", text))
    assert broken.read_text().count("--hash=") == text.count("--hash=") - 1
    problems = check(broken, REQUIREMENTS / "dev.in", cache=pypi)
    assert [(p.package, str(p.target)) for p in problems] == [("pydantic-core", "aarch64/py3.12")]
    assert f"missing hash of {wheel['filename']}" in problems[0].what


def test_a_missing_marker_dependency_is_reported_for_exactly_the_pythons_that_need_it(pypi, tmp_path):
    """async-timeout: redis needs it below Python 3.11.3 (Debian 12's 3.11.2), aiohttp below 3.11."""
    broken = tmp_path / "dev.txt"
    broken.write_text(_without_block((REQUIREMENTS / "dev.txt").read_text(), "async-timeout"))
    problems = check(broken, REQUIREMENTS / "dev.in", cache=pypi)
    assert {(p.package, str(p.target)) for p in problems} == {
        ("async-timeout", f"{m}/py{v}") for m in ("x86_64", "aarch64") for v in ("3.10", "3.11.2")}
    assert any("redis" in p.what and p.target.python == "3.11.2" for p in problems)


def test_a_lock_for_one_platform_only_fails(pypi, tmp_path):
    """The old single-hash lock (x86_64 cp311 wheels only) is caught on the other pairs."""
    here = Target("x86_64", "3.11")
    lines = []
    for p in parse_lock((REQUIREMENTS / "cluster.txt").read_text()):
        if p.applies(here):
            wheel, _ = best_wheel(pypi.files(p.name, p.version), set(p.hashes), here)
            lines.append(f"{p.name}=={p.version} --hash=sha256:{wheel['sha256']}")
    old = tmp_path / "cluster.txt"
    old.write_text("\n".join(lines) + "\n")
    shutil.copy(REQUIREMENTS / "cluster.in", tmp_path / "cluster.in")
    problems = check(old, cache=pypi, targets=[Target("aarch64", "3.11"), Target("x86_64", "3.10")])
    assert {str(p.target) for p in problems} == {"aarch64/py3.11", "x86_64/py3.10"}
