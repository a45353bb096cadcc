"""The key store and usage table on both backends: SQLite (local default) and PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import pytest

from vllm_mms.errors import UserError
from vllm_mms.proxy.store import Store, hash_key
from vllm_mms.proxy.usage_queue import UsageQueue

from .conftest import run_cli


def run(coro):
    return asyncio.run(coro)


async def fresh(url: str) -> Store:
    store = Store(url)
    await store.migrate()
    await store.migrate()  # idempotent
    for table in ("mms_usage", "mms_api_keys"):
        await store.execute(f"DELETE FROM {table}")
    return store


def test_key_lifecycle(database_url):
    async def scenario():
        store = await fresh(database_url)
        key = await store.create_key("alice", rpm=5, models=["m1", "m2"])
        assert key.startswith("sk-mms-") and len(key) > 40
        found = await store.find_key(key)
        assert (found.name, found.rpm, found.allowed_models, found.revoked_at) == (
            "alice", 5, ["m1", "m2"], None)
        assert found.key_hash == hash_key(key)
        rows = await store.fetchall("SELECT key_hash FROM mms_api_keys")
        assert rows == [(hash_key(key),)]  # only the digest is stored
        with pytest.raises(UserError, match="already exists"):
            await store.create_key("alice")
        await store.revoke_key("alice")
        assert (await store.find_key(key)).revoked_at is not None
        with pytest.raises(UserError, match="already revoked"):
            await store.revoke_key("alice")
        with pytest.raises(UserError, match="no key named 'bob'"):
            await store.revoke_key("bob")
        assert await store.find_key("' OR '1'='1") is None
        await store.close()
    run(scenario())


def test_usage_rows_and_retention(database_url):
    async def scenario():
        store = await fresh(database_url)
        now = time.time()
        await store.insert_usage([
            {"ts": now - 100 * 86400, "key_name": "old", "model": "m", "route": "/v1/x",
             "status": 200, "prompt_tokens": 1, "completion_tokens": 1, "latency_ms": 1.0},
            {"ts": now, "key_name": "a'; DROP TABLE mms_usage; --", "model": "m",
             "route": "/v1/chat/completions", "status": 200, "prompt_tokens": 10,
             "completion_tokens": 5, "latency_ms": 12.5, "ttft_ms": 3.0},
        ])
        await store.delete_usage_before(now - 90 * 86400)
        rows = await store.usage_rows(0)
        assert [(r["key_name"], r["prompt_tokens"], r["completion_tokens"], r["ttft_ms"])
                for r in rows] == [("a'; DROP TABLE mms_usage; --", 10, 5, 3.0)]
        await store.close()
    run(scenario())


class FlakyStore:
    """A store whose database is 'down' until told otherwise; counts what it received."""

    def __init__(self) -> None:
        self.down = True
        self.rows: list[dict] = []

    async def migrate(self):
        if self.down:
            raise ConnectionError("database down")

    async def insert_usage(self, rows):
        if self.down:
            raise ConnectionError("database down")
        self.rows.extend(rows)


def test_queue_keeps_rows_while_the_database_is_down_and_counts_overflow():
    flaky = FlakyStore()
    queue = UsageQueue(lambda: flaky, max_rows=5, batch_size=2)
    for i in range(7):
        queue.add({"ts": i})
    assert (len(queue.rows), queue.dropped) == (5, 2)
    assert run(queue.flush()) == 0 and len(queue.rows) == 5
    flaky.down = False
    assert run(queue.flush()) == 5
    assert [r["ts"] for r in flaky.rows] == [0, 1, 2, 3, 4]  # order kept across the outage
    assert (len(queue.rows), queue.dropped, queue.written) == (0, 2, 5)


def test_keys_and_usage_cli_on_postgres(postgres_url):
    env = {"MMS_DATABASE_URL": postgres_url}
    created = run_cli("keys", "create", "ci-bot", "--rpm", "7", "--models", "a,b",
                      "--priority", "-5", env=env)
    assert created.code == 0, created.err
    lines = created.out.splitlines()
    assert lines[0] == "created key 'ci-bot'; it is shown only now:"
    key = lines[1]
    listed = run_cli("keys", "list", env=env)
    assert key not in listed.out
    assert listed.out.splitlines()[0].split() == ["name", "created", "status", "rpm", "tpm",
                                                  "parallel", "priority", "models"]
    row = [line for line in listed.out.splitlines() if line.startswith("ci-bot")][0].split()
    assert row[3:] == ["active", "7", "-", "-", "-5", "a,b"]
    assert run_cli("keys", "revoke", "ci-bot", env=env).code == 0
    again = run_cli("keys", "revoke", "ci-bot", env=env)
    assert (again.code, again.err) == (1, "error: the key 'ci-bot' is already revoked\n")


def test_cli_with_an_unreachable_database_is_one_line():
    result = run_cli("keys", "list", env={"MMS_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/x"})
    assert (result.code, result.err) == (
        1, "error: cannot reach the database (OperationalError): check MMS_DATABASE_URL or "
           "that the stack is running\n")


def test_usage_command_prints_the_table(tmp_path):
    url = f"sqlite:///{tmp_path / 'usage.db'}"

    async def seed():
        store = await fresh(url)
        now = time.time()
        rows = [("m1", 200, 10.0), ("m1", 200, 20.0), ("m1", 500, 30.0), ("m1", 200, 40.0),
                ("m2", 429, 5.0)]
        await store.insert_usage([
            {"ts": now - i, "key_name": "k", "model": model, "route": "/v1/chat/completions",
             "status": status, "prompt_tokens": 3, "completion_tokens": 2, "latency_ms": latency}
            for i, (model, status, latency) in enumerate(rows)])
        await store.insert_usage([{"ts": now - 3 * 86400, "key_name": "k", "model": "old",
                                   "route": "/x", "status": 200, "latency_ms": 1.0}])
        await store.close()
    run(seed())
    result = run_cli("usage", "--since", "1d", "--by", "model", env={"MMS_DATABASE_URL": url})
    assert result.code == 0, result.err
    assert result.out == (
        "model  requests  errors  prompt  completion  p50 ms  p95 ms\n"
        "m1     4         1       12      8           25      38\n"
        "m2     1         1       3       2           5       5\n")


def test_rows_being_written_count_against_the_bound():
    """While a write hangs on a dying connection, new rows must not push the queue past its
    bound: the batch in flight is still held in memory and comes back on failure."""
    class HangingStore:
        def __init__(self):
            self.release = asyncio.Event()

        async def migrate(self):
            pass

        async def insert_usage(self, rows):
            await self.release.wait()
            raise ConnectionError("connection lost")

    async def scenario():
        store = HangingStore()
        queue = UsageQueue(lambda: store, max_rows=5, batch_size=3)
        for i in range(3):
            queue.add({"ts": i})
        writing = asyncio.create_task(queue.flush())
        await asyncio.sleep(0)  # the flush has taken its batch of 3 and waits
        for i in range(3, 10):
            queue.add({"ts": i})
        store.release.set()
        await writing
        return queue

    queue = run(scenario())
    assert [r["ts"] for r in queue.rows] == [0, 1, 2, 3, 4]
    assert queue.dropped == 5


def test_a_sql_ascii_database_still_gives_text_back(postgres_url):
    """A database created without a UTF-8 locale (SQL_ASCII) hands text columns to psycopg as
    bytes unless the client says utf8; a key's digest as bytes broke LiteLLM's auth (500)."""
    import psycopg

    admin_url = postgres_url.rsplit("/", 1)[0] + "/postgres"
    name = postgres_url.rsplit("/", 1)[1] + "_ascii"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" ENCODING \'SQL_ASCII\' TEMPLATE template0')
    try:
        async def scenario():
            store = await fresh(postgres_url.rsplit("/", 1)[0] + f"/{name}")
            key = await store.create_key("ascii", rpm=1)
            found = await store.find_key(key)
            await store.close()
            return found

        found = run(scenario())
        assert (type(found.key_hash), found.name) == (str, "ascii")
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_priority_out_of_range_is_refused_before_the_database():
    result = run_cli("keys", "create", "x", "--priority", "5000",
                     env={"MMS_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/x"})
    assert (result.code, result.err) == (
        2, "error: --priority must be between -1000 and 1000 (lower is served first; "
           "default 0)\n")


def test_a_version_1_database_is_upgraded_with_its_keys_kept(tmp_path):
    """A database made before key priorities (schema 1) gains the column; its keys stay."""
    import asyncio
    import sqlite3

    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE mms_schema (version INTEGER NOT NULL);
        INSERT INTO mms_schema VALUES (1);
        CREATE TABLE mms_api_keys (name TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE,
            created_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION, rpm INTEGER,
            tpm INTEGER, max_parallel INTEGER, models TEXT, tokens_per_day INTEGER);
        INSERT INTO mms_api_keys VALUES ('old', 'h', 1.0, NULL, 3, NULL, NULL, NULL, NULL);
    """)
    db.commit()
    db.close()

    async def upgrade_twice():
        for _ in range(2):  # a second process finds it done
            store = Store(f"sqlite:///{path}")
            await store.migrate()
            await store.create_key(f"new{_}", priority=-2)
            keys = await store.list_keys()
            version = await store.fetchall("SELECT version FROM mms_schema")
            await store.close()
        return keys, version

    keys, version = asyncio.run(upgrade_twice())
    assert version == [(2,)]
    assert [(k.name, k.rpm, k.priority) for k in keys] == [
        ("new0", None, -2), ("new1", None, -2), ("old", 3, None)]
