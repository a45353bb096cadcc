"""The benchmark's smoke mode, as CI runs it: the stub target, the three paths (direct, our
proxy, stock LiteLLM) at concurrency 1 and 8. Timing targets are reported by the benchmark,
not asserted (docs/benchmarks.md); what is asserted is that every metric is measured on every
path, that streaming loses no chunk on any, and that both proxies asked the engine for the
stream's usage (so neither counted the tokens again)."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from ..conftest import ROOT

METRICS = ["p50 ms", "p95 ms", "p99 ms", "TTFT p50 ms", "ITL p50 ms", "chunks/stream", "req/s",
           "tokens/s"]


def table(lines: list[str], header: str) -> list[list[str]]:
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(re.split(r"\s*\|\s*", line.strip("| ")))
    return rows


def test_bench_smoke_measures_three_paths_side_by_side():
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "proxy_bench.py"), "--smoke"],
                          capture_output=True, text=True, timeout=600)
    print(f"\n[e2e] bench --smoke took {time.monotonic() - started:.0f}s\n{proc.stdout}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# machine: ") and "litellm 1.106.12" in lines[0]
    main = table(lines, "| target | concurrency | metric | direct | ours | stock |")
    assert [(r[0], r[1], r[2]) for r in main] == [
        ("stub", c, m) for c in ("1", "8") for m in METRICS]
    for _target, concurrency, metric, direct, ours, stock, *ratios in main:
        assert "nan" not in (direct, ours, stock, *ratios[:2]), (concurrency, metric)
        assert min(float(direct), float(ours), float(stock)) >= 0, (concurrency, metric)
        if metric == "chunks/stream":  # nothing buffered away on either proxy
            assert (direct, ours, stock, *ratios[:2]) == ("16.0",) * 3 + ("1.000",) * 2
        if metric == "req/s":
            assert min(float(direct), float(ours), float(stock)) > 0
    paths = table(lines, "| concurrency | path |")
    asked = {(r[0], r[1]): r[-1] for r in paths}
    assert asked == {(c, p): ("0.00" if p == "direct" else "1.00")
                     for c in ("1", "8") for p in ("direct", "ours", "stock")}
