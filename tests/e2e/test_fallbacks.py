"""Fallbacks between catalog models, through a real LiteLLM proxy (our config and hooks): when
the model's engine fails, the router sends the request to the fallback model's engine."""

from __future__ import annotations

from .upstream import RecordingUpstream


def test_a_fallback_catalog_model_takes_over_when_the_engine_fails(recording_proxy_factory):
    """Fallbacks between catalog models: the recorder's engine drops every connection; the
    request is answered by smollm2-135m-cpu's engine named in litellm.routing.fallbacks."""
    with RecordingUpstream() as other:
        section = ("  routing:\n    fallbacks:\n      - model: smollm2-135m-cpu\n"
                   f"        api_base: http://127.0.0.1:{other.port}/v1\n")
        proxy = recording_proxy_factory(section)
        assert proxy.chat().status_code == 200
        assert (len(proxy.upstream.bodies), len(other.bodies)) == (1, 0)  # healthy: no fallback
        proxy.upstream.down = True
        response = proxy.chat()
        print(f"\n[e2e] engine down, fallback answered: {response.status_code}")
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "recorded"
        assert len(other.bodies) == 1 and other.bodies[0]["model"] == "vllm_agent"
        assert other.bodies[0]["messages"][-1]["content"] == "hi"
        proxy.stop()
