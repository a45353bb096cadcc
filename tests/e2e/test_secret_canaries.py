"""Secret canaries: the master key, the engine key and an HF token (from secrets/), and a
database key, driven through normal and error paths — bad requests, the upstream down, the
database down. None may appear in a log, a generated file, the usage table or any command
line in the process list."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx

from vllm_mms.proxy.store import Store

from .conftest import ENGINE_KEY_CANARY, HF_TOKEN_CANARY, MASTER_KEY
from .test_usage import FAST, SECTION, create_key


def command_lines() -> str:
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return "\n".join(lines)


def files_under(*folders: Path) -> dict[Path, str]:
    return {p: p.read_text(errors="replace") for folder in folders if folder.exists()
            for p in folder.rglob("*") if p.is_file() and p.suffix != ".db"}


def usage_dump(url: str) -> str:
    async def dump() -> str:
        store = Store(url)
        try:
            return repr(await store.fetchall("SELECT * FROM mms_usage", ()))
        finally:
            await store.close()

    return asyncio.run(dump())


def hits(canaries: list[str], places: dict[str, str]) -> list[str]:
    return [f"{canary[:12]}... in {where}" for where, text in places.items()
            for canary in canaries if canary in text]


def drive_error_paths(base_url: str, key: str, model: str) -> list[int]:
    """Bad JSON, an unknown model, a wrong type, a wrong key, an admin route, a client-chosen
    api_base carrying the key: the statuses, in that order."""
    auth = {"Authorization": f"Bearer {key}"}
    url = f"{base_url}/v1/chat/completions"
    statuses = [
        httpx.post(url, headers={**auth, "Content-Type": "application/json"}, content=b"{not json",
                   timeout=60).status_code,
        httpx.post(url, headers=auth, json={"model": "no-such-model", "messages": []},
                   timeout=60).status_code,
        httpx.post(url, headers=auth, json={"model": model, "messages": "wrong type"},
                   timeout=60).status_code,
        httpx.post(url, headers={"Authorization": f"Bearer {key}x"},
                   json={"model": model, "messages": []}, timeout=60).status_code,
        httpx.get(f"{base_url}/routes", headers=auth, timeout=60).status_code,
        httpx.post(url, headers=auth, timeout=60, json={
            "model": model, "max_tokens": 4, "api_base": "http://169.254.169.254/",
            "messages": [{"role": "user", "content": key}]}).status_code,
    ]
    return statuses


def test_no_canary_leaks_from_the_running_stack(stack):
    db_url = f"sqlite:///{stack.state_dir / 'usage.db'}"
    db_key = create_key(db_url, "canary-key")
    # The admin route (/routes) answers the master key only; everything else is refused alike.
    expected = {stack.key: [400, 400, 400, 401, 200, 400], db_key: [400, 400, 400, 401, 403, 400]}
    for key in (stack.key, db_key):
        ok = httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=120,
                        headers={"Authorization": f"Bearer {key}"},
                        json={"model": "smollm2-135m-cpu", "max_tokens": 4, "stream": True,
                              "messages": [{"role": "user", "content": "Hi"}]})
        assert ok.status_code == 200
        statuses = drive_error_paths(stack.base_url, key, "smollm2-135m-cpu")
        assert statuses == expected[key]
    canaries = [MASTER_KEY, ENGINE_KEY_CANARY, HF_TOKEN_CANARY, db_key]
    places = {str(p): text for p, text in files_under(stack.log_dir,
                                                       stack.state_dir / "generated_configs").items()}
    places["usage table"] = usage_dump(db_url)
    places["process list"] = command_lines()
    # Among the places searched (by name; more files are fine): logs, the engine's argv,
    # both generated files, the table, the processes.
    assert {"engine.log", "engine.argv.json", "proxy.log", "config.yaml", "models.yml",
            "usage table", "process list"} <= {Path(place).name for place in places}
    assert hits(canaries, places) == []


def test_no_canary_leaks_when_upstream_and_database_are_down(recording_proxy_factory,
                                                             tmp_path_factory):
    # A PostgreSQL URL where nothing listens: the database is down from the start.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    db_url = f"postgresql://mms:pw-canary-db-77@127.0.0.1:{dead_port}/mms"
    proxy = recording_proxy_factory(SECTION, env={"MMS_DATABASE_URL": db_url, **FAST})
    try:
        up = httpx.post(f"{proxy.base_url}/v1/chat/completions", timeout=60,
                        headers={"Authorization": f"Bearer {proxy.key}"},
                        json={"model": "recorder", "messages": [{"role": "user", "content": "x"}]})
        assert up.status_code == 200
        unknown_db_key = "sk-mms-canary-dbkey-0f9e8d7c6b5a"
        down_db = httpx.post(f"{proxy.base_url}/v1/chat/completions", timeout=60,
                             headers={"Authorization": f"Bearer {unknown_db_key}"},
                             json={"model": "recorder", "messages": []})
        # An unknown key cannot be looked up: "try again", not "wrong key" (nor a 500).
        assert down_db.status_code == 503, down_db.text
        assert down_db.json()["error"]["message"] == ("the key store is unavailable; try again "
                                                      "shortly")
        proxy.upstream.down = True  # the engine goes away
        down = httpx.post(f"{proxy.base_url}/v1/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {proxy.key}"},
                          json={"model": "recorder", "messages": [{"role": "user", "content": "x"}]})
        assert down.status_code == 500, down.text
        assert down.json()["error"]["message"].startswith(
            "litellm.InternalServerError: InternalServerError: Hosted_vllmException - Server "
            "disconnected")
        drive_error_paths(proxy.base_url, proxy.key, "recorder")
        places = {str(p): t for p, t in files_under(proxy.log.parent,
                                                    proxy.log.parent.parent / "generated").items()}
        places["process list"] = command_lines()
        canaries = [proxy.key, "sk-upstream-key", unknown_db_key, "pw-canary-db-77"]
        assert hits(canaries, places) == []
    finally:
        proxy.stop()
