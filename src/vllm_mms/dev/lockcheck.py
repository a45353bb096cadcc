"""Check that a hash lock installs on every (platform, Python) pair it claims.

pip's own `pip download --platform P --python-version V` picks wheels for the target but
evaluates environment markers — on the lock's lines and in each package's Requires-Dist — for
the interpreter running pip (checked: with Python 3.11.7 running it, `--python-version 3.11.2`
accepts redis 8.1.0 without async-timeout, and a `python_full_version < '3.11'` line is
"ignored: markers don't match your environment" for a 3.10 target). So this check does the
marker work itself, for the target:

1. select the lock lines whose markers hold for the target (a name selected twice is an error);
2. for each, PyPI's file list (simple JSON API) must offer a wheel for the target whose sha256
   is in the lock (missing wheel / missing hash, named with package, platform and Python);
3. `pip download --no-deps --only-binary=:all: --require-hashes` of exactly those lines
   (isolated from the host's pip configuration) fetches the files — pip's verdict on tags and
   hashes — into a cache, and must have fetched the wheel predicted in step 2;
4. from the roots in the .in file, every Requires-Dist of every selected package, with its
   markers and extras evaluated for the target, must be in the selection at a matching version.

Everything fetched is cached under ${MMS_CACHE_DIR}/lock-check/ (PyPI file lists, wheels), so a
second run reads no network. Usage: python -m vllm_mms.dev.lockcheck requirements/dev.txt ...
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from ..paths import cache_dir

PYPI_SIMPLE = "https://pypi.org/simple"
MACHINES = ("x86_64", "aarch64")
GLIBC_MINOR = 31   # manylinux_2_31: Debian 11+, Ubuntu 20.04+ (DGX OS 24.04 has 2.39)
# name in the README → the full version used for markers (3.11.2 is Debian 12's Python)
PYTHONS = {"3.10": "3.10.12", "3.11.2": "3.11.2", "3.11": "3.11.14", "3.12": "3.12.3",
           "3.13": "3.13.9"}
# Locks that cover fewer pairs, and why: see the header of each lock and the README.
LOCK_PYTHONS = {"engine-cpu": ("3.11.2", "3.11"),
                "fuzz": ("3.11.2", "3.11", "3.12", "3.13")}  # schemathesis needs >= 3.11
LOCK_MACHINES = {"engine-cpu": ("x86_64",)}
NO_DEPS = {"model"}   # downloaded with --no-deps only: no dependency closure to check


@dataclass(frozen=True)
class Target:
    machine: str
    python: str   # a key of PYTHONS

    @property
    def full(self) -> str:
        return PYTHONS[self.python]

    @property
    def minor(self) -> tuple[int, int]:
        major, minor = self.full.split(".")[:2]
        return int(major), int(minor)

    def __str__(self) -> str:
        return f"{self.machine}/py{self.python}"

    def environment(self, extra: str = "") -> dict[str, str]:
        return {"implementation_name": "cpython", "implementation_version": self.full,
                "os_name": "posix", "platform_machine": self.machine,
                "platform_python_implementation": "CPython", "platform_release": "",
                "platform_system": "Linux", "platform_version": "",
                "python_full_version": self.full, "python_version": "%d.%d" % self.minor,
                "sys_platform": "linux", "extra": extra}

    def platforms(self) -> list[str]:
        tags = [f"manylinux_2_{m}_{self.machine}" for m in range(GLIBC_MINOR, 16, -1)]
        tags.append(f"manylinux2014_{self.machine}")
        if self.machine == "x86_64":
            tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
        return tags

    def tags(self) -> list[Tag]:
        """Wheel tags the target accepts, most preferred first (as pip orders them)."""
        platforms = self.platforms()
        return [*cpython_tags(self.minor, platforms=platforms),
                *compatible_tags(self.minor, f"cp{self.minor[0]}{self.minor[1]}", platforms)]


def targets_for(lock: Path) -> list[Target]:
    name = lock.stem
    return [Target(m, p) for m in LOCK_MACHINES.get(name, MACHINES)
            for p in LOCK_PYTHONS.get(name, tuple(PYTHONS))]


@dataclass(frozen=True)
class Problem:
    package: str
    target: Target
    what: str

    def __str__(self) -> str:
        return f"{self.package} on {self.target}: {self.what}"


@dataclass
class Pin:
    name: str
    version: str
    marker: str
    hashes: list[str] = field(default_factory=list)

    def applies(self, target: Target) -> bool:
        return not self.marker or Marker(self.marker).evaluate(target.environment())


def parse_lock(text: str) -> list[Pin]:
    pins = []
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        block = block.strip()
        if not block or block.startswith("#"):
            continue
        head = block.split("\n", 1)[0].rstrip("\\").strip()
        requirement, _, marker = head.partition(";")
        name, _, version = requirement.strip().partition("==")
        pins.append(Pin(canonicalize_name(name), version.strip(), marker.strip(),
                        re.findall(r"--hash=sha256:([0-9a-f]{64})", block)))
    return pins


def select(pins: list[Pin], target: Target) -> tuple[dict[str, Pin], list[Problem]]:
    chosen: dict[str, Pin] = {}
    problems = []
    for pin in pins:
        if pin.applies(target):
            if pin.name in chosen:
                problems.append(Problem(pin.name, target, f"pinned twice ({chosen[pin.name].version}"
                                                          f" and {pin.version})"))
            chosen[pin.name] = pin
    return chosen, problems


def roots(in_file: Path) -> list[Requirement]:
    found = []
    for line in in_file.read_text().splitlines():
        line = line.split(" #", 1)[0].split("#", 1)[0].strip() if not line.startswith("#") else ""
        if line.startswith("-r "):
            found += roots(in_file.parent / line[3:].strip())
        elif line and not line.startswith("-"):
            found.append(Requirement(line))
    return found


class Cache:
    """PyPI file lists and downloaded wheels, kept across runs."""

    def __init__(self, root: Path | None = None):
        self.root = root or cache_dir() / "lock-check"
        self.wheels = self.root / "wheels"
        self.simple = self.root / "simple"
        self.wheels.mkdir(parents=True, exist_ok=True)
        self.simple.mkdir(parents=True, exist_ok=True)
        self._memo: dict[tuple[str, str], list[dict]] = {}

    def files(self, name: str, version: str) -> list[dict]:
        """PyPI's files of one release (filename, sha256), fetched again only when the cached
        list does not have that release yet."""
        if (name, version) not in self._memo:
            self._memo[name, version] = self._files(name, version)
        return self._memo[name, version]

    def _files(self, name: str, version: str) -> list[dict]:
        path = self.simple / f"{name}.json"
        if path.exists():
            data = json.loads(path.read_text())
            if version in data.get("versions", []):
                return _release(data, name, version)
        request = urllib.request.Request(f"{PYPI_SIMPLE}/{name}/",
                                         headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        try:
            with urllib.request.urlopen(request, timeout=60, context=_tls()) as response:
                data = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"versions": data.get("versions", []), "files": [
            {"filename": f["filename"], "sha256": f["hashes"].get("sha256", "")}
            for f in data["files"]]}))
        tmp.replace(path)
        return _release(json.loads(path.read_text()), name, version)


def _release(data: dict, name: str, version: str) -> list[dict]:
    out = []
    for f in data["files"]:
        filename = f["filename"]
        if f"-{version}-" not in filename:   # cheap filter first: the list has every release
            continue
        try:
            if filename.endswith(".whl"):
                fname, fversion, _, _ = parse_wheel_filename(filename)
            else:
                continue
        except Exception:
            continue
        if fname == name and fversion == Version(version):
            out.append(f)
    return out


def _tls() -> ssl.SSLContext:
    return ssl.create_default_context(
        cafile=os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or None)


def best_wheel(files: list[dict], hashes: set[str], target: Target) -> tuple[dict | None, dict | None]:
    """(the wheel pip would take for the target among the hashed ones, the best wheel
    regardless of hashes)."""
    rank = {tag: i for i, tag in enumerate(target.tags())}
    ranked = []
    for f in files:
        _, _, _, tags = parse_wheel_filename(f["filename"])
        score = min((rank[t] for t in tags if t in rank), default=None)
        if score is not None:
            ranked.append((score, f))
    ranked.sort(key=lambda item: item[0])
    allowed = [f for _, f in ranked if f["sha256"] in hashes]
    return (allowed[0] if allowed else None), (ranked[0][1] if ranked else None)


def isolated_pip_env() -> dict[str, str]:
    """pip without the host's configuration (extra indexes, find-links, constraints): only TLS
    settings pass through."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    for name in ("PIP_CERT", "PIP_CLIENT_CERT", "PIP_DEFAULT_TIMEOUT"):
        if name in os.environ:
            env[name] = os.environ[name]
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def pip_download(pins: list[Pin], target: Target, dest: Path, sources: list[str]) -> str:
    """pip's own download of exactly these pins for the target; '' or pip's error."""
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "target.txt"
        req.write_text("".join(f"{p.name}=={p.version} "
                               + " ".join(f"--hash=sha256:{h}" for h in p.hashes) + "\n"
                               for p in pins))
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--require-hashes", "--implementation", "cp",
               "--python-version", target.full, "-d", str(dest), "-r", str(req),
               *[arg for p in target.platforms() for arg in ("--platform", p)], *sources]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=isolated_pip_env())
    return "" if proc.returncode == 0 else (proc.stderr.strip() or proc.stdout.strip())


def requires(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist()
                      if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        metadata = HeaderParser().parsestr(archive.read(member).decode("utf-8", "replace"))
    return [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]


def torch_sources() -> list[str]:
    """Where the '+cpu' builds PyPI does not serve come from: PyTorch's index when its host
    resolves, else the find-links of pip's own configuration (as the bootstrap installs it)."""
    from ..bootstrap import torch_index

    index = torch_index()
    if index:
        return ["--index-url", index]
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                          capture_output=True, text=True)
    links = re.findall(r"find-links='([^']*)'", proc.stdout)
    links += os.environ.get("PIP_FIND_LINKS", "").split()
    out = ["--no-index"]
    for value in dict.fromkeys(" ".join(links).split()):
        out += ["--find-links", value]
    return out


def check(lock: Path, in_file: Path | None = None, targets: list[Target] | None = None,
          cache: Cache | None = None, download: bool = True) -> list[Problem]:
    cache = cache or Cache()
    in_file = in_file or lock.with_suffix(".in")
    pins = parse_lock(lock.read_text())
    problems: list[Problem] = []
    for target in targets or targets_for(lock):
        problems += check_target(pins, lock.stem, in_file, target, cache, download)
    return problems


def check_target(pins: list[Pin], name: str, in_file: Path, target: Target, cache: Cache,
                 download: bool) -> list[Problem]:
    chosen, problems = select(pins, target)
    wheels: dict[str, Path] = {}
    from_pypi, local = [], []
    for pin in chosen.values():
        if "+" in pin.version:   # a local build (torch+cpu): not on PyPI by definition
            local.append(pin)
            continue
        files = cache.files(pin.name, pin.version)
        if not files:
            problems.append(Problem(pin.name, target, f"{pin.version}: no wheel on PyPI"))
            continue
        allowed, best = best_wheel(files, set(pin.hashes), target)
        if best is None:
            problems.append(Problem(pin.name, target, f"{pin.version}: no wheel for this "
                                                      "platform and Python on PyPI"))
        elif allowed is None:
            problems.append(Problem(pin.name, target, f"{pin.version}: missing hash of "
                                                      f"{best['filename']} ({best['sha256']})"))
        else:
            wheels[pin.name] = cache.wheels / allowed["filename"]
            from_pypi.append(pin)
    if problems:
        return problems
    missing = [p for p in from_pypi if not wheels[p.name].exists()]
    if download and missing:
        error = pip_download(missing, target, cache.wheels, ["--index-url", PYPI_SIMPLE])
        if error:
            return [Problem("(pip download)", target, error[-2000:])]
    if download and local and not all(
            any(_is(w, p) for w in cache.wheels.glob("*.whl")) for p in local):
        error = pip_download(local, target, cache.wheels, torch_sources())
        if error:
            return [Problem(p.name, target, f"{p.version}: {error[-1000:]}") for p in local]
    for pin in local:
        found = [w for w in cache.wheels.glob("*.whl") if _is(w, pin)
                 and _sha256(w) in pin.hashes and best_wheel(
                     [{"filename": w.name, "sha256": _sha256(w)}], set(pin.hashes), target)[0]]
        if not found:
            problems.append(Problem(pin.name, target, f"{pin.version}: no hashed wheel for "
                                                      "this platform and Python"))
        else:
            wheels[pin.name] = found[0]
    for pin_name, wheel in wheels.items():
        if not wheel.exists():
            problems.append(Problem(pin_name, target, f"pip did not fetch {wheel.name}"))
    if problems or name in NO_DEPS:
        return problems
    wanted = [r for r in roots(in_file) if r.marker is None or r.marker.evaluate(target.environment())]
    return problems + closure(chosen, wheels, wanted, target)


def closure(chosen: dict[str, Pin], wheels: dict[str, Path], root_reqs: list[Requirement],
            target: Target) -> list[Problem]:
    problems, seen = [], set()
    todo = [(req, "the .in file") for req in root_reqs]
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        pin = chosen.get(name)
        if pin is None:
            problems.append(Problem(name, target, f"missing from the lock (needed by {parent}: "
                                                  f"{req})"))
            continue
        if req.specifier and not req.specifier.contains(pin.version, prereleases=True):
            problems.append(Problem(name, target, f"{pin.version} does not satisfy {parent}: {req}"))
        for extra in ["", *sorted(req.extras)]:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            for dep in requires(wheels[name]):
                env = target.environment(extra)
                if dep.marker is None and extra:
                    continue   # already followed for the package itself
                if dep.marker is None or dep.marker.evaluate(env):
                    todo.append((dep, f"{name}{f'[{extra}]' if extra else ''} {pin.version}"))
    return sorted(set(problems), key=str)


def _is(wheel: Path, pin: Pin) -> bool:
    try:
        name, version, _, _ = parse_wheel_filename(wheel.name)
    except Exception:
        return False
    return name == pin.name and version == Version(pin.version)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str]) -> int:
    failed = 0
    for arg in argv:
        lock = Path(arg)
        problems = check(lock)
        for problem in problems:
            print(f"{lock.name}: {problem}")
        failed += bool(problems)
        print(f"{lock.name}: {'FAILED' if problems else 'ok'} for "
              + ", ".join(map(str, targets_for(lock))))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
