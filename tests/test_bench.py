"""The benchmark's parts that decide what it measures: the stub answers like vLLM (the usage
chunk only when asked), stock LiteLLM gets our model list and nothing else of ours, each
lever changes exactly its setting, and each proxy starts with the argv it should."""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from vllm_mms.config.resolve import Project, resolve
from vllm_mms.stack.render import render

from .conftest import ROOT


def load(name: str, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def stub(monkeypatch):
    return load("stub_upstream", monkeypatch)


@pytest.fixture
def bench(monkeypatch):
    return load("proxy_bench", monkeypatch)


def events(parts: list[bytes]) -> list:
    """SSE messages → their JSON (or the [DONE] marker)."""
    out = []
    for part in parts:
        assert part.startswith(b"data: ") and part.endswith(b"\n\n"), part
        text = part[6:-2].decode()
        out.append(text if text == "[DONE]" else json.loads(text))
    return out


def test_stub_stream_without_include_usage_has_no_usage(stub):
    sent = events(stub.stream_body({"model": "m", "stream": True}))
    assert len(sent) == 18  # 16 tokens, the finish chunk, [DONE]
    assert [e["choices"][0]["delta"] for e in sent[:16]] == [{"content": "tok "}] * 16
    assert sent[16]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    assert sent[17] == "[DONE]"
    assert not any("usage" in e for e in sent[:17])


@pytest.mark.parametrize("options, asked", [
    ({"include_usage": True}, True), ({"include_usage": False}, False), ({}, False),
    ({"include_usage": "yes"}, False), (None, False)])
def test_stub_sends_the_usage_chunk_last_as_vllm_does_only_when_asked(stub, options, asked):
    request = {"model": "m", "stream": True, "stream_options": options}
    sent = events(stub.stream_body(request))
    if not asked:
        assert len(sent) == 18 and not any("usage" in e for e in sent[:17])
        return
    assert len(sent) == 19
    assert sent[17]["choices"] == []
    assert sent[17]["usage"] == {"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24}
    assert sent[17]["object"] == "chat.completion.chunk" and sent[17]["model"] == "m"
    assert sent[18] == "[DONE]"


def run_app(stub, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    payload = json.dumps(body).encode() if body is not None else b""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(stub.app({"type": "http", "method": method, "path": path}, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_stub_counts_streams_and_those_that_asked_for_usage(stub, monkeypatch):
    monkeypatch.setattr(stub, "STATS", {"streamed": 0, "streamed_with_usage": 0, "plain": 0})
    run_app(stub, "POST", "/v1/chat/completions", {"model": "m", "stream": True})
    status, body = run_app(stub, "POST", "/v1/chat/completions",
                           {"model": "m", "stream": True,
                            "stream_options": {"include_usage": True}})
    assert status == 200 and body.count(b'"usage"') == 1 and body.endswith(b"data: [DONE]\n\n")
    status, body = run_app(stub, "POST", "/v1/chat/completions", {"model": "m"})
    assert json.loads(body)["usage"] == {"prompt_tokens": 8, "completion_tokens": 16,
                                         "total_tokens": 24}
    assert json.loads(run_app(stub, "GET", "/stats")[1]) == {
        "streamed": 2, "streamed_with_usage": 1, "plain": 1}


@pytest.fixture
def ours(project_dir, tmp_path) -> dict:
    """Our rendered config for the CPU model, as the bench reads it."""
    resolved = resolve(Project(project_dir), "smollm2-135m-cpu", environ={})
    render(Project(project_dir), resolved, tmp_path / "generated",
           api_base="http://127.0.0.1:9/v1")
    return yaml.safe_load((tmp_path / "generated" / "config.yaml").read_text())


def test_stock_config_is_our_model_list_without_any_of_our_hooks(bench, ours):
    stock = bench.stock_config(ours)
    assert stock["model_list"] == ours["model_list"]
    assert stock["router_settings"] == ours["router_settings"]
    assert stock["general_settings"] == {"master_key": "os.environ/LITELLM_MASTER_KEY"}
    assert "callbacks" not in stock["litellm_settings"]
    assert ours["litellm_settings"]["callbacks"] == ["vllm_mms.proxy.hooks.proxy_handler",
                                                     "prometheus"]  # ours untouched
    assert ours["general_settings"]["custom_auth"] == "vllm_mms.proxy.hooks.custom_auth"


def test_each_layer_variant_takes_away_exactly_its_layer(bench, ours):
    no_hooks = bench.without_callback("vllm_mms.proxy.hooks.proxy_handler")(copy.deepcopy(ours))
    assert no_hooks["litellm_settings"]["callbacks"] == ["prometheus"]
    no_metrics = bench.without_callback("prometheus")(copy.deepcopy(ours))
    assert no_metrics["litellm_settings"]["callbacks"] == ["vllm_mms.proxy.hooks.proxy_handler"]
    no_auth = bench.without_custom_auth(copy.deepcopy(ours))
    assert no_auth["general_settings"] == {"master_key": "os.environ/LITELLM_MASTER_KEY"}
    for changed in (no_hooks, no_metrics, no_auth):
        assert changed["model_list"] == ours["model_list"]


def test_price_and_stream_usage_levers(bench, ours):
    zero = bench.set_prices(True)(copy.deepcopy(ours))
    for deployment in zero["model_list"]:
        assert (deployment["model_info"]["input_cost_per_token"],
                deployment["model_info"]["output_cost_per_token"]) == (0, 0)
    unset = bench.set_prices(False)(copy.deepcopy(zero))
    for deployment in unset["model_list"]:
        assert not {"input_cost_per_token", "output_cost_per_token"} & (
            set(deployment["model_info"]) | set(deployment["litellm_params"]))
    off = bench.stream_usage(False)(copy.deepcopy(ours))
    assert off["general_settings"]["always_include_stream_usage"] is False
    redis = bench.with_redis(copy.deepcopy(ours))
    assert redis["general_settings"]["coordination_redis"] == {"url": "os.environ/PROXY_REDIS_URL"}


def test_proxy_argv_for_ours_stock_workers_and_granian(bench):
    config = Path("/w/c.yaml")
    py = sys.executable
    assert bench.proxy_argv(bench.Variant("ours", "gateway", "ours", workers=2), config, 4100) == [
        py, "-m", "vllm_mms.proxy.gateway", "--config", "/w/c.yaml", "--host", "127.0.0.1",
        "--port", "4100", "--workers", "2"]
    assert bench.proxy_argv(bench.Variant("stock", "litellm", "stock"), config, 4101) == [
        py, "-m", "litellm.proxy.proxy_cli", "--config", "/w/c.yaml", "--host", "127.0.0.1",
        "--port", "4101", "--num_workers", "1"]
    assert bench.proxy_argv(bench.Variant("g", "litellm", "stock", granian=True), config,
                            4102)[-3:] == ["--num_workers", "1", "--run_granian"]
