"""Every route the proxy exposes x every kind of caller: nobody gets a 2xx they should not.

The routes come from the proxy's OpenAPI document, generated in-process from the same pinned
LiteLLM (the running proxy does not serve /openapi.json or /docs: NO_OPENAPI, NO_DOCS). Path
parameters get a placeholder, bodies are `{}`. Callers: no key, a wrong key, a revoked
database key, a valid database key, the master key, and no key with a crafted Host /
X-Forwarded-* set. Only the allowlists below may answer 2xx without the master key.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time

import httpx
import pytest

from vllm_mms.proxy.store import Store

from .test_usage import FAST, SECTION, create_key, revoke

# Liveness and readiness: open by design (health checks of compose and orchestrators).
PUBLIC = {("GET", "/health/liveliness"), ("GET", "/health/readiness"),
          ("GET", "/health/liveness")}
# What a database key may do: the model APIs, nothing that administers the proxy.
MODEL_API = re.compile(r"^/(v1/)?(chat/completions|completions|messages(/count_tokens)?|"
                       r"responses|models|embeddings)$")

CALLERS = ("none", "wrong", "revoked", "valid", "master", "host")


def operations() -> list[tuple[str, str]]:
    from litellm.proxy.proxy_server import app

    document = app.openapi()
    return sorted((method.upper(), path) for path, item in document["paths"].items()
                  for method in item if method.upper() not in ("HEAD", "OPTIONS"))


def headers_for(caller: str, keys: dict[str, str]) -> dict[str, str]:
    if caller == "none":
        return {}
    if caller == "host":
        return {"Host": "localhost", "X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1",
                "X-Forwarded-Host": "localhost", "Origin": "http://localhost"}
    return {"Authorization": f"Bearer {keys[caller]}"}


@pytest.fixture(scope="module")
def matrix_proxy(recording_proxy_factory, tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('authdb') / 'usage.db'}"
    proxy = recording_proxy_factory(SECTION, env={"MMS_DATABASE_URL": url, **FAST})
    keys = {"wrong": "sk-mms-wrong-0000000000000000", "master": proxy.key,
            "valid": create_key(url, "matrix-valid"), "revoked": create_key(url, "matrix-revoked")}
    revoke(url, "matrix-revoked")
    time.sleep(1.5)  # past the key cache (MMS_KEY_CACHE_SECONDS=1)
    yield proxy, keys, url
    proxy.stop()


def test_no_unauthorised_2xx_on_any_route(matrix_proxy):
    proxy, keys, _ = matrix_proxy
    ops = operations()
    assert len(ops) > 500  # the whole surface, not a sample

    def call(job: tuple[str, str, str]) -> tuple[str, str, str, int]:
        caller, method, path = job
        target = re.sub(r"\{[^}]+\}", "test", path)
        try:
            response = httpx.request(method, proxy.base_url + target, json={}, timeout=10,
                                     headers=headers_for(caller, keys))
            return caller, method, path, response.status_code
        except httpx.HTTPError:
            return caller, method, path, 0  # no answer is not a 2xx

    jobs = [(caller, method, path) for caller in CALLERS if caller != "master"
            for method, path in ops]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, jobs))
    violations = []
    for caller, method, path, status in results:
        if not 200 <= status < 300 or (method, path) in PUBLIC:
            continue
        if caller == "valid" and MODEL_API.match(path):
            continue
        violations.append(f"{caller} {method} {path} -> {status}")
    print(f"\n[auth] {len(results)} requests over {len(ops)} routes x {len(CALLERS) - 1} callers; "
          f"unauthorised 2xx: {len(violations)}")
    assert violations == []
    # and the proxy still serves
    canary = httpx.post(f"{proxy.base_url}/v1/chat/completions", timeout=30,
                        headers={"Authorization": f"Bearer {keys['valid']}"},
                        json={"model": "recorder", "messages": [{"role": "user", "content": "hi"}]})
    assert canary.status_code == 200, canary.text


def test_admin_routes_answer_the_master_key_only(matrix_proxy):
    proxy, keys, _ = matrix_proxy
    for caller, expected in (("valid", 403), ("master", 200)):
        response = httpx.get(f"{proxy.base_url}/health/services?service=x", timeout=10,
                             headers=headers_for(caller, keys))
        assert response.status_code != 401
        if caller == "valid":
            assert response.status_code == expected, response.text


def test_docs_and_openapi_are_not_served(matrix_proxy):
    proxy, keys, _ = matrix_proxy
    for path in ("/openapi.json", "/docs", "/redoc"):
        for caller, status in (("none", 401), ("valid", 403), ("master", 404)):
            response = httpx.get(proxy.base_url + path, headers=headers_for(caller, keys))
            assert response.status_code == status, (path, caller)


def test_key_store_is_untouched_by_the_matrix(matrix_proxy):
    _, _, url = matrix_proxy

    async def names() -> list[str]:
        store = Store(url)
        try:
            return sorted(k.name for k in await store.list_keys())
        finally:
            await store.close()

    assert asyncio.run(names()) == ["matrix-revoked", "matrix-valid"]


def outside_address() -> str | None:
    """This machine's address on its network (not loopback), if it has one."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_engine_and_proxy_listen_on_loopback_only(stack):
    import socket

    address = outside_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to try from")
    for url in (stack.engine_url, stack.base_url):
        port = int(url.rsplit(":", 1)[1])
        with socket.socket() as sock:
            sock.settimeout(3)
            assert sock.connect_ex((address, port)) != 0, f"{address}:{port} answers"
        with socket.socket() as sock:  # and the same port does answer on loopback
            assert sock.connect_ex(("127.0.0.1", port)) == 0
