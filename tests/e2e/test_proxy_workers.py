"""One proxy, two workers (PROXY_WORKERS=2), one set of limits. Each request is sent on a
keep-alive connection whose server side we find in /proc: one connection held by each worker,
so requests alternate between the workers for certain (not by the kernel's accept luck). With
Redis the per-key rpm and parallel limits are exact across the workers; the control (Redis
unreachable, each worker counting alone) lets twice the rpm through, so the test can fail."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import secrets
import time
from pathlib import Path

import pytest

from .conftest import free_port

WORKERS = 2


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def server_side_owner(proxy_port: int, client_port: int, workers: list[int]) -> int:
    """The worker whose socket is the server end of the connection from client_port."""
    wanted = (f"0100007F:{proxy_port:04X}", f"0100007F:{client_port:04X}")
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            inode = fields[9]
    assert inode is not None, f"no connection {wanted} in /proc/net/tcp"
    owners = [pid for pid in workers if inode in socket_inodes(pid)]
    assert len(owners) == 1, (owners, workers)
    return owners[0]


class Pinned:
    """A keep-alive connection to one worker, with the proxy key."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.key = key

    def chat(self, content: str = "hi") -> tuple[int, dict[str, str]]:
        body = json.dumps({"model": "recorder", "messages": [{"role": "user", "content": content}]})
        self.conn.request("POST", "/v1/chat/completions", body=body,
                          headers={"Authorization": f"Bearer {self.key}",
                                   "Content-Type": "application/json"})
        response = self.conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}


def one_connection_per_worker(proxy, deadline_s: float = 120) -> list[Pinned]:
    """New connections until each worker holds one (a worker still starting takes none)."""
    port = int(proxy.base_url.rsplit(":", 1)[1])
    deadline = time.monotonic() + deadline_s
    workers: list[int] = []
    while len(workers) < WORKERS and time.monotonic() < deadline:  # uvicorn spawns them
        workers = [p for p in children(proxy.proc.pid) if socket_inodes(p)]
        time.sleep(0.2)
    assert len(workers) == WORKERS, f"worker processes of {proxy.proc.pid}: {workers}"
    pinned: dict[int, Pinned] = {}
    tries = 0
    while time.monotonic() < deadline:
        tries += 1
        candidate = Pinned(port, proxy.key)
        candidate.conn.request("GET", "/health/liveliness")
        candidate.conn.getresponse().read()
        owner = server_side_owner(port, candidate.conn.sock.getsockname()[1], workers)
        if owner in pinned:
            candidate.conn.close()
            time.sleep(0.1)
        else:
            pinned[owner] = candidate
        if len(pinned) == WORKERS:
            print(f"\n[e2e] one connection on each worker: pids {sorted(pinned)}")
            return list(pinned.values())
    pytest.fail(f"{tries} connections in {deadline_s:.0f}s reached only worker(s) "
                f"{sorted(pinned)} of {workers}")


def start(recording_proxy_factory, section: str, redis: str):
    return recording_proxy_factory(
        section, vars_env=f"PROXY_REDIS_URL={redis}\nPROXY_WORKERS={WORKERS}\n",
        master_key="sk-workers-" + secrets.token_hex(8))


def test_rpm_is_exact_across_two_workers_and_not_without_redis(recording_proxy_factory,
                                                               redis_url):
    proxy = start(recording_proxy_factory, "  rpm: 4\n", redis_url)
    pinned = one_connection_per_worker(proxy)
    statuses = [pinned[i % 2].chat()[0] for i in range(6)]
    print(f"[e2e] rpm 4 over two workers sharing Redis: {statuses}")
    assert statuses == [200, 200, 200, 200, 429, 429]
    status, headers = pinned[1].chat()
    assert status == 429 and int(headers["retry-after"]) > 0
    proxy.stop()

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: each worker counts alone
    alone = start(recording_proxy_factory, "  rpm: 4\n", dead)
    pinned = one_connection_per_worker(alone)
    control = [pinned[i % 2].chat()[0] for i in range(8)]
    print(f"[e2e] rpm 4 over two workers counting alone: {control}")
    assert control == [200] * 8  # each worker saw only 4
    alone.stop()


def test_parallel_requests_are_exact_across_two_workers(recording_proxy_factory, redis_url):
    proxy = start(recording_proxy_factory, "  max_parallel_requests: 2\n", redis_url)
    pinned = one_connection_per_worker(proxy)
    third = Pinned(int(proxy.base_url.rsplit(":", 1)[1]), proxy.key)
    proxy.upstream.release.clear()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        held = [pool.submit(conn.chat, "hold") for conn in pinned]  # one in flight on each
        deadline = time.monotonic() + 15
        while proxy.upstream.in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.upstream.in_flight == 2
        status, headers = third.chat()
        proxy.upstream.release.set()
        statuses = [f.result()[0] for f in held]
    print(f"\n[e2e] max_parallel 2 over two workers: held {statuses}, third {status}")
    assert statuses == [200, 200]
    assert status == 429 and int(headers["retry-after"]) > 0
    assert [conn.chat()[0] for conn in pinned] == [200, 200]  # released on both
    proxy.stop()
