"""API keys and usage rows: one schema on PostgreSQL (compose, MMS_DATABASE_URL) and SQLite
(the local default file), with async drivers so the proxy's event loop never blocks.

Not LiteLLM's database layer: that one (Prisma) downloads engines at start-up and cannot run
offline. Keys are stored as sha256 digests only; the clear key is shown once, at creation.
The variable is MMS_DATABASE_URL, never DATABASE_URL, which would switch Prisma on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from .. import environment
from ..errors import UserError

SCHEMA_VERSION = 2
# Portable SQL: "?" placeholders (rewritten for psycopg), epoch seconds as REAL/DOUBLE.
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS mms_schema (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS mms_api_keys (
        name TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL UNIQUE,
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION,
        rpm INTEGER,
        tpm INTEGER,
        max_parallel INTEGER,
        models TEXT,
        tokens_per_day INTEGER,
        priority INTEGER)""",
    """CREATE TABLE IF NOT EXISTS mms_usage (
        id {autoincrement},
        ts DOUBLE PRECISION NOT NULL,
        key_name TEXT,
        model TEXT,
        route TEXT,
        status INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        latency_ms DOUBLE PRECISION,
        ttft_ms DOUBLE PRECISION,
        error_class TEXT)""",
    "CREATE INDEX IF NOT EXISTS mms_usage_ts ON mms_usage (ts)",
]
USAGE_COLUMNS = ("ts", "key_name", "model", "route", "status", "prompt_tokens",
                 "completion_tokens", "latency_ms", "ttft_ms", "error_class")
KEY_COLUMNS = ("name", "key_hash", "created_at", "revoked_at", "rpm", "tpm", "max_parallel",
               "models", "tokens_per_day", "priority")
# What each schema version adds to the one before (a database made by older code).
UPGRADES = {2: ["ALTER TABLE mms_api_keys ADD COLUMN priority INTEGER"]}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def same_key(presented: str, expected: str) -> bool:
    """Constant-time comparison of two keys (of their digests, so lengths leak nothing)."""
    return hmac.compare_digest(hash_key(presented), hash_key(expected))


def migrate_now(url: Optional[str] = None) -> str:
    """Create or upgrade the schema from synchronous code (start-up, doctor); returns the
    database it reached, without credentials. Raises what the driver raises."""
    import asyncio

    async def run() -> str:
        store = Store(url)
        try:
            await store.migrate()
            return store.url.split("@")[-1]
        finally:
            await store.close()

    return asyncio.run(run())


def default_url() -> str:
    return environment.get("MMS_DATABASE_URL")


@dataclass
class ApiKey:
    name: str
    key_hash: str
    created_at: float
    revoked_at: Optional[float]
    rpm: Optional[int]
    tpm: Optional[int]
    max_parallel: Optional[int]
    models: Optional[str]
    tokens_per_day: Optional[int]
    priority: Optional[int] = None  # vLLM's: lower is served first

    @property
    def allowed_models(self) -> Optional[list[str]]:
        return [m for m in self.models.split(",") if m] if self.models else None


class Store:
    """A small async facade over the two drivers. Each call opens what it needs lazily and
    reconnects after a failure, so a database that went away and came back is picked up."""

    def __init__(self, url: Optional[str] = None) -> None:
        self.url = url or default_url()
        self.kind = "sqlite" if self.url.startswith("sqlite:") else "postgres"
        if self.kind == "postgres" and not self.url.startswith(("postgresql://", "postgres://")):
            raise UserError("MMS_DATABASE_URL must start with postgresql:// or sqlite:///")
        self._conn: Any = None

    # --- connection -------------------------------------------------------------------
    async def _connect(self) -> Any:
        if self._conn is not None:
            return self._conn
        if self.kind == "sqlite":
            import aiosqlite

            path = Path(self.url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = await aiosqlite.connect(path, timeout=10)
            await self._conn.execute("PRAGMA journal_mode=WAL")
        else:
            import psycopg

            # client_encoding: a SQL_ASCII database would otherwise hand back text as bytes.
            self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                               connect_timeout=5,
                                                               client_encoding="utf8")
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            try:
                await self._conn.close()
            finally:
                self._conn = None

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.kind == "postgres" else sql

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self.executemany(sql, [params])

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        conn = await self._connect()
        try:
            if self.kind == "sqlite":
                await conn.executemany(sql, rows)
                await conn.commit()
            else:
                async with conn.cursor() as cur:
                    await cur.executemany(self._sql(sql), rows)
        except Exception:
            await self.close()  # reconnect next time
            raise

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        conn = await self._connect()
        try:
            if self.kind == "sqlite":
                async with conn.execute(sql, params) as cur:
                    return list(await cur.fetchall())
            async with conn.cursor() as cur:
                await cur.execute(self._sql(sql), params)
                return list(await cur.fetchall())
        except Exception:
            await self.close()
            raise

    # --- schema -----------------------------------------------------------------------
    async def migrate(self) -> None:
        """Create or upgrade the schema; safe to run at every start, by several processes."""
        autoincrement = ("INTEGER PRIMARY KEY AUTOINCREMENT" if self.kind == "sqlite"
                         else "BIGSERIAL PRIMARY KEY")
        for statement in SCHEMA:
            await self.execute(statement.format(autoincrement=autoincrement))
        rows = await self.fetchall("SELECT version FROM mms_schema")
        if not rows:
            await self.execute("INSERT INTO mms_schema (version) VALUES (?)", (SCHEMA_VERSION,))
            return
        if rows[0][0] < SCHEMA_VERSION:
            await self._upgrade(rows[0][0])
        elif rows[0][0] > SCHEMA_VERSION:
            raise UserError(f"the database schema is version {rows[0][0]}, newer than this "
                            f"code's {SCHEMA_VERSION}: update the project")

    async def _upgrade(self, version: int) -> None:
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in UPGRADES[step]:
                try:
                    await self.execute(statement)
                except Exception:  # noqa: BLE001 - another process upgraded first
                    await self.fetchall("SELECT priority FROM mms_api_keys WHERE 1 = 0")
        await self.execute("UPDATE mms_schema SET version = ?", (SCHEMA_VERSION,))

    # --- keys -------------------------------------------------------------------------
    async def create_key(self, name: str, rpm: Optional[int] = None, tpm: Optional[int] = None,
                         max_parallel: Optional[int] = None, models: Optional[list[str]] = None,
                         tokens_per_day: Optional[int] = None,
                         priority: Optional[int] = None) -> str:
        existing = await self.fetchall("SELECT name FROM mms_api_keys WHERE name = ?", (name,))
        if existing:
            raise UserError(f"a key named {name!r} already exists (revoke it or pick another name)")
        key = "sk-mms-" + secrets.token_urlsafe(32)
        await self.execute(
            f"INSERT INTO mms_api_keys ({', '.join(KEY_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in KEY_COLUMNS)})",
            (name, hash_key(key), time.time(), None, rpm, tpm, max_parallel,
             ",".join(models) if models else None, tokens_per_day, priority))
        return key

    async def list_keys(self) -> list[ApiKey]:
        rows = await self.fetchall(f"SELECT {', '.join(KEY_COLUMNS)} FROM mms_api_keys ORDER BY name")
        return [ApiKey(*row) for row in rows]

    async def find_key(self, key: str) -> Optional[ApiKey]:
        rows = await self.fetchall(
            f"SELECT {', '.join(KEY_COLUMNS)} FROM mms_api_keys WHERE key_hash = ?", (hash_key(key),))
        return ApiKey(*rows[0]) if rows else None

    async def revoke_key(self, name: str) -> None:
        rows = await self.fetchall("SELECT revoked_at FROM mms_api_keys WHERE name = ?", (name,))
        if not rows:
            raise UserError(f"no key named {name!r}")
        if rows[0][0] is not None:
            raise UserError(f"the key {name!r} is already revoked")
        await self.execute("UPDATE mms_api_keys SET revoked_at = ? WHERE name = ?",
                           (time.time(), name))

    # --- usage ------------------------------------------------------------------------
    async def insert_usage(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        placeholders = ", ".join("?" for _ in USAGE_COLUMNS)
        await self.executemany(
            f"INSERT INTO mms_usage ({', '.join(USAGE_COLUMNS)}) VALUES ({placeholders})",
            [tuple(row.get(c, 0 if c.endswith("_tokens") else None) for c in USAGE_COLUMNS)
             for row in rows])

    async def tokens_used(self, key_name: str, since: float) -> int:
        rows = await self.fetchall(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM mms_usage "
            "WHERE key_name = ? AND ts >= ?", (key_name, since))
        return int(rows[0][0] or 0)

    async def usage_rows(self, since: float) -> list[dict[str, Any]]:
        rows = await self.fetchall(
            f"SELECT {', '.join(USAGE_COLUMNS)} FROM mms_usage WHERE ts >= ? ORDER BY ts",
            (since,))
        return [dict(zip(USAGE_COLUMNS, row)) for row in rows]

    async def delete_usage_before(self, cutoff: float) -> None:
        await self.execute("DELETE FROM mms_usage WHERE ts < ?", (cutoff,))
