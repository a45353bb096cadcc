"""A usage row carries the status the client got, whatever kind of exception LiteLLM hands
the failure callback (the compose stack logged wrong keys as 500 / ProxyException)."""

from __future__ import annotations

import litellm
import pytest
from litellm.proxy._types import ProxyErrorTypes, ProxyException

from vllm_mms.proxy.hooks import status_of


@pytest.mark.parametrize("exc, status", [
    (ProxyException(message="no key", type=ProxyErrorTypes.auth_error, param="api_key",
                    code=401), 401),
    (ProxyException(message="limit", type="throttling_error", param=None, code=429), 429),
    (litellm.RateLimitError(message="slow down", llm_provider="hosted_vllm", model="m"), 429),
    (litellm.BadRequestError(message="bad", llm_provider="hosted_vllm", model="m"), 400),
    (ValueError("no status at all"), 500),
    (None, 500),
])
def test_status_of_failure(exc, status):
    assert status_of(exc) == status


def test_a_code_that_is_not_an_http_status_counts_as_500():
    class Odd(Exception):
        code = "not-a-number"
        status_code = 42

    assert status_of(Odd()) == 500
