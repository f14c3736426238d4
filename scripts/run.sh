#!/usr/bin/env bash
# Set up (if needed) and run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The default experiment (configs/train.yaml); extra arguments are Hydra overrides.
.venv/bin/lens-train "$@"
