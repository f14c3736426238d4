#!/usr/bin/env bash
# Set up (if needed) and run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/capture_and_print.py "$@"
