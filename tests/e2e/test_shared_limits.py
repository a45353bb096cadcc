"""Several proxies, one set of limits: two real LiteLLM proxies (our config and hooks) share
one key's requests-per-minute and parallel-request counts through the local Redis
(PROXY_REDIS_URL → LiteLLM's coordination Redis). The control pair, without Redis, lets
each proxy count alone: the same traffic passes twice the limit, so the test can fail."""

from __future__ import annotations

import concurrent.futures
import secrets
import time

import pytest

from vllm_mms import environment

from .conftest import free_port


def pair(factory, section: str, redis_url: str | None):
    # A fresh key per pair: its counters in Redis belong to this test run alone.
    key = "sk-shared-" + secrets.token_hex(8)
    vars_env = f"PROXY_REDIS_URL={redis_url}\n" if redis_url else ""
    return [factory(section, vars_env=vars_env, master_key=key) for _ in range(2)]


def alternate(proxies, count: int) -> list[int]:
    return [proxies[i % 2].chat().status_code for i in range(count)]


def test_one_keys_rpm_holds_across_two_proxies(recording_proxy_factory, redis_url):
    shared = pair(recording_proxy_factory, "  rpm: 4\n", redis_url)
    statuses = alternate(shared, 6)
    print(f"\n[e2e] rpm 4 over two proxies sharing Redis: {statuses}")
    assert statuses == [200, 200, 200, 200, 429, 429]
    refused = shared[0].chat()
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    for proxy in shared:
        proxy.stop()

    alone = pair(recording_proxy_factory, "  rpm: 4\n", None)
    control = alternate(alone, 8)
    print(f"[e2e] rpm 4 over two proxies counting alone: {control}")
    assert control == [200] * 8  # each proxy saw only 4
    for proxy in alone:
        proxy.stop()


def test_parallel_requests_count_across_two_proxies(recording_proxy_factory, redis_url):
    shared = pair(recording_proxy_factory, "  max_parallel_requests: 2\n", redis_url)
    for proxy in shared:
        proxy.upstream.release.clear()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        held = [pool.submit(proxy.chat, "hold") for proxy in shared]  # one in flight on each
        deadline = time.monotonic() + 15
        while (sum(p.upstream.in_flight for p in shared) < 2 and time.monotonic() < deadline):
            time.sleep(0.05)
        assert [p.upstream.in_flight for p in shared] == [1, 1]
        third = shared[0].chat()
        for proxy in shared:
            proxy.upstream.release.set()
        statuses = [f.result().status_code for f in held]
    print(f"\n[e2e] max_parallel 2 over two proxies: held {statuses}, third {third.status_code}")
    assert statuses == [200, 200]
    assert third.status_code == 429, third.text
    assert int(third.headers["retry-after"]) > 0
    # Released: the shared count went back down, both proxies serve again.
    assert [p.chat().status_code for p in shared] == [200, 200]
    for proxy in shared:
        proxy.stop()


@pytest.mark.skipif(environment.get("MMS_TEST_PROXY_WORKERS") > 1,
                    reason="with several workers and Redis down each worker counts alone: "
                           "which of them a request reaches decides its status")
def test_redis_down_each_proxy_keeps_serving_and_counts_alone(recording_proxy_factory):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    proxy = recording_proxy_factory("  rpm: 4\n", vars_env=f"PROXY_REDIS_URL={dead}\n",
                                    master_key="sk-shared-" + secrets.token_hex(8))
    statuses = [proxy.chat().status_code for _ in range(6)]
    print(f"\n[e2e] rpm 4, Redis unreachable: {statuses}")
    assert statuses == [200, 200, 200, 200, 429, 429]
    proxy.stop()

