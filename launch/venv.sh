#!/usr/bin/env bash
# Sourced by launch/demo.sh and tests/run.sh: makes .venv from requirements.txt when it is missing
# or incomplete. The registry's torch build is the CUDA one; it runs on CPU as well.
ensure_venv() {
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import open_clip, deepspeed, webdataset, safetensors" 2>/dev/null; then
    return 0
  fi
  echo "setting up .venv from requirements.txt (first time: a few minutes)" >&2
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
}
