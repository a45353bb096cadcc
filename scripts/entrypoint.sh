#!/usr/bin/env bash
# Engine container: render the config, then exec vLLM (it becomes PID 1).
set -euo pipefail
exec python3 -m vllm_mms entrypoint
