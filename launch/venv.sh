#!/usr/bin/env bash
# Sourced by launch/demo.sh and tests/run.sh: makes .venv from requirements.txt when it is missing
# or incomplete. The registry's torch build is the CUDA one; it runs on CPU as well.
ensure_venv() {
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import open_clip, deepspeed, webdataset, safetensors" 2>/dev/null; then
    return 0
  fi
  echo "setting up .venv from requirements.txt (first time: a few minutes)" >&2
  python3 -m venv .venv
  # (grep drops the registry mirror's "Location ... is ignored" noise, nothing else)
  .venv/bin/python -m pip install --quiet --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
  .venv/bin/python -m pip install --quiet -r requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)
}
