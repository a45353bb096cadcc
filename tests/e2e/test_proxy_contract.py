"""What the proxy forwards and refuses, proven against a recording upstream: merged sampling
parameters, clamping, 401s, 429s with Retry-After, and the request timeout."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

SECTION = """\
  temperature: 0.6
  top_p: {value: 0.5, enforce: true}
  top_k: 20
  repetition_penalty: 1.05
  max_tokens: 1024
  stop: ["###"]
  max_parallel_requests: 2
  request_timeout: 3
"""


@pytest.fixture(scope="module")
def proxy(recording_proxy_factory):
    return recording_proxy_factory(SECTION)


@pytest.fixture(scope="module")
def rpm_proxy(recording_proxy_factory):
    return recording_proxy_factory("  rpm: 3\n")


def chat(proxy, payload: dict, key: str | None = "default", timeout: float = 30) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {proxy.key if key == 'default' else key}"}
    body = {"model": "recorder", "messages": [{"role": "user", "content": "hi"}], **payload}
    return httpx.post(f"{proxy.base_url}/v1/chat/completions", json=body, headers=headers,
                      timeout=timeout)


def forwarded(proxy) -> dict:
    return proxy.upstream.bodies[-1]


SAMPLING = ("temperature", "top_p", "top_k", "repetition_penalty", "max_tokens")


def test_defaults_fill_in_what_the_client_left_out(proxy):
    response = chat(proxy, {})
    assert response.status_code == 200, response.text
    body = forwarded(proxy)
    assert {k: body.get(k) for k in SAMPLING} == {
        "temperature": 0.6, "top_p": 0.5, "top_k": 20, "repetition_penalty": 1.05,
        "max_tokens": 1024}
    assert body["stop"] == ["###"]
    assert body["model"] == "vllm_agent"


def test_client_values_beat_defaults_and_lose_to_enforced(proxy):
    response = chat(proxy, {"temperature": 0.1, "top_p": 0.99, "max_tokens": 100,
                            "top_k": 5, "repetition_penalty": 1.3, "stop": ["END"]})
    assert response.status_code == 200, response.text
    body = forwarded(proxy)
    assert {k: body.get(k) for k in SAMPLING} == {
        "temperature": 0.1, "top_p": 0.5, "top_k": 5, "repetition_penalty": 1.3,
        "max_tokens": 100}
    assert body["stop"] == ["END"]


def test_max_tokens_above_the_cap_is_clamped_not_rejected(proxy):
    response = chat(proxy, {"max_tokens": 32000})
    assert response.status_code == 200, response.text
    assert forwarded(proxy)["max_tokens"] == 1024


def test_max_tokens_leaves_room_for_a_long_prompt(proxy):
    prompt = "word " * 3000  # 15000 characters: at most 5000 tokens by our bound
    response = chat(proxy, {"max_tokens": 1000, "messages": [{"role": "user", "content": prompt}]})
    assert response.status_code == 200, response.text
    sent = forwarded(proxy)["max_tokens"]
    assert 1 <= sent < 1000


def test_the_upstream_gets_the_internal_key_not_the_client_key(proxy):
    chat(proxy, {})
    auth = {k.lower(): v for k, v in proxy.upstream.headers[-1].items()}["authorization"]
    assert auth == "Bearer sk-upstream-key"


@pytest.mark.parametrize("key, message", [
    (None, "Authentication Error: no API key given (send 'Authorization: Bearer <key>' or "
           "'x-api-key: <key>')"),
    ("sk-wrong", "Authentication Error: invalid API key"),
    ("' OR '1'='1", "Authentication Error: invalid API key"),
    ("x" * 10240, "Authentication Error: invalid API key"),
])
def test_missing_or_wrong_key_is_401(proxy, key, message):
    before = len(proxy.upstream.bodies)
    response = chat(proxy, {}, key=key)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == message
    assert len(proxy.upstream.bodies) == before


def test_anthropic_route_needs_the_key_too(proxy):
    response = httpx.post(f"{proxy.base_url}/v1/messages", headers={"x-api-key": "sk-wrong"},
                          json={"model": "recorder", "max_tokens": 10,
                                "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 401


def test_more_than_max_parallel_requests_get_429(proxy):
    proxy.upstream.release.clear()
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        held = [pool.submit(chat, proxy, {"messages": [{"role": "user", "content": "hold"}]})
                for _ in range(2)]
        deadline = time.monotonic() + 10
        while proxy.upstream.in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.upstream.in_flight == 2
        third = chat(proxy, {})
        proxy.upstream.release.set()
        statuses = sorted(f.result().status_code for f in held)
    assert third.status_code == 429, third.text
    assert int(third.headers["retry-after"]) > 0
    assert statuses == [200, 200]


def test_over_the_per_key_rate_gets_429_with_retry_after(rpm_proxy):
    statuses = [chat(rpm_proxy, {}).status_code for _ in range(3)]
    fourth = chat(rpm_proxy, {})
    assert statuses == [200, 200, 200]
    assert fourth.status_code == 429, fourth.text
    assert int(fourth.headers["retry-after"]) > 0


def test_request_timeout_is_enforced(proxy):
    started = time.monotonic()
    response = chat(proxy, {"messages": [{"role": "user", "content": "sleep:10"}]})
    elapsed = time.monotonic() - started
    assert response.status_code == 408, response.text
    assert elapsed < 8, f"the client waited {elapsed:.1f}s for a 3s timeout"
