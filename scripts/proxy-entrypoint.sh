#!/usr/bin/env bash
# Proxy container: read the rendered config from the shared tmpfs, then exec the gated LiteLLM.
set -euo pipefail
exec python3 -m vllm_mms proxy-entrypoint
