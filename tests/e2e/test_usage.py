"""Usage rows and database keys through the real LiteLLM proxy (recording upstream), on
PostgreSQL (a fresh database) and SQLite; the database cut for a while under steady load."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlparse

import httpx
import pytest

from vllm_mms import environment
from vllm_mms.proxy.store import Store

from .faults import PausableTcpProxy

FAST = {"MMS_USAGE_FLUSH_SECONDS": "0.2", "MMS_KEY_CACHE_SECONDS": "1"}
SECTION = "  max_tokens: 64\n"


def post(proxy, key: str, model: str = "recorder", content: str = "hi") -> httpx.Response:
    return httpx.post(f"{proxy.base_url}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "messages": [{"role": "user", "content": content}]})


def rows(url: str) -> list[dict]:
    async def fetch():
        store = Store(url)
        try:
            return await store.usage_rows(0)
        finally:
            await store.close()
    return asyncio.run(fetch())


def wait_rows(url: str, count: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    found = rows(url)
    while len(found) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        found = rows(url)
    return found


def create_key(url: str, name: str, **limits) -> str:
    async def create():
        store = Store(url)
        try:
            await store.migrate()
            return await store.create_key(name, **limits)
        finally:
            await store.close()
    return asyncio.run(create())


def revoke(url: str, name: str) -> None:
    async def run():
        store = Store(url)
        try:
            await store.revoke_key(name)
        finally:
            await store.close()
    asyncio.run(run())


@pytest.fixture(params=["sqlite", "postgres"])
def db_proxy(request, recording_proxy_factory, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'usage.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    asyncio.run(_reset(url))
    proxy = recording_proxy_factory(SECTION, env={"MMS_DATABASE_URL": url, **FAST})
    yield proxy, url
    proxy.stop()


async def _reset(url: str) -> None:
    store = Store(url)
    await store.migrate()
    await store.execute("DELETE FROM mms_usage")
    await store.execute("DELETE FROM mms_api_keys")
    await store.close()


def test_n_requests_give_exactly_n_usage_rows_with_the_reported_tokens(db_proxy):
    proxy, url = db_proxy
    key = create_key(url, "alice")
    responses = [post(proxy, key) for _ in range(5)] + [post(proxy, proxy.key) for _ in range(3)]
    assert [r.status_code for r in responses] == [200] * 8
    found = wait_rows(url, 8)
    assert len(found) == 8
    assert sorted(r["key_name"] for r in found) == ["alice"] * 5 + ["master"] * 3
    for row, response in zip(sorted(found, key=lambda r: r["ts"]), responses):
        usage = response.json()["usage"]
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            usage["prompt_tokens"], usage["completion_tokens"])
        assert row["status"] == 200 and row["model"] == "recorder"
        assert row["latency_ms"] > 0
    assert all(key not in str(r) and proxy.key not in str(r) for r in found)


def test_database_keys_limits_models_and_revocation(db_proxy):
    proxy, url = db_proxy
    limited = create_key(url, "limited", rpm=2)
    other_model = create_key(url, "other-model", models=["some-other-model"])
    assert [post(proxy, limited).status_code for _ in range(2)] == [200, 200]
    third = post(proxy, limited)
    assert third.status_code == 429 and int(third.headers["retry-after"]) > 0
    refused = post(proxy, other_model)
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == "this key may not use the model 'recorder'"
    doomed = create_key(url, "doomed")
    assert post(proxy, doomed).status_code == 200
    revoke(url, "doomed")
    time.sleep(1.5)  # MMS_KEY_CACHE_SECONDS=1 in this proxy
    assert post(proxy, doomed).status_code == 401


@pytest.mark.parametrize("key", ["' OR '1'='1", "'; DROP TABLE mms_api_keys; --",
                                 "x" * 10240, "sk-mms-\u00e9\u4e2d", "%00%27"])
def test_crafted_keys_are_401(db_proxy, key):
    proxy, url = db_proxy
    response = httpx.post(f"{proxy.base_url}/v1/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {key}".encode("utf-8")},
                          json={"model": "recorder", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 401
    assert asyncio.run(_tables_exist(url))


async def _tables_exist(url: str) -> bool:
    store = Store(url)
    try:
        await store.fetchall("SELECT count(*) FROM mms_api_keys")
        return True
    finally:
        await store.close()


OUTAGE_SECONDS = environment.get("MMS_TEST_OUTAGE_SECONDS")


def cuttable(postgres_url: str) -> tuple[PausableTcpProxy, str]:
    """A line to the database that the test can cut, and the URL that goes through it."""
    asyncio.run(_reset(postgres_url))
    parsed = urlparse(postgres_url)
    cut = PausableTcpProxy(parsed.hostname, parsed.port or 5432)
    return cut, postgres_url.replace(f"{parsed.hostname}:{parsed.port or 5432}",
                                     f"127.0.0.1:{cut.port}")


def test_database_outage_under_steady_load_loses_nothing_within_the_bound(
        recording_proxy_factory, own_postgres_url):
    postgres_url = own_postgres_url
    cut, via_cut = cuttable(postgres_url)
    proxy = recording_proxy_factory(SECTION, env={"MMS_DATABASE_URL": via_cut, **FAST})
    statuses = []
    try:
        def load(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                statuses.append(post(proxy, proxy.key).status_code)
                time.sleep(0.25)
        load(3)
        cut.pause()
        load(OUTAGE_SECONDS)
        cut.resume()
        load(3)
        found = wait_rows(postgres_url, len(statuses), timeout=30)
    finally:
        cut.close()
    assert set(statuses) == {200}, "a request failed because of the database"
    assert len(found) == len(statuses)
    log = proxy.log.read_text(errors="replace")
    assert "usage database unavailable" in log and "usage database back after" in log


@pytest.mark.skipif(environment.get("MMS_TEST_PROXY_WORKERS") > 1,
                    reason="the queue bound is per worker: how many rows survive depends on "
                           "how the requests spread over the workers")
def test_queue_overflow_is_counted_and_logged(recording_proxy_factory, own_postgres_url):
    postgres_url = own_postgres_url
    cut, via_cut = cuttable(postgres_url)
    proxy = recording_proxy_factory(SECTION, env={"MMS_DATABASE_URL": via_cut,
                                                  "MMS_USAGE_QUEUE_ROWS": "10", **FAST})
    try:
        post(proxy, proxy.key)
        wait_rows(postgres_url, 1)
        cut.pause()
        statuses = [post(proxy, proxy.key).status_code for _ in range(25)]
        cut.resume()
        wait_rows(postgres_url, 11, timeout=30)
        time.sleep(1)
    finally:
        cut.close()
    assert statuses == [200] * 25
    assert len(rows(postgres_url)) == 11  # 1 before + the 10 the queue could hold
    log = proxy.log.read_text(errors="replace")
    assert "15 usage rows lost in total because the queue was full" in log


def test_daily_token_budget_is_enforced(db_proxy):
    proxy, url = db_proxy
    key = create_key(url, "budget", tokens_per_day=12)  # the recorder reports 5 + 1 tokens
    assert [post(proxy, key).status_code for _ in range(2)] == [200, 200]
    wait_rows(url, 2)
    time.sleep(1.5)  # past MMS_KEY_CACHE_SECONDS, so the new total is read
    third = post(proxy, key)
    assert third.status_code == 429
    assert third.json()["error"]["message"] == (
        "daily token budget of key 'budget' used up (12/12); it renews at 00:00 UTC")
    assert 0 < int(third.headers["retry-after"]) <= 86401


def test_streamed_requests_record_time_to_first_token(db_proxy):
    proxy, url = db_proxy
    with httpx.stream("POST", f"{proxy.base_url}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {proxy.key}"},
                      json={"model": "recorder", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}) as response:
        assert response.status_code == 200
        body = "".join(response.iter_text())
    assert "data:" in body
    found = wait_rows(url, 1)
    assert len(found) == 1 and found[0]["ttft_ms"] is not None and found[0]["ttft_ms"] >= 0
