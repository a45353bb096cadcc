"""The target's architecture for real: the project's first steps in an aarch64 Debian root
under qemu-user (vllm_mms.dev.emulation), with the project's code from this checkout and its
dependencies installed from the checkout's hash locks by the aarch64 pip.

What this proves: the locks install on aarch64 (every wheel has an aarch64 hash), and on
aarch64 `./runMe.sh` (its bootstrap included), `render` and `fit` for every catalog model and
`doctor` give the same exit codes and the same output as on this x86_64 host, and LiteLLM
started by local mode's code answers a chat request. Emulated Python is ~10x slower: the
deadlines are generous. The first run makes the root (~4 min) and the tools environment
(several minutes of emulated pip); both are cached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from vllm_mms.config import schema
from vllm_mms.dev import emulation
from vllm_mms.stack import processes

from ..conftest import ROOT
from .conftest import MASTER_KEY, RECORDING_MODEL, copy_project, free_port
from .upstream import RecordingUpstream

# The first test makes the root and the environment (cached): minutes, not seconds.
pytestmark = [pytest.mark.aarch64, pytest.mark.timeout(3600)]

CATALOG = schema.available_models(ROOT / "models")
TIMINGS: dict[str, float] = {}


def _unavailable(message: str) -> None:
    """No emulation here: a failure in CI (it must run there), a loud skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"aarch64 emulation is required in CI: {message}")
    pytest.skip(f"aarch64 emulation unavailable: {message}")


@pytest.fixture(scope="session")
def arm_root() -> Path:
    started = time.monotonic()
    try:
        root = emulation.ensure_root()
    except emulation.EmulationUnavailable as exc:
        _unavailable(exc.message)
    TIMINGS["root"] = time.monotonic() - started
    return root


@pytest.fixture(scope="session")
def arm_tools(arm_root) -> str:
    """The tools environment in the root (requirements/dev.txt, aarch64 pip, cached)."""
    started = time.monotonic()
    try:
        python = emulation.ensure_tools_env(arm_root)
    except emulation.UserError as exc:
        pytest.fail(exc.message)
    TIMINGS["tools env"] = time.monotonic() - started
    print(f"\n[aarch64] root {TIMINGS['root']:.0f}s, tools env {TIMINGS['tools env']:.0f}s")
    return python


@pytest.fixture(scope="session")
def scratch(tmp_path_factory) -> Path:
    """A directory at the same path on the host and in the root (bind-mounted read-write), so
    paths in the outputs of both sides are equal. It holds a copy of the host's NUMA node 0
    meminfo (fit's CPU share base): the root has no /sys of its own."""
    made = tmp_path_factory.mktemp("aarch64")
    node = Path("/sys/devices/system/node/node0/meminfo")
    if node.exists():
        shutil.copy(node, made / "node0-meminfo")
    return made


def _env(scratch: Path) -> dict[str, str]:
    return {"MMS_STATE_DIR": str(scratch / "state"),
            "MMS_NODE_MEMINFO": str(scratch / "node0-meminfo")}


def in_root(root: Path, argv: list[str], scratch: Path, timeout: float = 900,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    binds = [emulation.checkout_bind(), (str(scratch), str(scratch), "rw")]
    return emulation.run(root, argv, {**_env(scratch), **(env or {})}, cwd=str(scratch),
                         binds=binds, timeout=timeout)


def on_host(argv: list[str], scratch: Path) -> subprocess.CompletedProcess:
    """The same CLI on the host, with the same clean environment apart from the machine."""
    # An empty cache like the root's: fit reads a prepared checkpoint from the cache, and the
    # host's real one has it (the root's does not), which would change fit's numbers.
    empty_cache = scratch / "host-cache"
    empty_cache.mkdir(exist_ok=True)
    env = {**emulation.root_environment(_env(scratch)), "PATH": os.environ["PATH"],
           "MMS_CACHE_DIR": str(empty_cache), "PYTHONPATH": str(ROOT / "src"),
           "HOME": os.environ["HOME"]}
    return subprocess.run([sys.executable, "-m", "vllm_mms", *argv], capture_output=True,
                          text=True, env=env, cwd=scratch, timeout=120)


def runme(root: Path, args: list[str], scratch: Path) -> subprocess.CompletedProcess:
    """./runMe.sh itself inside the root: its bootstrap finds the root's tools environment."""
    started = time.monotonic()
    result = in_root(root, [str(ROOT / "runMe.sh"), *args], scratch)
    TIMINGS[" ".join(args[:2]) or "(listing)"] = time.monotonic() - started
    return result


def test_the_root_is_aarch64_with_debians_python(arm_root, scratch):
    result = in_root(arm_root, ["sh", "-c", "uname -m; python3 -c 'import platform, sys; "
                                "print(platform.machine(), *sys.version_info[:2])'"], scratch)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == ["aarch64", "aarch64 3 11", ""]
    assert os.uname().machine == "x86_64"  # ...on this host, which is not


def test_listing_matches_the_host(arm_root, arm_tools, scratch):
    result = runme(arm_root, [], scratch)
    host = on_host([], scratch)
    assert (result.returncode, host.returncode) == (0, 0), result.stderr
    assert result.stdout == host.stdout
    assert all(f"  {name}" in result.stdout for name in CATALOG)


@pytest.mark.parametrize("name", CATALOG)
def test_render_matches_the_host(arm_root, arm_tools, scratch, name):
    out = scratch / "render" / name
    args = ["render", name, "--out", str(out)]
    arm = runme(arm_root, args, scratch)
    arm_files = {p.name: p.read_text() for p in sorted(out.iterdir())} if out.is_dir() else {}
    shutil.rmtree(out, ignore_errors=True)
    host = on_host(args, scratch)
    host_files = {p.name: p.read_text() for p in sorted(out.iterdir())}
    assert arm.returncode == host.returncode == 0, arm.stderr
    assert arm.stdout == host.stdout   # the engine argv included
    assert '"vllm", "serve"' in arm.stdout
    assert arm_files == host_files and set(arm_files) == {"config.yaml", "models.yml"}


# fit's verdicts for the catalog on the assumed DGX Spark (this host has no GPU).
FIT_EXIT = {"glm47-flash": 0, "minilm-l6-cpu": 0, "qwen3-next-coder": 0, "smollm2-135m-cpu": 0,
            "smollm2-135m-cpu-fast": 0, "step-3.5-flash": 1, "step-3.5-flash-hcsw": 1}


@pytest.mark.parametrize("name", CATALOG)
def test_fit_matches_the_host(arm_root, arm_tools, scratch, name):
    arm = runme(arm_root, ["fit", name], scratch)
    host = on_host(["fit", name], scratch)
    assert (arm.returncode, host.returncode) == (FIT_EXIT[name], FIT_EXIT[name]), arm.stderr
    assert (arm.stdout, arm.stderr) == (host.stdout, host.stderr)
    assert arm.stdout.startswith(f"fit {name} ")


def test_doctor_runs_and_says_there_is_no_docker(arm_root, arm_tools, scratch):
    arm = runme(arm_root, ["doctor"], scratch)
    lines = arm.stdout.splitlines()
    assert arm.returncode == 0, arm.stdout + arm.stderr   # no Docker: local mode, which fits
    assert "ok    docker: not installed (not needed in local mode)" in lines
    assert [f"ok    model {name}: valid" for name in CATALOG] == \
        [ln for ln in lines if ln.startswith("ok    model ")]
    assert any(ln.startswith("ok    memory fit: smollm2-135m-cpu: fits") for ln in lines)
    assert lines[-1] == "all checks passed" and arm.stderr == ""


def test_litellm_on_aarch64_answers_through_local_modes_proxy(arm_root, arm_tools, scratch):
    """LiteLLM from the root's environment, started by local mode's proxy_process, in front of
    a stub engine on the host (the root shares the host's network)."""
    work = scratch / "proxy"
    project = copy_project(work / "project")
    (project / "models" / "recorder.yml").write_text(RECORDING_MODEL % "  temperature: 0.6\n")
    port = free_port()
    with RecordingUpstream() as upstream:
        log = work / "driver.log"
        started = time.monotonic()
        driver = emulation.popen(
            arm_root, [arm_tools, "-m", "tests.e2e.aarch64_proxy", str(project), "recorder",
                       f"http://127.0.0.1:{upstream.port}/v1", str(port), MASTER_KEY,
                       str(work)],
            log, {**_env(scratch), "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}, cwd=str(ROOT),
            binds=[emulation.checkout_bind(), (str(scratch), str(scratch), "rw")])
        proxy_log = work / "logs" / "proxy.log"
        try:
            deadline = time.monotonic() + 900
            while not processes.http_ok(f"http://127.0.0.1:{port}/health/liveliness"):
                assert driver.poll() is None, (f"exited {driver.returncode}:\n{processes.tail(log)}"
                                               f"\n{processes.tail(proxy_log)}")
                assert time.monotonic() < deadline, processes.tail(proxy_log)
                time.sleep(1)
            TIMINGS["proxy start"] = time.monotonic() - started
            answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=300,
                                headers={"Authorization": f"Bearer {MASTER_KEY}"},
                                json={"model": "recorder",
                                      "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == "recorded"
            assert upstream.bodies[-1]["temperature"] == 0.6
            pid_line = next(ln for ln in log.read_text().splitlines() if ln.startswith("proxy pid"))
            proxy_pid = int(pid_line.split()[-1])
            assert Path(f"/proc/{proxy_pid}/root").resolve() == arm_root.resolve()
            assert "aarch64" in Path(f"/proc/{proxy_pid}/exe").resolve().name  # qemu runs it
        finally:
            processes.terminate([driver.pid], grace=20)
            for line in log.read_text().splitlines():  # the proxy has its own session
                if line.startswith("proxy pid") and processes.alive(int(line.split()[-1])):
                    processes.terminate([int(line.split()[-1])], grace=5)
    print("\n[aarch64] timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in TIMINGS.items()))


def _lock_entry(lock: Path, package: str) -> str:
    """One package's entry (pin and hashes) from a hash lock."""
    lines = lock.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.lower().startswith(f"{package}=="))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")),
               len(lines))
    return "\n".join(lines[start:end]) + "\n"


def test_a_lock_without_the_aarch64_hash_fails_in_the_root(arm_root, scratch):
    """The check is not vacuous: pip in the root picks the aarch64 wheel of a compiled package
    and accepts it with the checkout's lock, but refuses it, naming the package, once the
    aarch64 hash is taken out of that lock (what an x86_64-only lock looks like)."""
    work = scratch / "hashes"
    work.mkdir()
    entry = _lock_entry(ROOT / "requirements" / "dev.txt", "pyyaml")
    (work / "lock.txt").write_text(entry)
    download = ["python3", "-m", "pip", "download", "--no-deps", "--require-hashes",
                "--only-binary=:all:", "-d", str(work / "wheels"), "-r"]
    full = in_root(arm_root, [*download, str(work / "lock.txt")], scratch, timeout=600)
    assert full.returncode == 0, f"the checkout's lock has no aarch64 hash for pyyaml:\n{full.stdout[-2000:]}{full.stderr[-2000:]}"
    wheels = list((work / "wheels").glob("*.whl"))
    assert len(wheels) == 1 and "aarch64" in wheels[0].name, wheels
    import hashlib

    digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
    shutil.rmtree(work / "wheels")
    kept = [ln for ln in entry.splitlines() if digest not in ln]
    kept[-1] = kept[-1].rstrip(" \\")
    (work / "no-aarch64.txt").write_text("\n".join(kept) + "\n")
    broken = in_root(arm_root, [*download, str(work / "no-aarch64.txt")], scratch, timeout=600)
    assert broken.returncode == 1
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in broken.stderr, broken.stderr
    assert "pyyaml" in broken.stderr.lower() and digest in broken.stderr
