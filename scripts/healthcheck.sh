#!/usr/bin/env bash
# Engine health: the config was rendered and /v1/models lists vllm_agent.
set -euo pipefail
exec python3 -m vllm_mms healthcheck
