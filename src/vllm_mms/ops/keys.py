"""`./runMe.sh keys ...` and `./runMe.sh usage ...`: the key store and the usage table.

Local mode (and anything with MMS_DATABASE_URL set) talks to the database directly; with the
compose stack running and no URL given, the command runs inside the proxy container, which
reaches the compose database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any, Optional

from .. import environment
from ..errors import UserError
from ..proxy.store import Store
from ..stack.compose import PROXY_CONTAINER

KEY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SINCE_RE = re.compile(r"^(\d+)([mhd])$")


def parse_since(text: str) -> float:
    match = SINCE_RE.match(text)
    if not match:
        raise UserError(f"--since {text!r}: use a number and m, h or d (30m, 12h, 7d)", 2)
    return int(match.group(1)) * {"m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise UserError("--models needs at least one model id", 2)
    return models


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="./runMe.sh", add_help=False)
    sub = top.add_subparsers(dest="command", required=True)
    keys = sub.add_parser("keys", add_help=False).add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", add_help=False)
    create.add_argument("name")
    create.add_argument("--rpm", type=int)
    create.add_argument("--tpm", type=int)
    create.add_argument("--max-parallel", type=int)
    create.add_argument("--tokens-per-day", type=int)
    create.add_argument("--models", type=_models)
    keys.add_parser("list", add_help=False)
    revoke = keys.add_parser("revoke", add_help=False)
    revoke.add_argument("name")
    usage = sub.add_parser("usage", add_help=False)
    usage.add_argument("--since", default="1d")
    usage.add_argument("--by", choices=("key", "model", "day"), default="key")
    return top


def in_compose() -> bool:
    """The compose stack runs and nothing points us at a database of our own."""
    from ..stack.state import Stack

    if (environment.is_set("MMS_DATABASE_URL") or Stack.load() is not None
            or not shutil.which("docker")):
        return False
    probe = subprocess.run(["docker", "ps", "--filter", f"name={PROXY_CONTAINER}", "-q"],
                           capture_output=True, text=True)
    return probe.returncode == 0 and bool(probe.stdout.strip())


def main(argv: list[str]) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit:
        raise UserError("usage: ./runMe.sh keys create NAME [--rpm N] [--tpm N] "
                        "[--max-parallel N] [--tokens-per-day N] [--models a,b] | keys list | "
                        "keys revoke NAME | usage [--since 1d] [--by key|model|day]", 2) from None
    if in_compose():
        cmd = ["docker", "exec", "-i", PROXY_CONTAINER, "python3", "-m", "vllm_mms", *argv]
        os.execvp(cmd[0], cmd)
    for value, flag in ((getattr(args, "rpm", None), "--rpm"), (getattr(args, "tpm", None), "--tpm"),
                        (getattr(args, "max_parallel", None), "--max-parallel"),
                        (getattr(args, "tokens_per_day", None), "--tokens-per-day")):
        if value is not None and value <= 0:
            raise UserError(f"{flag} must be a positive number", 2)
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    store = Store()
    try:
        try:
            await store.migrate()
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - any driver error: one line
            raise UserError(f"cannot reach the database ({type(exc).__name__}): check "
                            "MMS_DATABASE_URL or that the stack is running") from None
        if args.command == "keys":
            return await _keys(store, args)
        return await _usage(store, args)
    finally:
        await store.close()


async def _keys(store: Store, args: argparse.Namespace) -> int:
    if args.action == "create":
        if not KEY_NAME_RE.match(args.name):
            raise UserError(f"invalid key name {args.name!r}: letters, digits, '.', '-', '_' "
                            "(at most 64)", 2)
        key = await store.create_key(args.name, rpm=args.rpm, tpm=args.tpm,
                                     max_parallel=args.max_parallel, models=args.models,
                                     tokens_per_day=args.tokens_per_day)
        print(f"created key {args.name!r}; it is shown only now:")
        print(key)
        return 0
    if args.action == "revoke":
        await store.revoke_key(args.name)
        print(f"revoked {args.name!r} (refused within MMS_KEY_CACHE_SECONDS, default 10 s)")
        return 0
    rows = [("name", "created", "status", "rpm", "tpm", "parallel", "models")]
    for key in await store.list_keys():
        rows.append((key.name, _date(key.created_at),
                     "revoked " + _date(key.revoked_at) if key.revoked_at else "active",
                     _opt(key.rpm), _opt(key.tpm), _opt(key.max_parallel), key.models or "all"))
    print_table(rows)
    return 0


async def _usage(store: Store, args: argparse.Namespace) -> int:
    since = time.time() - parse_since(args.since)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in await store.usage_rows(since):
        if args.by == "day":
            label = time.strftime("%Y-%m-%d", time.gmtime(row["ts"]))
        elif args.by == "model":
            label = row["model"] or "-"
        else:
            label = row["key_name"] or "-"
        groups[label].append(row)
    table = [(args.by, "requests", "errors", "prompt", "completion", "p50 ms", "p95 ms")]
    for label in sorted(groups):
        rows = groups[label]
        latencies = sorted(r["latency_ms"] for r in rows if r["latency_ms"] is not None)
        table.append((label, str(len(rows)), str(sum(1 for r in rows if r["status"] >= 400)),
                      str(sum(r["prompt_tokens"] for r in rows)),
                      str(sum(r["completion_tokens"] for r in rows)),
                      _percentile(latencies, 50), _percentile(latencies, 95)))
    print_table(table)
    return 0


def _percentile(values: list[float], pct: int) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.0f}"
    return f"{statistics.quantiles(values, n=100, method='inclusive')[pct - 1]:.0f}"


def _date(ts: Optional[float]) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


def _opt(value: Optional[int]) -> str:
    return "-" if value is None else str(value)


def print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    sys.stdout.flush()
