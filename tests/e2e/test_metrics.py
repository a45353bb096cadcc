"""Both /metrics endpoints on the running stack, and the dashboard's queries against them:
every metric the Grafana dashboard plots exists in a real scrape."""

from __future__ import annotations

import json
import re

import httpx

from ..conftest import ROOT

DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "vllm-mms.json"


def scrape(url: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(url, headers=headers, timeout=30)


def test_metrics_of_proxy_and_engine_feed_the_dashboard(stack):
    chat = httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {stack.key}"},
                      json={"model": "smollm2-135m-cpu", "max_tokens": 4, "stream": True,
                            "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status_code == 200

    for path in ("/metrics", "/metrics/"):  # the master key is needed
        assert scrape(f"{stack.base_url}{path}").status_code == 401
        assert scrape(f"{stack.base_url}{path}", "sk-wrong").status_code == 403
    proxy = scrape(f"{stack.base_url}/metrics/", stack.key)  # the path Prometheus scrapes
    assert proxy.status_code == 200
    engine = scrape(f"{stack.engine_url}/metrics")
    assert engine.status_code == 200
    exposed = set(re.findall(r"^([a-zA-Z_:][\w:]*)", proxy.text + "\n" + engine.text, re.M))
    assert "litellm_proxy_total_requests_metric_total" in exposed

    dashboard = json.loads(DASHBOARD.read_text())
    wanted = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            wanted |= set(re.findall(r"\b((?:vllm:|litellm_)[\w:]+)", target.get("expr", "")))
    assert sorted(wanted) == [
        "litellm_llm_api_time_to_first_token_metric_bucket",
        "litellm_proxy_total_requests_metric_total", "litellm_request_total_latency_metric_bucket",
        "vllm:generation_tokens_total", "vllm:kv_cache_usage_perc", "vllm:num_requests_running",
        "vllm:num_requests_waiting", "vllm:prompt_tokens_total", "vllm:request_success_total",
        "vllm:time_to_first_token_seconds_bucket"]
    assert sorted(wanted - exposed) == []
