"""An aarch64 Debian root run under qemu-user: the target's CPU architecture on an x86_64 box.

The product's target (DGX Spark) is aarch64. This module makes, once, a minimal Debian root
for arm64 with debootstrap and runs commands in it through the kernel's binfmt_misc +
qemu-aarch64-static, so the project's own code and its locked dependencies are exercised on
the target's architecture (tests/e2e/test_aarch64.py). Standard library only.

    ${MMS_CACHE_DIR:-~/.cache/vllm-mms}/roots/arm64-<suite>-<sha256 of the recipe>[:12]/

The root is keyed by its inputs (suite, package list, RECIPE_VERSION); a marker file says it
finished, a lock file keeps two runs from building it at once. Inside it, the project's
environments live in its own cache (ROOT_CACHE_DIR), built by the project's bootstrap with the
aarch64 pip, keyed by their lock's hash like on the host.

Commands run in a private mount namespace (unshare): /proc, /dev and the checkout are mounted
into the root there, and vanish with the last process of the command, however it ends.
Needs root, Linux, and (to install the host tools) apt-get.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ..errors import UserError
from ..paths import ROOT, cache_dir
from ..progress import Spinner

RECIPE_VERSION = 1          # bump when the way the root is made changes
SUITE = "bookworm"
ARCH = "arm64"
PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
HOST_PACKAGES = ("qemu-user-static", "binfmt-support", "debootstrap")
MIRROR = "http://deb.debian.org/debian"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ROOT_CA_BUNDLE = "/etc/ssl/host-ca-bundle.crt"   # inside the root; apt never touches it
ROOT_CACHE_DIR = "/var/cache/vllm-mms"            # MMS_CACHE_DIR for runs inside the root
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class EmulationUnavailable(UserError):
    """This machine cannot make or run the aarch64 root (not root, no apt-get, ...)."""


def say(msg: str) -> None:
    print(f"[aarch64] {msg}", file=sys.stderr, flush=True)


def recipe() -> dict:
    return {"version": RECIPE_VERSION, "suite": SUITE, "arch": ARCH, "packages": list(PACKAGES)}


def root_dir() -> Path:
    digest = hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "roots" / f"{ARCH}-{SUITE}-{digest}"


# ----------------------------------------------------------------------------- host set-up

def _check_host() -> None:
    if not sys.platform.startswith("linux"):
        raise EmulationUnavailable(f"the aarch64 root needs Linux (this is {sys.platform})")
    if os.geteuid() != 0:
        raise EmulationUnavailable("the aarch64 root needs root (debootstrap, chroot, mounts); "
                                   "run the tests as root")
    if not shutil.which("unshare") or not shutil.which("chroot"):
        raise EmulationUnavailable("the aarch64 root needs `unshare` and `chroot` (util-linux, "
                                   "coreutils)")


def _host_tools_missing() -> list[str]:
    missing = []
    if not shutil.which("debootstrap"):
        missing.append("debootstrap")
    if not shutil.which("qemu-aarch64-static") and not shutil.which("qemu-aarch64"):
        missing.append("qemu-user-static")
    if not shutil.which("update-binfmts"):
        missing.append("binfmt-support")
    return missing


def _run_logged(cmd: Sequence[str], log: Path, label: str,
                env: Optional[Mapping[str, str]] = None, timeout: float = 1800) -> None:
    """Run a slow step with a progress line; on failure one line with the log's last error."""
    with open(log, "a") as handle, Spinner(f"[aarch64] {label}"):
        handle.write(f"$ {shlex.join(cmd)}\n")
        handle.flush()
        try:
            result = subprocess.run(list(cmd), stdout=handle, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=dict(env or os.environ),
                                    timeout=timeout)
            code = result.returncode
        except subprocess.TimeoutExpired:
            code = f"timeout after {timeout:.0f}s"
    if code != 0:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        hint = next((ln for ln in reversed(lines) if "E:" in ln or "rror" in ln),
                    lines[-1] if lines else "")
        raise EmulationUnavailable(f"{label} failed ({code}): {hint.strip()} (log: {log})")


def ensure_host_tools(log: Path) -> None:
    missing = _host_tools_missing()
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise EmulationUnavailable(f"{', '.join(missing)} missing and no apt-get to install "
                                   f"them; install {' '.join(HOST_PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run_logged(["apt-get", "update", "-q"], log, "apt-get update", env)
    _run_logged(["apt-get", "install", "-y", "-q", "--no-install-recommends", *HOST_PACKAGES],
                log, f"apt-get install {' '.join(HOST_PACKAGES)}", env)
    if _host_tools_missing():
        raise EmulationUnavailable(f"still missing after apt-get: "
                                   f"{', '.join(_host_tools_missing())} (log: {log})")


def ensure_binfmt() -> None:
    """binfmt_misc mounted and qemu-aarch64 registered and enabled (kernel-wide state)."""
    if not BINFMT.is_dir():
        raise EmulationUnavailable(f"{BINFMT} does not exist: this kernel has no binfmt_misc")
    if not (BINFMT / "register").exists():
        result = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise EmulationUnavailable(f"cannot mount binfmt_misc on {BINFMT}: "
                                       f"{result.stderr.strip()}")
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        result = subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"],
                                capture_output=True, text=True)
        if not entry.exists() or not entry.read_text().startswith("enabled"):
            raise EmulationUnavailable("cannot enable qemu-aarch64 in binfmt_misc: "
                                       f"{(result.stderr or result.stdout).strip()}")


# ----------------------------------------------------------------------------- the root

def ensure_root() -> Path:
    """The aarch64 Debian root, made once (~3 min + host packages); returns its path."""
    _check_host()
    target = root_dir()
    marker = target / ".mms-complete"
    target.parent.mkdir(parents=True, exist_ok=True)
    log = target.parent / f"{target.name}.log"
    if not marker.exists() or _host_tools_missing():
        with open(target.parent / f".{target.name}.lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            ensure_host_tools(log)
            if not marker.exists():
                _build_root(target, marker, log)
    ensure_binfmt()
    return target


def _build_root(target: Path, marker: Path, log: Path) -> None:
    ensure_binfmt()
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    say(f"making the aarch64 Debian root in {target} (one time, a few minutes; log: {log})")
    _run_logged(["debootstrap", f"--arch={ARCH}", "--variant=minbase",
                 f"--include={','.join(PACKAGES)}", SUITE, str(partial), MIRROR],
                log, f"debootstrap {ARCH} {SUITE}", timeout=3600)
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    (target / ROOT_CACHE_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(recipe()) + "\n")


def _refresh_ca(root: Path) -> None:
    """pip in the root trusts what the host trusts (TLS may pass an intercepting proxy)."""
    if HOST_CA_BUNDLE.exists():
        shutil.copyfile(HOST_CA_BUNDLE, root / ROOT_CA_BUNDLE.lstrip("/"))


def root_environment(extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The whole environment of a command in the root: nothing leaks in from the host."""
    env = {"PATH": ROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
           "MMS_CACHE_DIR": ROOT_CACHE_DIR, "PIP_CERT": ROOT_CA_BUNDLE,
           "SSL_CERT_FILE": ROOT_CA_BUNDLE, "REQUESTS_CA_BUNDLE": ROOT_CA_BUNDLE,
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_DEFAULT_TIMEOUT": "180",
           "PYTHONDONTWRITEBYTECODE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    for name in ("CI", "TERM"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra or {})
    return env


# The mounts exist only in the command's own mount namespace: they go when it ends.
_MOUNT_SCRIPT = r"""
set -e
root="$1"; shift
nbinds="$1"; shift
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
while [ "$nbinds" -gt 0 ]; do
  src="$1"; dst="$root$2"; mode="$3"; shift 3
  mkdir -p "$dst"
  mount --bind "$src" "$dst"
  if [ "$mode" = ro ]; then mount -o remount,bind,ro "$dst"; fi
  nbinds=$((nbinds - 1))
done
exec chroot "$root" "$@"
"""


def root_command(root: Path, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 cwd: str = "/", binds: Sequence[tuple[str, str, str]] = ()) -> list[str]:
    """The host argv that runs `argv` in the root with a clean environment.
    binds: (host path, path inside the root, "ro"|"rw")."""
    flat = [part for bind in binds for part in bind]
    inner = ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in root_environment(env).items()),
             "/bin/sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", cwd, *argv]
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
            _MOUNT_SCRIPT, "sh", str(root), str(len(binds)), *flat, *inner]


def checkout_bind() -> tuple[str, str, str]:
    """The checkout, read-only, at the same path inside the root as on the host (so paths in
    the project's output are the same on both sides)."""
    return (str(ROOT), str(ROOT), "ro")


def run(root: Path, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
        cwd: str = "/", binds: Sequence[tuple[str, str, str]] = (),
        timeout: float = 600) -> subprocess.CompletedProcess:
    _refresh_ca(root)
    return subprocess.run(root_command(root, argv, env, cwd, binds), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def popen(root: Path, argv: Sequence[str], log: Path, env: Optional[Mapping[str, str]] = None,
          cwd: str = "/", binds: Sequence[tuple[str, str, str]] = ()) -> subprocess.Popen:
    """A long-running command in the root, in its own session (stop it with processes.terminate)."""
    _refresh_ca(root)
    with open(log, "ab") as handle:
        return subprocess.Popen(root_command(root, argv, env, cwd, binds), stdout=handle,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def ensure_tools_env(root: Path) -> str:
    """The project's tools environment (requirements/dev.txt) made in the root by the project's
    own bootstrap with the aarch64 pip, cached in the root by the lock's hash. Returns the
    python path inside the root."""
    log = root.parent / f"{root.name}.tools.log"
    with open(log, "w") as handle, Spinner("[aarch64] tools environment (aarch64 pip, "
                                           "emulated; cached by the lock's hash)"):
        _refresh_ca(root)
        proc = subprocess.run(root_command(root, ["python3", "-m", "vllm_mms.bootstrap",
                                                  "--ensure", "tools"],
                                           {"PYTHONPATH": str(ROOT / "src")},
                                           binds=[checkout_bind()]),
                              stdout=subprocess.PIPE, stderr=handle, text=True, timeout=3600,
                              stdin=subprocess.DEVNULL)
        result_path = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if proc.returncode != 0 or not result_path:
            # The bootstrap names paths inside the root: say where they are on the host.
            text = log.read_text(errors="replace").replace(ROOT_CACHE_DIR,
                                                           f"{root}{ROOT_CACHE_DIR}")
            errors = [ln.replace("[runMe] ", "").strip() for ln in text.splitlines()
                      if "ERROR" in ln][-3:]
            raise UserError(f"the aarch64 tools environment (requirements/dev.txt, aarch64 pip) "
                            f"failed (exit {proc.returncode}): {' | '.join(errors)} "
                            f"(log: {log}; pip's log under {root}{ROOT_CACHE_DIR}/venvs/)")
    return result_path


def main(argv: list[str]) -> int:
    """python -m vllm_mms.dev.emulation [root|tools|shell]: make the root (and the tools env)."""
    try:
        root = ensure_root()
        print(root)
        if argv[:1] in (["tools"], ["shell"]):
            print(ensure_tools_env(root))
        if argv[:1] == ["shell"]:
            return subprocess.call(root_command(root, ["/bin/bash"], binds=[checkout_bind()],
                                                cwd=str(ROOT)))
    except UserError as exc:
        say(exc.message)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
