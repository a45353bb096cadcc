"""`./runMe.sh keys create|list|revoke`: the proxy's API keys in the store (stored as sha256
digests; a key is shown once, when it is created)."""

from __future__ import annotations

import re
import time
from typing import Optional

from ..errors import UserError
from ..proxy.store import Store
from .database import print_table, with_store

KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PRIORITY_RANGE = 1000


def create(name: str, rpm: Optional[int] = None, tpm: Optional[int] = None,
           max_parallel: Optional[int] = None, tokens_per_day: Optional[int] = None,
           models: Optional[list[str]] = None, priority: Optional[int] = None) -> int:
    for value, flag in ((rpm, "--rpm"), (tpm, "--tpm"), (max_parallel, "--max-parallel"),
                        (tokens_per_day, "--tokens-per-day")):
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be a positive number", 2)
    if priority is not None and not -PRIORITY_RANGE <= priority <= PRIORITY_RANGE:
        raise UserError(f"--priority must be between -{PRIORITY_RANGE} and {PRIORITY_RANGE} "
                        "(lower is served first; default 0)", 2)

    async def action(store: Store) -> int:
        if not KEY_NAME_RE.match(name):
            raise UserError(f"invalid key name {name!r}: letters, digits, '.', '-', '_' "
                            "(at most 64)", 2)
        key = await store.create_key(name, rpm=rpm, tpm=tpm, max_parallel=max_parallel,
                                     models=models, tokens_per_day=tokens_per_day,
                                     priority=priority)
        print(f"created key {name!r}; it is shown only now:")
        print(key)
        return 0

    return with_store(action)


def revoke(name: str) -> int:
    async def action(store: Store) -> int:
        await store.revoke_key(name)
        print(f"revoked {name!r} (refused within MMS_KEY_CACHE_SECONDS, default 10 s)")
        return 0

    return with_store(action)


def list_keys() -> int:
    async def action(store: Store) -> int:
        rows = [("name", "created", "status", "rpm", "tpm", "parallel", "priority", "models")]
        for key in await store.list_keys():
            rows.append((key.name, _date(key.created_at),
                         "revoked " + _date(key.revoked_at) if key.revoked_at else "active",
                         _opt(key.rpm), _opt(key.tpm), _opt(key.max_parallel),
                         _opt(key.priority), key.models or "all"))
        print_table(rows)
        return 0

    return with_store(action)


def _date(ts: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


def _opt(value: Optional[int]) -> str:
    return "-" if value is None else str(value)
