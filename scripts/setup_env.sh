#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the project into it.
# Source it (`source scripts/setup_env.sh`) to get the environment activated in your shell.
# The environment lives outside the clone, in $MEDLSDM_CACHE (default ~/.cache/med-lsdm), keyed by a hash of the
# requirement files, so every clone with the same requirements shares one ~6 GB install.
set -eo pipefail
_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_py=${PYTHON:-python3}
_key=$(cat "$_repo/requirements.txt" "$_repo/requirements-dev.txt" | sha256sum | cut -c1-16)
_cache=${MEDLSDM_CACHE:-"$HOME/.cache/med-lsdm"}
MEDLSDM_VENV="$_cache/venv-$_key"
if [ ! -f "$MEDLSDM_VENV/.complete" ]; then
  echo "[setup] creating virtual environment $MEDLSDM_VENV (first time: several minutes)" >&2
  rm -rf "$MEDLSDM_VENV"
  mkdir -p "$_cache"
  "$_py" -m venv "$MEDLSDM_VENV"
  "$MEDLSDM_VENV/bin/python" -m pip install --quiet --upgrade pip
  "$MEDLSDM_VENV/bin/python" -m pip install --quiet -r "$_repo/requirements.txt" -r "$_repo/requirements-dev.txt"
  touch "$MEDLSDM_VENV/.complete"   # only a finished install is reused
else
  echo "[setup] reusing virtual environment $MEDLSDM_VENV" >&2
fi
# shellcheck disable=SC1091
source "$MEDLSDM_VENV/bin/activate"
# Editable install of this clone (the environment is shared between clones, so always re-point it here).
python -m pip install --quiet --no-deps --no-build-isolation -e "$_repo" >/dev/null
export MEDLSDM_VENV
