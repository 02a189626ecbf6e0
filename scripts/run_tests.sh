#!/usr/bin/env bash
# The test command: set up the environment, lint (ruff, the import contracts of .importlinter), run the default
# suite, then the slow end-to-end tests (real Slurm, two-process DDP, the whole pipeline). Extra arguments go to
# both pytest calls.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/setup_env.sh
echo "[tests] ruff"
ruff check .
echo "[tests] import contracts (.importlinter)"
lint-imports
echo "[tests] default suite"
# one worker process per core (pytest-xdist): the tests are single-threaded, so 2 cores run them ~1.5x faster.
# The slow suite stays in one process: its Slurm and DDP tests start clusters and process groups of their own.
python -m pytest -n auto "$@"
echo "[tests] slow suite"
set +e
python -m pytest -m slow "$@"
rc=$?
set -e
# pytest exits 5 when no test was selected: not a failure of the slow stage.
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
