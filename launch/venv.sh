#!/usr/bin/env bash
# Sourced by launch/demo.sh and tests/run.sh: makes .venv from requirements.txt when it is missing,
# and installs again whenever requirements.txt has changed since (a stamp of its hash lives in the
# venv), so a pulled requirement never goes missing from an old venv. The registry's torch build is
# the CUDA one; it runs on CPU as well.
ensure_venv() {
  local want stamp=.venv/.requirements.sha256
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "setting up .venv from requirements.txt (first time: a few minutes)" >&2
    python3 -m venv .venv
    # (grep drops the registry mirror's "Location ... is ignored" noise, nothing else)
    .venv/bin/python -m pip install --quiet --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2)
  else
    echo "requirements.txt changed: updating .venv" >&2
  fi
  .venv/bin/python -m pip install --quiet -r requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$stamp"
}
