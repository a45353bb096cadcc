#!/usr/bin/env bash
# Thin launcher: find or create the Python environment, then hand over to the Python CLI.
# Usage: ./runMe.sh help
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${MMS_PYTHON:-python3}" -m vllm_mms.bootstrap "$@"
