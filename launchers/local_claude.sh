#!/usr/bin/env bash
# Start claude against the running proxy (see LAUNCHER_GUIDE.md). --force and --model ID are ours; other arguments go to claude.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../runMe.sh" launch claude "$@"
