"""The aarch64 root's guards: one clear line when this machine cannot make it (no emulation
needed for these; tests/e2e/test_aarch64.py runs the real thing)."""

from __future__ import annotations

import pytest

from vllm_mms.dev import emulation


def test_not_root_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(emulation.os, "geteuid", lambda: 1000)
    with pytest.raises(emulation.EmulationUnavailable) as caught:
        emulation.ensure_root()
    assert caught.value.message == ("the aarch64 root needs root (debootstrap, chroot, mounts); "
                                    "run the tests as root")


def test_missing_tools_without_apt_get_name_the_packages(monkeypatch, tmp_path):
    monkeypatch.setattr(emulation.shutil, "which", lambda name: None)
    with pytest.raises(emulation.EmulationUnavailable) as caught:
        emulation.ensure_host_tools(tmp_path / "log")
    assert caught.value.message == (
        "debootstrap, qemu-user-static, binfmt-support missing and no apt-get to install them; "
        "install qemu-user-static binfmt-support debootstrap")


def test_the_root_is_keyed_by_its_recipe(monkeypatch):
    first = emulation.root_dir()
    monkeypatch.setattr(emulation, "PACKAGES", (*emulation.PACKAGES, "curl"))
    assert emulation.root_dir() != first
    assert first.parent == emulation.cache_dir() / "roots"


def test_commands_in_the_root_get_a_clean_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-host-secret")
    argv = emulation.root_command(tmp_path, ["true"], {"X": "1"})
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    inner = argv[argv.index("/usr/bin/env"):]
    assert inner[1] == "-i" and "X=1" in inner and "PIP_CERT=/etc/ssl/host-ca-bundle.crt" in inner
    assert not any("sk-host-secret" in part for part in argv)
