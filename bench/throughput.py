"""Tokens/s straight to the engine vs through the proxy, measured side by side in one run.

Starts its own local stack (temporary state, free ports, a known internal key), then for each
concurrency runs rounds that alternate direct and proxied batches of identical requests
(`ignore_eos`, so every request decodes exactly MAX_TOKENS tokens), and prints the ratio.
Also reports the stack's start time and a restart's. Run from the repository root:

    ./runMe.sh bench                     (or: python bench/throughput.py [--rounds N])
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MAX_TOKENS = 64
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_request(url: str, key: str, model: str) -> int:
    # Every sampling parameter is explicit, so the proxy's model defaults (which it would add
    # to a request that leaves them out) cannot make the two paths decode differently.
    response = httpx.post(url, headers={"Authorization": f"Bearer {key}"}, timeout=300, json={
        "model": model, "messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0.7,
        "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "ignore_eos": True})
    response.raise_for_status()
    return response.json()["usage"]["completion_tokens"]


def batch(url: str, key: str, model: str, concurrency: int) -> float:
    """Tokens per second for `concurrency` parallel requests, each MAX_TOKENS long."""
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        tokens = sum(pool.map(lambda _: one_request(url, key, model), range(concurrency)))
    return tokens / (time.perf_counter() - started)


def start_stack(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([str(ROOT / "runMe.sh"), "--local", "-d"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mms-bench-"))
    project = work / "project"
    project.mkdir()
    for name in ("models", "vars.env", "litellm_config.template.yaml"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    (project / "secrets").mkdir()
    engine_key, proxy_key = "sk-bench-" + secrets.token_hex(16), "sk-bench-" + secrets.token_hex(16)
    (project / "secrets" / "VLLM_API_KEY").write_text(engine_key)
    (project / "secrets" / "LITELLM_MASTER_KEY").write_text(proxy_key)
    proxy_port, engine_port = free_port(), free_port()
    env = {**os.environ, "MMS_PROJECT_DIR": str(project), "MMS_STATE_DIR": str(work / "state"),
           "LITELLM_PORT": str(proxy_port), "VLLM_PORT": str(engine_port),
           "MAX_PARALLEL_REQUESTS": "64"}
    try:
        first = start_stack(env)
        subprocess.run([str(ROOT / "runMe.sh"), "down"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        second = start_stack(env)
        print(f"stack start: {first:.1f}s (first), {second:.1f}s (restart right after a stop)")
        direct = f"http://127.0.0.1:{engine_port}/v1/chat/completions"
        proxied = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
        batch(direct, engine_key, "vllm_agent", 2)  # warm-up, not counted
        batch(proxied, proxy_key, "smollm2-135m-cpu", 2)
        print(f"{'concurrency':>11} {'direct tok/s':>13} {'proxy tok/s':>12} {'ratio':>6}")
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            d, p = [], []
            for _ in range(args.rounds):  # interleaved, so drift hits both sides alike
                d.append(batch(direct, engine_key, "vllm_agent", concurrency))
                p.append(batch(proxied, proxy_key, "smollm2-135m-cpu", concurrency))
            dm, pm = statistics.median(d), statistics.median(p)
            print(f"{concurrency:>11} {dm:>13.1f} {pm:>12.1f} {pm / dm:>6.3f}")
    finally:
        subprocess.run([str(ROOT / "runMe.sh"), "down"], env=env, stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
