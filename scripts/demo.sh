#!/usr/bin/env bash
# The main job in one command: set up the environment, then run the whole pipeline on the embedded dataset (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/setup_env.sh
python scripts/demo.py "$@"
