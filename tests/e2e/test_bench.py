"""The benchmark's smoke mode, as CI runs it: the stub target at concurrency 1 and 8. Timing
targets are reported by the benchmark, not asserted (docs/benchmarks.md); what is asserted is
that it measures every metric for both paths and that streaming loses no chunk."""

from __future__ import annotations

import re
import subprocess
import sys

from ..conftest import ROOT

METRICS = ["p50 ms", "p95 ms", "p99 ms", "TTFT p50 ms", "ITL p50 ms", "chunks/stream", "tokens/s"]


def test_bench_smoke_measures_every_metric_side_by_side():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "proxy_bench.py"), "--smoke"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# machine: ") and "litellm 1.106.12" in lines[0]
    rows = [re.split(r"\s*\|\s*", line.strip("| ")) for line in lines[3:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("stub", c, m) for c in ("1", "8") for m in METRICS]
    for _target, concurrency, metric, direct, proxied, ratio, *_ in rows:
        assert "nan" not in (direct, proxied, ratio), (concurrency, metric)
        assert float(direct) >= 0 and float(proxied) >= 0, (concurrency, metric)
        if metric == "chunks/stream":
            assert (direct, proxied, ratio) == ("16.0", "16.0", "1.000")  # nothing buffered away
