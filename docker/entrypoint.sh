#!/usr/bin/env bash
# Container entrypoint: the subcommand dispatch lives in launch/entrypoint.py (unit-tested).
set -euo pipefail
cd "${APP_DIR:-/opt/clip}"
exec "${PYTHON:-python}" -m clip_pretrain.launch.entrypoint "$@"
