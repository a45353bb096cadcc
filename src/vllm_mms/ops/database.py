"""The key and usage database as `keys` and `usage` reach it from the command line.

Local mode (and anything with MMS_DATABASE_URL set) talks to the database directly; with the
compose stack running and no URL given, the command runs inside the proxy container, which
reaches the compose database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from typing import Awaitable, Callable, NoReturn

from .. import environment
from ..errors import UserError
from ..proxy.store import Store
from ..stack.compose import PROXY_CONTAINER


def in_compose() -> bool:
    """The compose stack runs and nothing points us at a database of our own."""
    from ..stack.state import Stack

    if (environment.is_set("MMS_DATABASE_URL") or Stack.load() is not None
            or not shutil.which("docker")):
        return False
    probe = subprocess.run(["docker", "ps", "--filter", f"name={PROXY_CONTAINER}", "-q"],
                           capture_output=True, text=True)
    return probe.returncode == 0 and bool(probe.stdout.strip())


def exec_in_proxy_container(argv: list[str]) -> NoReturn:
    """The same command line (`keys ...`, `usage ...`), run by the proxy container's Python."""
    cmd = ["docker", "exec", "-i", PROXY_CONTAINER, "python3", "-m", "vllm_mms", *argv]
    os.execvp(cmd[0], cmd)


def with_store(action: Callable[[Store], Awaitable[int]]) -> int:
    """`action` on the migrated store, closed after; a database that cannot be reached is
    one line."""

    async def run() -> int:
        store = Store()
        try:
            try:
                await store.migrate()
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - any driver error: one line
                raise UserError(f"cannot reach the database ({type(exc).__name__}): check "
                                "MMS_DATABASE_URL or that the stack is running") from None
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    sys.stdout.flush()
